#!/usr/bin/env bash
# Install Debian's SLURM (22.05 on Debian 12) and MUNGE: the controller, the node daemon, the
# client commands (sbatch, squeue, sacct, scontrol) and the authentication daemon.
# Needs root and apt. Installing does not start anything: there is no systemd in CI containers,
# start_slurm.sh starts the daemons by hand.
set -euo pipefail

need=()
for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
done
if [ "${#need[@]}" -eq 0 ]; then
    echo "slurm and munge already installed: $(dpkg-query -W -f '${Package} ${Version}' slurmctld 2>/dev/null || echo "version unknown")"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm.sh: missing ${need[*]} and not root, cannot apt-get install" >&2
    exit 77
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be absent on a fresh image; refresh them only when the install fails.
if ! apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge; then
    apt-get update
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
fi
echo "installed: $(dpkg-query -W -f '${Package} ${Version}' slurmctld 2>/dev/null || echo "version unknown")"
