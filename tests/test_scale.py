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


CHECK_URI_MEMO = """
import atexit, json, sys
def check():
    import smart_open
    from snakemake.common import parse_uri as snakemake_parse
    memo = smart_open.parse_uri
    raw = memo.__wrapped__
    uris = ["/data/scan.nii.gz", "rel/scripts/metal.py", "file:///tmp/x.py", "~/x.py",
            "https://example.org/a.zip", "http://host/b.py", "/data/scan.nii.gz"]
    out = {
        "memoised": bool(getattr(memo, "_ctseg_memoised", False)),
        "same": all(memo(u) == raw(u) and type(memo(u))._fields == type(raw(u))._fields
                    for u in uris),
        "via_snakemake": all(tuple(snakemake_parse(u)) == tuple(raw(u)) for u in uris),
        "hits": memo.cache_info().hits,
    }
    open("uri.json", "w").write(json.dumps(out))
atexit.register(check)
from snakemake.cli import main
sys.argv = ["snakemake", "-s", sys.argv[1], "-n", "--cores", "1"]
main()
"""


def test_uri_parsing_is_memoised_with_smart_opens_own_results(tmp_path):
    """rules/common.smk memoises smart_open.parse_uri (a new namedtuple class per call, three calls
    per job): after a dry run it is memoised, was hit, and returns what smart_open returns."""
    cfg = yaml.safe_load(TINY.read_text())
    (tmp_path / "cases.tsv").write_text((REPO / cfg["cases"]).read_text())
    cfg["cases"] = "cases.tsv"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_URI_MEMO, str(REPO / "Snakefile")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    got = json.loads((tmp_path / "uri.json").read_text())
    assert got["memoised"] and got["same"] and got["via_snakemake"], got
    assert got["hits"] > 10, got  # every planned job's script check went through it
