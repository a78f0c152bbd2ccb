"""DAG construction cost against cohort size: `snakemake -n` on growing case sheets.

Prints the wall time of each dry run and the per-case cost, so growth that is not linear in the
number of cases shows up as a rising per-case figure. `--source dicom` (the default) gives every
case its own folder of small DICOM-named files, so that the input functions that walk folders
are measured too; `--source phantom` touches no files. Goal (issue 16): 10,000 DICOM-folder
cases under 2 minutes, per-case cost flat from 100 to 10,000. Measured (2 shared cores, CPU):
100 cases 5.4 s, 1,000 cases 33.8 s (9,431 jobs), 10,000 cases 436 s (94,031 jobs): flat within
1.3x per case, but over the 2-minute goal (Snakemake's own ~4 ms per job).

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


def write_dicom_folders(work: Path, n_cases: int, files_per_case: int = 3) -> None:
    """One folder per case with a few files (the DAG reads names, never the bytes)."""
    for i in range(n_cases):
        folder = work / "dicom" / f"c{i:05d}"
        folder.mkdir(parents=True)
        for k in range(files_per_case):
            (folder / f"s{k:04d}.dcm").write_bytes(b"x")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dry_run(n_cases: int, root: Path, source: str = "dicom") -> tuple[float, float, int]:
    """(wall s, CPU s, planned jobs) of one `snakemake -n` on an ``n_cases`` sheet."""
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
    start, cpu = time.perf_counter(), children_cpu_s()
    proc = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-n", "--quiet", "all", "--cores", "2"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    elapsed, cpu = time.perf_counter() - start, children_cpu_s() - cpu
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    out = proc.stdout + proc.stderr
    total = next(
        (int(line.split()[1]) for line in out.splitlines() if line.startswith("total")), -1
    )
    return elapsed, cpu, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--source", choices=["dicom", "phantom"], default="dicom")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        # CPU time too: on a shared machine the wall time mostly measures the neighbours
        print(f"{'cases':>6} {'jobs':>7} {'wall (s)':>9} {'CPU (s)':>8} {'CPU ms/case':>12} "
              f"{'ms/job':>7} {'vs smallest':>12}")  # fmt: skip
        for n in args.cases:
            elapsed, cpu, jobs = dry_run(n, Path(tmp), args.source)
            per_case = 1000 * cpu / n
            base = base or per_case
            print(f"{n:>6} {jobs:>7} {elapsed:>9.1f} {cpu:>8.1f} {per_case:>12.1f} "
                  f"{1000 * cpu / jobs:>7.2f} {per_case / base:>11.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
