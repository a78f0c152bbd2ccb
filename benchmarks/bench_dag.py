"""DAG construction cost against cohort size: `snakemake -n --quiet` on growing case sheets.

`snakemake -n --quiet` is the scale check the README recommends (section "Input functions touch
the disk once"): Snakemake builds the whole DAG (every input function, params function and
wildcard match, every file's existence and mtime) and stops there, without listing the jobs one
by one. Its peer, measured on the same sheet in the same run, is the plain `snakemake -n`, which
then also schedules every job, evaluates its resources and prints it; the ratio column is the
check's CPU time over the peer's, so it holds on a machine shared with other work. The
per-case column against the smallest sheet shows growth that is not linear in the cases.

`--source dicom` (the default) gives every case its own folder of small DICOM-named files, so
that the input functions that walk folders are measured too; `--source phantom` touches no
files. Goal (issue 16): 10,000 DICOM-folder cases under 2 minutes, per-case cost flat from 100
to 10,000. Figures: README, "Input functions touch the disk once".

    .venv/bin/python benchmarks/bench_dag.py [--cases 100 1000 10000] [--source dicom|phantom]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
CHECK = ["-n", "--quiet"]  # the README's scale check: the DAG only, no job listing
PEER = ["-n"]  # the full dry run: the DAG, then every job scheduled and printed


def write_dicom_folders(work: Path, n_cases: int, files_per_case: int = 3) -> None:
    """One folder per case with a few files (the DAG reads names, never the bytes)."""
    for i in range(n_cases):
        folder = work / "dicom" / f"c{i:05d}"
        folder.mkdir(parents=True)
        for k in range(files_per_case):
            (folder / f"s{k:04d}.dcm").write_bytes(b"x")


def write_sheet(n_cases: int, root: Path, source: str = "dicom") -> Path:
    """A working folder with an ``n_cases`` sheet and the default config pointing at it."""
    work = root / f"n{n_cases}"
    work.mkdir()
    splits = ["train"] * 6 + ["val"] * 2 + ["predict"] * 2  # no labels: unscored
    rows = ["case\tsource\tlocation\tsplit"]
    if source == "dicom":
        write_dicom_folders(work, n_cases)
        loc = [f"dicom/c{i:05d}" for i in range(n_cases)]
    else:
        loc = [str(i) for i in range(n_cases)]
    rows += [f"c{i:05d}\t{source}\t{loc[i]}\t{splits[i % len(splits)]}" for i in range(n_cases)]
    (work / "cases.tsv").write_text("\n".join(rows) + "\n")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["cases"] = "cases.tsv"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dry_run(work: Path, flags: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s, output) of one `snakemake <flags>` in ``work``."""
    start, cpu = time.perf_counter(), children_cpu_s()
    proc = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), *flags],
        cwd=work,
        capture_output=True,
        text=True,
    )
    elapsed, cpu = time.perf_counter() - start, children_cpu_s() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(flags)}:\n{proc.stderr[-3000:]}")
    return elapsed, cpu, proc.stdout + proc.stderr


def planned_jobs(out: str) -> int:
    """The 'total' row of the job-stats table a plain dry run prints."""
    return next((int(line.split()[1]) for line in out.splitlines() if line.startswith("total")), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--source", choices=["dicom", "phantom"], default="dicom")
    args = parser.parse_args()
    check, peer = " ".join(CHECK), " ".join(PEER)
    print(f"check: snakemake {check}; peer: snakemake {peer} (same sheet, same run)")
    # CPU time too: on a shared machine the wall time mostly measures the neighbours
    print(f"{'cases':>6} {'jobs':>7} {'wall (s)':>9} {'CPU (s)':>8} {'ms/case':>8} "
          f"{'ms/job':>7} {'peer wall':>10} {'peer CPU':>9} {'CPU/peer':>9} "
          f"{'vs smallest':>12}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for n in args.cases:
            work = write_sheet(n, Path(tmp), args.source)
            elapsed, cpu, _ = dry_run(work, CHECK)
            peer_elapsed, peer_cpu, out = dry_run(work, PEER)
            jobs = planned_jobs(out)
            per_case = 1000 * cpu / n
            base = base or per_case
            print(f"{n:>6} {jobs:>7} {elapsed:>9.1f} {cpu:>8.1f} {per_case:>8.1f} "
                  f"{1000 * cpu / jobs:>7.2f} {peer_elapsed:>10.1f} {peer_cpu:>9.1f} "
                  f"{cpu / peer_cpu:>9.2f} {per_case / base:>11.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
