#!/usr/bin/env bash
# The README's first command: install what is missing, build, prepare the
# SoftHSM token under softhsm/, and run custodyd in the foreground on
# run/custodyd.sock with policies/example.json, at once. The dev Vault for
# court orders (run/vault) is built (once per machine, ~15 min) and started in
# the background: until it is up, audit decrypts answer vault_unavailable with
# how far it is, and the daemon uses it as soon as it is there, no restart.
# Ctrl-C stops custodyd, then the Vault setup and the dev Vault.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/deps.sh softhsm
make --no-print-directory build
scripts/softhsm-init.sh
scripts/vault-dev.sh config
# The Vault setup runs in its own process group, so that Ctrl-C here stops
# the whole build too.
setsid scripts/vault-dev.sh up > run/vault/setup.log 2>&1 < /dev/null &
setup=$!
trap 'kill -TERM -- -'"$setup"' 2>/dev/null || true; scripts/vault.sh stop run/vault' EXIT
if ! scripts/vault.sh path >/dev/null 2>&1; then
  echo "building the dev Vault in the background (about 15 min on a fresh machine; run/vault/setup.log);" >&2
  echo "custodyd serves now: audit decrypts answer vault_unavailable until Vault is up" >&2
fi
bin/custodyd run --config run/custodyd.json "$@"
