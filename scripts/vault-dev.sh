#!/usr/bin/env bash
# The first run's court-order setup against a dev Vault in run/vault, in two
# steps so that custodyd serves at once while Vault is still being built:
#
#   scripts/vault-dev.sh config   (needs no Vault; idempotent)
#     - three order-signer key pairs in run/orders/ (private keys 0400);
#     - the dev Vault's loopback port, chosen now (run/vault/port);
#     - run/custodyd.json: the default configuration plus a vault section
#       pinning the three signers' public keys with a quorum of 2, the token
#       file the daemon will find once Vault is up, and run/vault/status,
#       whose first line the daemon adds to vault_unavailable answers; and
#       ceremony.auto_genesis (the demo creates its escrow and signing keys
#       at first start, without officers).
#   scripts/vault-dev.sh up       (builds Vault once if needed, then starts it)
#     - while the Vault binary is built (about 15 minutes on a fresh machine,
#       cached afterwards), run/vault/status says how far it is;
#     - starts the dev server on run/vault/port unless it is already running;
#     - writes the least-privilege policies of policies/vault/ (the setup
#       shared with the fleet: scripts/vault-setup.sh);
#     - a periodic token for custodyd (policy custodyd) in run/vault/custodyd.token
#       and one for the legal intake role (policy legal-intake) in
#       run/vault/intake.token (0400); the daemon picks its token up by itself.
#
# Tokens and keys are never printed. A dev Vault keeps everything in memory:
# orders last as long as this server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/vault-setup.sh
. scripts/vault-setup.sh
dir=run/vault
mkdir -p "$dir" run/orders
chmod 0700 "$dir" run/orders

running() { [ -s "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

status() { printf '%s\n' "$*" > "$dir/status.tmp" && mv -f "$dir/status.tmp" "$dir/status"; }

config() {
  local signers_json
  signers_json=$(custody_order_signers bin/custodyctl run/orders)
  if ! running; then
    # A new dev server gets new tokens: the old ones must not be tried.
    rm -f "$dir/custodyd.token" "$dir/intake.token" "$dir/addr"
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' > "$dir/port" 2>/dev/null \
      || shuf -i 20000-60000 -n 1 > "$dir/port"
    scripts/vault.sh path >/dev/null 2>&1 || status "the dev Vault is not built yet: the first run builds it in the background (about 15 min on a fresh machine; progress in run/vault/setup.log)"
  fi
  local port
  port=$(cat "$dir/port")
  cat > run/custodyd.json <<JSON
{
  "pkcs11": {"pin_file": "../softhsm/user.pin", "softhsm_conf": "../softhsm/softhsm2.conf"},
  "socket": {"path": "custodyd.sock"},
  "policy_file": "../policies/example.json",
  "access_log": {"dir": "log"},
  "ceremony": {"auto_genesis": true},
  "participant_status": {"enabled": false},
  "vault": {
    "address": "http://127.0.0.1:$port",
    "token_file": "vault/custodyd.token",
    "status_file": "vault/status",
    "signers": [$signers_json],
    "quorum": 2
  }
}
JSON
  echo "custodyd configuration in run/custodyd.json (dev Vault on 127.0.0.1:$port)" >&2
}

# build builds the Vault binary if needed, keeping run/vault/status current.
build() {
  scripts/vault.sh path >/dev/null 2>&1 && return 0
  local start=$SECONDS
  scripts/vault.sh build >/dev/null &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    local min=$(( (SECONDS - start) / 60 ))
    local left=$(( 15 - min ))
    if [ "$left" -gt 0 ]; then
      status "the dev Vault is still building ($min min so far, about $left min left on a fresh machine; run/vault/setup.log)"
    else
      status "the dev Vault is still building ($min min so far; run/vault/setup.log)"
    fi
    sleep 10
  done
  wait "$pid" || { status "the dev Vault build failed: see run/vault/setup.log, then run scripts/vault-dev.sh up"; return 1; }
}

up() {
  build
  if ! running; then
    status "the dev Vault is starting"
    rm -f "$dir/custodyd.token" "$dir/intake.token"
    VAULT_SH_PORT=$(cat "$dir/port") scripts/vault.sh start "$dir" >/dev/null
  fi
  custody_vault_apply "$(scripts/vault.sh path)" "$(cat "$dir/addr")" "$dir/root-token" "$dir"
  rm -f "$dir/status" # up: no note to add to refusals
  echo "dev Vault at $(cat "$dir/addr")" >&2
}

case "${1:-}" in
  config) config ;;
  up) up ;;
  *) echo "usage: $0 config | up" >&2; exit 2 ;;
esac
