#!/usr/bin/env bash
# What the Slurm test needs, where it is missing: Slurm (slurmctld, slurmd, sbatch, srun) and munge, from
# Debian (slurm-wlm, munge). Starts no daemon and writes no slurm.conf: tests/e2e/slurm_cluster.py writes
# its own configuration under a temporary folder, starts munged, slurmctld and two slurmd, and stops them.
# Skipped (with a note) where apt or root is not available; the test then skips (fails under CI=true).
set -euo pipefail
# shellcheck source=scripts/apt-install.sh
source "$(dirname "$0")/apt-install.sh"
missing=()
for tool in slurmctld slurmd sbatch srun; do
  command -v "$tool" >/dev/null 2>&1 || { missing+=(slurm-wlm); break; }
done
command -v munged >/dev/null 2>&1 || missing+=(munge)
apt_install "${missing[@]}"
if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
  echo "slurm $(slurmctld -V 2>/dev/null | awk '{print $2}'), $(munged -V 2>/dev/null | head -1)"
else
  echo "note: no Slurm here; the Slurm test skips (fails under CI=true)"
fi
