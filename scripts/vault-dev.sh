#!/usr/bin/env bash
# The first run's court-order setup (idempotent), against a dev Vault in run/vault:
#   - starts the dev server (scripts/vault.sh start) unless it is already running;
#   - writes the least-privilege policies of policies/vault/;
#   - a periodic token for custodyd (policy custodyd) in run/vault/custodyd.token and
#     one for the legal intake role (policy legal-intake) in run/vault/intake.token (0400);
#   - three order-signer key pairs in run/orders/ (private keys 0400);
#   - run/custodyd.json: the default configuration plus a vault section pinning the
#     three signers' public keys with a quorum of 2, and ceremony.auto_genesis (the
#     demo creates its escrow and signing keys at first start, without officers).
# Tokens and keys are never printed. A dev Vault keeps everything in memory: orders
# last as long as this server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=run/vault
mkdir -p run/orders
chmod 0700 run/orders
if ! { [ -s "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }; then
  scripts/vault.sh start "$dir" >/dev/null
  rm -f "$dir/custodyd.token" "$dir/intake.token"   # the old server's tokens are gone with it
fi
vault=$(scripts/vault.sh path)
export VAULT_ADDR VAULT_TOKEN
VAULT_ADDR=$(cat "$dir/addr")
VAULT_TOKEN=$(cat "$dir/root-token")
"$vault" policy write custodyd policies/vault/custodyd.hcl >/dev/null
"$vault" policy write legal-intake policies/vault/legal-intake.hcl >/dev/null
for who in custodyd:custodyd intake:legal-intake; do
  file="$dir/${who%%:*}.token"
  if [ ! -s "$file" ]; then
    (umask 0377; "$vault" token create -policy="${who#*:}" -period=24h -field=token > "$file")
  fi
done

signers=()
for n in 1 2 3; do
  key="run/orders/judge-$n.key"
  pubfile="run/orders/judge-$n.pub.json"
  if [ ! -s "$key" ]; then
    bin/custodyctl order keygen --out "$key" --name "judge-$n" > "$pubfile"
  fi
  signers+=("$(cat "$pubfile")")
done
signers_json=$(IFS=,; echo "${signers[*]}")
cat > run/custodyd.json <<JSON
{
  "pkcs11": {"pin_file": "../softhsm/user.pin", "softhsm_conf": "../softhsm/softhsm2.conf"},
  "socket": {"path": "custodyd.sock"},
  "policy_file": "../policies/example.json",
  "access_log": {"dir": "log"},
  "ceremony": {"auto_genesis": true},
  "vault": {
    "address": "$VAULT_ADDR",
    "token_file": "vault/custodyd.token",
    "signers": [$signers_json],
    "quorum": 2
  }
}
JSON
echo "dev Vault at $VAULT_ADDR; custodyd configuration in run/custodyd.json" >&2
