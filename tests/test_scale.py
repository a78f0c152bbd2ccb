"""DAG construction touches each DICOM folder once, whatever the cohort size.

Counted with Python's audit hooks (every os.scandir / os.listdir raises an event), around an
in-process `snakemake -n` on a sheet of DICOM-folder cases. benchmarks/bench_dag.py measures the
time per case from 100 to 10,000 cases; this test guards the mechanism on 30.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
N = 30

COUNT_WALKS = """
import atexit, collections, json, os, sys
counts = collections.Counter()
def hook(event, args):
    if event in ("os.scandir", "os.listdir") and args and isinstance(args[0], (str, bytes)):
        counts[os.path.abspath(os.fsdecode(args[0]))] += 1
sys.addaudithook(hook)
atexit.register(lambda: open("walks.json", "w").write(json.dumps(counts)))
from snakemake.cli import main
sys.argv = ["snakemake", "-s", sys.argv[1], "-n", "--cores", "1"]
main()
"""


def test_each_dicom_folder_is_walked_once_per_dag_build(tmp_path):
    rows = ["case\tsource\tlocation\tsplit"]
    splits = ["train", "train", "val", "predict"]  # no labels: unscored
    for i in range(N):
        folder = tmp_path / "dicom" / f"c{i:03d}" / "series"
        folder.mkdir(parents=True)
        for k in range(3):
            (folder / f"s{k}.dcm").write_bytes(b"x")
        rows.append(f"c{i:03d}\tdicom\tdicom/c{i:03d}\t{splits[i % 4]}")
    (tmp_path / "cases.tsv").write_text("\n".join(rows) + "\n")
    cfg = yaml.safe_load(TINY.read_text())
    cfg["cases"] = "cases.tsv"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-c", COUNT_WALKS, str(REPO / "Snakefile")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "fetch" in proc.stdout  # the dry run planned the cases
    walks = json.loads((tmp_path / "walks.json").read_text())
    for i in range(N):
        case = tmp_path / "dicom" / f"c{i:03d}"
        for folder in (case, case / "series"):
            assert walks.get(str(folder), 0) == 1, (str(folder), walks.get(str(folder)))
