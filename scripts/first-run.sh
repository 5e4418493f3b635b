#!/usr/bin/env bash
# The README's first command: install what is missing, build, prepare the
# SoftHSM token under softhsm/, and run custodyd in the foreground on
# run/custodyd.sock with policies/example.json. Ctrl-C stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/deps.sh
make --no-print-directory build
scripts/softhsm-init.sh
export SOFTHSM2_CONF="$root/softhsm/softhsm2.conf"
exec bin/custodyd run "$@"
