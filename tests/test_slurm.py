"""The tiny workflow through a real, single-node SLURM cluster, compared with a local run.

The test installs Debian's SLURM and MUNGE when they are missing (root and apt needed, as in
CI), starts munged, slurmctld and slurmd on 127.0.0.1 under a temporary folder
(tests/slurm/start_slurm.sh), runs `snakemake --executor slurm --profile profiles/slurm` on
tests/configs/tiny.yaml, and stops every daemon it started by its process id.

What it asserts:
- the node SLURM sees has this machine's CPUs and memory;
- every job snakemake ran outside the main process was a SLURM job, one per planned job and
  rule, and SLURM's own records (slurmctld via squeue, the job-completion log) hold exactly
  those jobs, all COMPLETED, the training jobs holding one GPU;
- deterministic outputs (CT and label volumes, centroids, DICOM statistics, metal masks) equal
  those of a local run of the same config.
Those cluster tests are marked slow (about 6 minutes on 2 busy cores). Two fast ones dry-run the
tiny config through profiles/slurm and profiles/local: the profiles parse, the executor
plugin's settings are known, and the rules' resources reach the jobs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "slurm"
TINY = REPO / "tests" / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
RUN_TIMEOUT_S = 1500


# ------------------------------------------------------------------ cluster
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _have_slurm() -> bool:
    return all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """A running single-node cluster; yields the environment that points clients at it."""
    if not _have_slurm():
        if os.geteuid() != 0:
            pytest.skip("SLURM is not installed and installing it needs root")
        if not shutil.which("apt-get"):
            pytest.skip("SLURM is not installed and apt-get is not available to install it")
        proc = subprocess.run(
            ["bash", str(SCRIPTS / "install_slurm.sh")],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if proc.returncode == 77:
            pytest.skip(proc.stderr.strip())
        assert proc.returncode == 0, (
            f"installing SLURM failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root (it runs jobs as their submitting user)")

    state = tmp_path_factory.mktemp("slurm")
    ctld_port, d_port = _free_ports(2)
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "start_slurm.sh"), str(state), str(ctld_port), str(d_port)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    pids = {
        p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid") if p.read_text().strip()
    }
    try:
        assert proc.returncode == 0, f"start_slurm.sh failed:\n{proc.stdout}\n{proc.stderr}"
        assert set(pids) == {"munged", "slurmctld", "slurmd"}, pids
        env = dict(os.environ, SLURM_CONF=str(state / "etc" / "slurm.conf"))
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.pop("SLURM_JOB_ID", None)
        env["CTSEG_SLURM_STATE"] = str(state)
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh"), str(state)], timeout=60)
        alive = {name: pid for name, pid in pids.items() if _pid_alive(pid)}
        assert not alive, f"daemons still running after stop_slurm.sh: {alive}"


def _run(cmd: list[str], env: dict[str, str], **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr}"
    return proc.stdout


def _meminfo_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


@pytest.mark.slow
def test_node_matches_this_machine(slurm):
    out = _run(["scontrol", "show", "node", "ctsegnode"], slurm)
    fields = dict(re.findall(r"(\w+)=(\S+)", out))
    assert (
        int(fields["CPUTot"]) == len(os.sched_getaffinity(0))
        or int(fields["CPUTot"]) == os.cpu_count()
    )
    real = int(fields["RealMemory"])
    assert abs(real - _meminfo_mb()) <= 0.02 * _meminfo_mb() + 16, (real, _meminfo_mb())
    assert fields["State"].lower().startswith("idle"), fields["State"]
    assert "gpu:1" in fields["Gres"], fields["Gres"]


# ------------------------------------------------------------------ the profiles (fast)
def _job_resources(dry_run_output: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [resources of each planned job]} from a dry run's job listing."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        m = re.match(r"^\s+resources: (.*)$", line)
        if m and rule:
            jobs.setdefault(rule, []).append(
                dict(kv.split("=", 1) for kv in m.group(1).split(", "))
            )
            rule = None
    return jobs


@pytest.mark.parametrize("profile", ["slurm", "local"])
def test_profile_loads_and_fills_default_resources(profile, tmp_path):
    """The profile parses (plugin settings included) and rules keep their own resources."""
    work = _workdir(tmp_path)
    proc = _snakemake(work, "-n", "--profile", str(REPO / "profiles" / profile), "--cores", "2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = _job_resources(out)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    train = cfg["resources"]["train"]
    assert jobs["train"], out[-3000:]
    for res in jobs["train"]:
        assert res["gpu"] == str(train["gpu"]) and res["mem_mb"] == str(train["mem_mb"])
        assert res["runtime"] == str(train["runtime"])
        if profile == "slurm":  # cpus_per_task: threads in the profile -> --cpus-per-task
            assert res["cpus_per_task"] == str(train["threads"]), res
    for res in jobs["fetch"]:
        assert res["mem_mb"] == str(cfg["resources"]["default"]["mem_mb"]), res
    if profile == "slurm":
        profile_cfg = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
        assert all("cpus_per_task" in r for rs in jobs.values() for r in rs)
        assert profile_cfg["executor"] == "slurm" and profile_cfg["slurm-requeue"] is True
        assert profile_cfg["retries"] >= 1 and profile_cfg["latency-wait"] >= 30


# ------------------------------------------------------------------ the runs
def _workdir(tmp: Path) -> Path:
    """tiny.yaml with its case sheet copied next to it (relative paths resolve in the workdir)."""
    cfg = yaml.safe_load(TINY.read_text())
    (tmp / "cases.tsv").write_text((REPO / cfg["cases"]).read_text())
    cfg["cases"] = "cases.tsv"
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp


def _snakemake(work: Path, *args: str, env: dict[str, str] | None = None):
    cmd = [
        "timeout", "-k", "20", str(RUN_TIMEOUT_S),
        SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(work),
        # absolute: a relative --configfile is read from the caller's folder, not --directory
        "--configfile", str(work / "config.yaml"), *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=work, timeout=RUN_TIMEOUT_S + 60
    )


def planned_jobs(out: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats")) + 3
    counts: dict[str, int] = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    work = _workdir(tmp_path_factory.mktemp("slurm_run"))
    dry = _snakemake(work, "-n", "--cores", "1", env=slurm)
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = planned_jobs(dry.stdout + dry.stderr)
    experiments = yaml.safe_load((work / "config.yaml").read_text())["experiments"]
    assert planned["train"] == len(experiments), "the run would not use the tiny config"
    proc = _snakemake(
        work,
        "--executor", "slurm",
        "--profile", str(REPO / "profiles" / "slurm"),
        # no slurmdbd here: poll squeue (MinJobAge=3600 keeps finished jobs listed) and soon
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        env=slurm,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return {"work": work, "log": log, "planned": planned, "env": slurm}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, slurm_run):
    """The same config run locally, only as far as the outputs compared below."""
    work = _workdir(tmp_path_factory.mktemp("local_run"))
    cases = [
        line.split("\t")[0]
        for line in (work / "cases.tsv").read_text().splitlines()[1:]
        if line.strip()
    ]
    targets = ["results/stats/summary.tsv"] + [f"results/metal/{c}.nii.gz" for c in cases]
    proc = _snakemake(work, "--profile", str(REPO / "profiles" / "local"), "--cores", "2", *targets)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return {"work": work, "cases": cases}


def submissions(log: str) -> dict[int, int]:
    """{snakemake job id: SLURM job id} from the executor's 'has been submitted' lines."""
    pairs = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    return {int(j): int(s) for j, s in pairs}


