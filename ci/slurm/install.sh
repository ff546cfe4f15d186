#!/usr/bin/env bash
# Install a single-node SLURM (controller, compute daemon, client tools) and MUNGE from Debian's packages.
# Usage: bash ci/slurm/install.sh [--with-accounting]   (root; --with-accounting adds slurmdbd + MariaDB for sacct)
# Idempotent: packages already installed are not fetched again, so a second call costs nothing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(slurmctld slurmd slurm-client munge)
[[ "${1:-}" == "--with-accounting" ]] && packages+=(slurmdbd mariadb-server)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if (( ${#missing[@]} == 0 )); then
  echo "slurm: packages already installed (${packages[*]})"
  exit 0
fi
[[ $EUID -eq 0 ]] || { echo "ci/slurm/install.sh: installing ${missing[*]} needs root" >&2; exit 1; }
apt-get update -qq
# without systemd, invoke-rc.d prints "policy-rc.d denied execution of start": the packages' own services stay
# off, which is what we want (ci/slurm/start.sh runs the daemons itself)
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "slurm: installed ${missing[*]}"
