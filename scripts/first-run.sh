#!/usr/bin/env bash
# The README's first command: install what is missing, build, prepare the
# SoftHSM token under softhsm/ and a dev Vault for court orders (run/vault),
# and run custodyd in the foreground on run/custodyd.sock with
# policies/example.json. Ctrl-C stops custodyd, then the dev Vault.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/deps.sh
make --no-print-directory build
scripts/softhsm-init.sh
scripts/vault-dev.sh
trap 'scripts/vault.sh stop run/vault' EXIT
bin/custodyd run --config run/custodyd.json "$@"