@pytest.mark.slow
def test_every_job_went_through_slurm(slurm_run):
    log, planned, env = slurm_run["log"], slurm_run["planned"], slurm_run["env"]
    subs = submissions(log)
    assert subs, "no SLURM submissions in the log"
    assert len(set(subs.values())) == len(subs), "a SLURM job id was reported twice"

    run_uuid = re.search(r"SLURM run ID: (\S+)", log).group(1)
    # slurmctld's records of this run: id, state, comment rule_<rule>[_wildcards_<wc>]
    out = _run(["squeue", "-h", "-t", "all", "--name", run_uuid, "-o", "%i|%T|%k"], env)
    records = [line.split("|") for line in out.splitlines() if line.strip()]
    by_id = {int(i): (state, comment) for i, state, comment in records}
    assert set(by_id) == set(subs.values()), (sorted(by_id), sorted(subs.values()))
    assert {s for s, _ in by_id.values()} == {"COMPLETED"}, by_id

    # one SLURM job per planned job of every rule that snakemake did not run in-process
    local_rules = set(re.findall(r"^localrule (\w+):", log, flags=re.M))
    slurm_rules: dict[str, int] = {}
    for _, comment in by_id.values():
        rule = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", comment).group(1)
        slurm_rules[rule] = slurm_rules.get(rule, 0) + 1
    expected = {r: n for r, n in planned.items() if r not in local_rules}
    assert slurm_rules == expected, (slurm_rules, expected, local_rules)
    snakefile = (REPO / "Snakefile").read_text()
    declared = set(
        re.findall(r"^    (\w+),$", snakefile.split("localrules:")[1].split("\n\n")[0], flags=re.M)
    )
    assert local_rules <= declared | {"all"}, (
        f"rules run on the submit host instead of SLURM: {local_rules - declared}"
    )
    on_host = sum(planned.get(r, 0) for r in local_rules)
    assert sum(expected.values()) == sum(planned.values()) - on_host
    assert len(re.findall(r"^rule \w+:", log, flags=re.M)) == len(subs)

    # the job-completion log, written by slurmctld as each job ended
    jobcomp = Path(env["CTSEG_SLURM_STATE"]) / "log" / "jobcomp.log"
    comp = {}
    for line in jobcomp.read_text().splitlines():
        f = dict(re.findall(r"(\w+)=(\S*)", line))
        if f.get("Name") == run_uuid:
            comp[int(f["JobId"])] = f
    assert set(comp) == set(subs.values())
    assert {f["JobState"] for f in comp.values()} == {"COMPLETED"}


