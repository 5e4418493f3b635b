# shellcheck shell=bash
# The court-order setup every custody Vault gets, shared by the first run
# (scripts/vault-dev.sh, one dev server) and the fleet (scripts/fleet.sh, a
# raft cluster). Source it; it defines functions only.
#
#   custody_order_signers CUSTODYCTL DIR
#       three order-signer key pairs DIR/judge-<n>.key (0400) and
#       DIR/judge-<n>.pub.json, made once; prints the public keys as a JSON
#       list body (comma-separated objects) for a vault.signers section.
#   custody_vault_apply VAULT_BIN ADDR ROOT_TOKEN_FILE TOKEN_DIR
#       on the Vault at ADDR (root token read from ROOT_TOKEN_FILE, passed
#       in the environment, never argv): a KV v2 mount "secret" unless one
#       exists, the least-privilege policies of policies/vault/, and a
#       periodic token for custodyd (TOKEN_DIR/custodyd.token) and one for
#       the legal intake role (TOKEN_DIR/intake.token), mode 0400, each made
#       once. Idempotent. Tokens are never printed.

custody_order_signers() {
  local ctl="$1" dir="$2" n key pub out=()
  mkdir -p "$dir"
  chmod 0700 "$dir"
  for n in 1 2 3; do
    key="$dir/judge-$n.key"
    pub="$dir/judge-$n.pub.json"
    if [ ! -s "$key" ] || [ ! -s "$pub" ]; then
      rm -f "$key" "$pub"
      "$ctl" order keygen --out "$key" --name "judge-$n" > "$pub"
    fi
    out+=("$(cat "$pub")")
  done
  (IFS=,; echo "${out[*]}")
}

custody_vault_apply() {
  local vault="$1" addr="$2" rootfile="$3" tokdir="$4"
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  (
    export VAULT_ADDR="$addr"
    VAULT_TOKEN=$(cat "$rootfile")
    export VAULT_TOKEN
    # Listed first, then searched: under pipefail, grep -q quitting at its
    # first match can fail the pipe (the lister's SIGPIPE), which read as
    # "no mount" and made the enable below fail on a Vault that has one.
    local mounts
    mounts=$("$vault" secrets list -format=json)
    if ! grep -q '"secret/"' <<<"$mounts"; then
      "$vault" secrets enable -path=secret -version=2 kv >/dev/null
    fi
    "$vault" policy write custodyd "$root/policies/vault/custodyd.hcl" >/dev/null
    "$vault" policy write legal-intake "$root/policies/vault/legal-intake.hcl" >/dev/null
    local who file
    for who in intake:legal-intake custodyd:custodyd; do
      file="$tokdir/${who%%:*}.token"
      if [ ! -s "$file" ]; then
        (umask 0377; "$vault" token create -policy="${who#*:}" -period=24h -field=token > "$file.tmp" && mv -f "$file.tmp" "$file")
      fi
    done
  )
}
