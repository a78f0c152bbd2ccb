"""DAG construction cost against cohort size: `snakemake -n` on 10, 100 and 1,000 phantom cases.

Prints the wall time of each dry run and the per-case cost, so growth that is not linear in the
number of cases shows up as a rising per-case figure. Goal (issue 6): 1,000 cases under 30 s.

    .venv/bin/python benchmarks/bench_dag.py [--cases 10 100 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def dry_run(n_cases: int, root: Path) -> tuple[float, int]:
    work = root / f"n{n_cases}"
    work.mkdir()
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    rows = ["case\tsource\tlocation\tsplit"]
    rows += [f"c{i:05d}\tphantom\t{i}\t{splits[i % len(splits)]}" for i in range(n_cases)]
    (work / "cases.tsv").write_text("\n".join(rows) + "\n")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["cases"] = "cases.tsv"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-n", "--quiet", "all", "--cores", "2"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    out = proc.stdout + proc.stderr
    total = next(
        (int(line.split()[1]) for line in out.splitlines() if line.startswith("total")), -1
    )
    return elapsed, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        print(f"{'cases':>6} {'jobs':>7} {'dry run (s)':>12} {'ms/case':>8} {'vs smallest':>12}")
        for n in args.cases:
            elapsed, jobs = dry_run(n, Path(tmp))
            per_case = 1000 * elapsed / n
            base = base or per_case
            print(f"{n:>6} {jobs:>7} {elapsed:>12.2f} {per_case:>8.1f} {per_case / base:>11.2f}x")


if __name__ == "__main__":
    main()
