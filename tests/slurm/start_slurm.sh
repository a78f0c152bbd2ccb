#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster on 127.0.0.1, entirely under STATE_DIR:
#   munged (own key and socket), slurmctld, slurmd (node "ctsegnode", partition "debug").
# Nothing under /etc is changed; clients find the cluster through the environment printed by
#   source STATE_DIR/env.sh      (SLURM_CONF=STATE_DIR/etc/slurm.conf)
# Daemon process ids are written to STATE_DIR/pids/*.pid; stop_slurm.sh STATE_DIR ends them.
#
# Usage: start_slurm.sh STATE_DIR [SLURMCTLD_PORT] [SLURMD_PORT]
#
# Choices, and why:
# - The node's CPUs, sockets, cores and RealMemory come from `slurmd -C` on this machine, so the
#   node is never drained for claiming more than it has.
# - No accounting database: AccountingStorageType=none keeps the setup to a few seconds. Job
#   records come from the job-completion log (JobCompType=jobcomp/filetxt, one line per finished
#   job) and from slurmctld's memory (MinJobAge=3600, so `squeue -t all` still lists finished
#   jobs). Snakemake's SLURM executor must then be told --slurm-status-command squeue (it would
#   poll sacct forever otherwise); a MinJobAge of at least 3x its first status-check delay keeps it
#   from falling back to sacct.
# - One fake GPU (GresTypes=gpu, Gres=gpu:1, gres.conf File=/dev/null) so that a rule asking for
#   `gpu: 1` (sbatch --gpus=1) or `gres: gpu:1` is scheduled as on a real GPU node.
# - /etc/slurm is neither read nor written. Commands find the configuration through SLURM_CONF,
#   except the `srun` that snakemake's job step (snakemake-executor-plugin-slurm-jobstep) runs
#   inside each job: it drops every SLURM_* variable but the job ids, SLURM_CONF too. That srun
#   falls back to /etc/slurm/slurm.conf and then to /run/slurm/conf/slurm.conf (where a
#   configless slurmd keeps its copy), so /run/slurm/conf is linked to STATE_DIR/etc. A
#   configless slurmd itself cannot be used here: it would need the default munge socket.
# - proctrack/linuxproc + task/none: no cgroups needed inside containers.
set -euo pipefail

state=${1:?usage: start_slurm.sh STATE_DIR [SLURMCTLD_PORT] [SLURMD_PORT]}
ctld_port=${2:-6817}
d_port=${3:-6818}
mkdir -p "$state"
state=$(cd "$state" && pwd)
mkdir -p "$state/etc" "$state/pids" "$state/munge" "$state/ctld" "$state/spool" "$state/log"
chmod 700 "$state/munge"

host=$(hostname -s)

if [ -e /etc/slurm/slurm.conf ]; then
    echo "/etc/slurm/slurm.conf exists: jobs' inner srun would talk to that cluster; not starting" >&2
    exit 1
fi
link=/run/slurm/conf
if [ -L "$link" ]; then
    target=$(readlink "$link")
    if [ -S "$(dirname "$target")/munge/munge.socket" ] && [ "$target" != "$state/etc" ]; then
        echo "$link points to a running test cluster ($target); not starting a second one" >&2
        exit 1
    fi
    rm -f "$link"    # left behind by a test cluster that is gone
elif [ -e "$link" ]; then
    echo "$link exists (a configless slurmd runs here?); not starting" >&2
    exit 1
fi

# --- munge: own key, socket, pid, log and seed file -------------------------------------------
key="$state/munge/munge.key"
if [ ! -s "$key" ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$key" --force
    else
        dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    fi
fi
chmod 400 "$key"
sock="$state/munge/munge.socket"
munged --force \
    --key-file="$key" --socket="$sock" \
    --pid-file="$state/pids/munged.pid" --log-file="$state/log/munged.log" \
    --seed-file="$state/munge/munged.seed"
for _ in $(seq 50); do
    [ -S "$sock" ] && break
    sleep 0.1
done
munge --socket="$sock" -n | unmunge --socket="$sock" >/dev/null

# --- slurm.conf / gres.conf ---------------------------------------------------------------------
# `slurmd -C` prints "NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=..
# ThreadsPerCore=.. RealMemory=..": keep everything but the name.
hw=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //')
cat > "$state/etc/slurm.conf" <<CONF
ClusterName=ctsegtest
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${sock}
StateSaveLocation=${state}/ctld
SlurmdSpoolDir=${state}/spool
SlurmctldPidFile=${state}/pids/slurmctld.pid
SlurmdPidFile=${state}/pids/slurmd.pid
SlurmctldLogFile=${state}/log/slurmctld.log
SlurmdLogFile=${state}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${state}/log/jobcomp.log
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=ctsegnode NodeHostname=${host} NodeAddr=127.0.0.1 ${hw} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ctsegnode Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$state/etc/gres.conf" <<CONF
AutoDetect=off
NodeName=ctsegnode Name=gpu File=/dev/null
CONF
cat > "$state/env.sh" <<CONF
export SLURM_CONF=${state}/etc/slurm.conf
CONF
export SLURM_CONF="$state/etc/slurm.conf"

mkdir -p /run/slurm
ln -sfn "$state/etc" "$link"

# --- daemons ---------------------------------------------------------------------------------
slurmctld -c -f "$SLURM_CONF"     # -c: cold start, ignore any saved state
for _ in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.1
done
scontrol ping | grep -q UP || { echo "slurmctld did not come up" >&2; tail -n 30 "$state/log/slurmctld.log" >&2; exit 1; }

slurmd -N ctsegnode -f "$SLURM_CONF"
for _ in $(seq 200); do
    st=$(sinfo -h -n ctsegnode -o %T 2>/dev/null || true)
    [ "$st" = idle ] && break
    sleep 0.1
done
if [ "$(sinfo -h -n ctsegnode -o %T)" != idle ]; then
    echo "node ctsegnode is not idle: $(sinfo -h -N -o '%N %T %E')" >&2
    tail -n 30 "$state/log/slurmd.log" >&2
    exit 1
fi
echo "SLURM up: $(sinfo -h -N -o '%N %T cpus=%c mem=%m gres=%G') (SLURM_CONF=$SLURM_CONF)"
