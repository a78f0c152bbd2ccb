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
# configless slurmd links /run/slurm/conf to its cache under STATE_DIR: remove the link if it is ours.
link=/run/slurm/conf
if [ -L "$link" ]; then
    case "$(readlink "$link")" in
        "$(cd "$state" && pwd)"/*) rm -f "$link" ;;
    esac
fi
exit 0