@pytest.mark.slow
def test_slurm_jobs_got_the_rules_resources(slurm_run):
    env, work = slurm_run["env"], slurm_run["work"]
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    train_res = cfg["resources"]["train"]
    run_uuid = re.search(r"SLURM run ID: (\S+)", slurm_run["log"]).group(1)
    out = _run(["squeue", "-h", "-t", "all", "--name", run_uuid, "-o", "%i|%k"], env)
    train_ids = [
        int(i) for i, c in (x.split("|") for x in out.split()) if c.startswith("rule_train_")
    ]
    # rule_train_ and rule_train_stage_: a localiser's stage jobs get the train resources too
    planned = slurm_run["planned"]
    assert len(train_ids) == planned["train"] + planned.get("train_stage", 0)
    for jid in train_ids:
        info = dict(re.findall(r"(\w+)=(\S+)", _run(["scontrol", "show", "job", str(jid)], env)))
        assert "gpu:1" in info.get("TresPerJob", "") + info.get("TresPerNode", ""), info
        assert info["NumCPUs"] == str(train_res["threads"]), info["NumCPUs"]
        assert info["MinMemoryNode"] == f"{train_res['mem_mb']}M", info["MinMemoryNode"]
        assert info["TimeLimit"] == f"00:{train_res['runtime']:02d}:00", info["TimeLimit"]


def _read(path: Path) -> sitk.Image:
    assert path.is_file(), path
    return sitk.ReadImage(str(path))


@pytest.mark.slow
def test_outputs_equal_a_local_run(slurm_run, local_run):
    a, b = slurm_run["work"] / "results", local_run["work"] / "results"
    compared = 0
    for case in local_run["cases"]:
        for rel in (
            f"volumes/{case}/ct.nii.gz",
            f"volumes/{case}/labels.nii.gz",
            f"metal/{case}.nii.gz",
        ):
            ia, ib = _read(a / rel), _read(b / rel)
            assert ia.GetSize() == ib.GetSize(), rel
            assert ia.GetSpacing() == ib.GetSpacing() and ia.GetOrigin() == ib.GetOrigin(), rel
            assert ia.GetDirection() == ib.GetDirection(), rel
            va, vb = sitk.GetArrayViewFromImage(ia), sitk.GetArrayViewFromImage(ib)
            assert va.dtype == vb.dtype and np.array_equal(va, vb), rel
            compared += 1
        for rel in (f"volumes/{case}/centroids.json", f"stats/{case}.json"):
            assert json.loads((a / rel).read_text()) == json.loads((b / rel).read_text()), rel
            compared += 1
    assert (a / "stats/summary.tsv").read_bytes() == (b / "stats/summary.tsv").read_bytes()
    assert compared == 5 * len(local_run["cases"]) > 0
    # and the phantoms are not blank: the equality above compares real content
    ct = sitk.GetArrayViewFromImage(_read(a / f"volumes/{local_run['cases'][0]}/ct.nii.gz"))
    assert ct.min() < -500 and ct.max() > 500
