#!/usr/bin/env bash
# Stop the daemons start_slurm.sh started, by the process ids in STATE_DIR/pids (never by name,
# so another cluster on the same machine is left alone): slurmd, slurmctld, then munged.
set -uo pipefail
state=${1:?usage: stop_slurm.sh STATE_DIR}
for name in slurmd slurmctld munged; do
    pidfile="$state/pids/$name.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
done
exit 0
