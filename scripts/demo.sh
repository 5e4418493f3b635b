#!/usr/bin/env bash
# Walks through the API against a running first-run daemon (make run):
# register two participants, seal a transaction, open it for two purposes,
# and show a denial. Safe to run twice.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ctl="bin/custodyctl --socket ${CUSTODY_SOCKET:-run/custodyd.sock}"
for p in client-456 miner-789; do
  if $ctl participants register "$p" >/dev/null 2>&1; then echo "registered $p"; else echo "$p is already registered"; fi
done
tx="tx-$(date +%s)"
cat > run/demo-request.json <<JSON
{"transaction_id":"$tx","job_id":"job-123",
 "public_data":{"job_id":"job-123","status":"completed"},
 "confidential":{"amount":"1000","pricing":{"per_gpu_hour":"2.50"},"settlement_details":{"iban":"DE00 0000"}},
 "participants":["client-456","miner-789"]}
JSON
echo "== encrypt"
$ctl --json encrypt run/demo-request.json > run/demo-sealed.json
echo "sealed $tx; envelope and recipients in run/demo-sealed.json"
echo "== decrypt as miner-789 for settlement (amount and pricing only)"
$ctl decrypt --envelope-file run/demo-sealed.json --as miner-789 --purpose settlement
echo "== decrypt as client-456 for dispute (every field)"
$ctl decrypt --envelope-file run/demo-sealed.json --as client-456 --purpose dispute
echo "== decrypt for a purpose the policy does not grant (expected: purpose_denied)"
if $ctl decrypt --envelope-file run/demo-sealed.json --as miner-789 --purpose marketing; then
  echo "unexpected: allowed" >&2; exit 1
fi

# Court-order audit decrypt: needs the dev Vault that make run builds and
# starts in the background; wait for it here, saying how far it is.
if [ -s run/vault/port ] && [ ! -s run/vault/intake.token ]; then
  echo "== waiting for the dev Vault (the court-order part needs it)"
  waited=0
  while [ ! -s run/vault/intake.token ]; do
    note=$(head -n1 run/vault/status 2>/dev/null || true)
    case "$note" in *failed*) echo "$note" >&2; break ;; esac
    if [ $((waited % 30)) -eq 0 ]; then echo "  ${note:-the dev Vault is starting}"; fi
    if [ "$waited" -ge 1800 ]; then echo "  gave up after 30 min; see run/vault/setup.log" >&2; break; fi
    sleep 5; waited=$((waited + 5))
  done
fi
if [ -s run/vault/addr ] && [ -s run/vault/intake.token ]; then
  export VAULT_ADDR
  VAULT_ADDR=$(cat run/vault/addr)
  order="order-$tx"
  intake="--vault-token-file run/vault/intake.token"
  echo "Order of the court in the matter of $tx (demo)" > run/demo-order.txt
  echo "== legal intake files court order $order naming the auditor principal 'operator'"
  bin/custodyctl order create $intake --id "$order" --auditor operator --purpose investigation \
    --authority "Demo District Court" --document run/demo-order.txt --transactions "$tx" --max-uses 2 \
    --not-before "$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)" --not-after "$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
  echo "== a signer reviews the body Vault holds; without --sha256 nothing is signed"
  review=$(bin/custodyctl order sign "$order" $intake 2>/dev/null || true)
  echo "$review"
  sum=$(echo "$review" | sed -n 's/^body sha256 *\([0-9a-f]\{64\}\)$/\1/p')
  # The daemon picks its Vault token up within a few seconds of it appearing.
  # (custodyctl's output is captured, not piped to grep: under pipefail its
  # refusal would end the wait at once.) It retries with backoff up to 30 s.
  for _ in $(seq 1 60); do
    out=$($ctl audit decrypt --envelope-file run/demo-sealed.json --order "$order" --purpose investigation 2>&1 || true)
    case "$out" in *vault_unavailable*) sleep 1 ;; *) break ;; esac
  done
  echo "== one signature of the 2 required (signing the reviewed body $sum): the audit decrypt is refused"
  bin/custodyctl order sign "$order" $intake --key run/orders/judge-1.key --sha256 "$sum" >/dev/null
  if $ctl audit decrypt --envelope-file run/demo-sealed.json --order "$order" --purpose investigation; then
    echo "unexpected: allowed" >&2; exit 1
  fi
  echo "== second signature: quorum met, the escrow stanza opens on the HSM"
  bin/custodyctl order sign "$order" $intake --key run/orders/judge-2.key --sha256 "$sum" >/dev/null
  $ctl audit decrypt --envelope-file run/demo-sealed.json --order "$order" --purpose investigation
fi
echo "== the access log, verified offline once the daemon has signed its next checkpoint (within 1 s)"
sleep 1.5
# Never the directory's own log.pub: a reviewer pins the key whose fingerprint the operators
# published (custodyctl log pin run/log --fingerprint SHA256); the demo keeps a copy taken on
# its first run instead.
[ -f run/reviewer-log.pub ] || cp run/log/log.pub run/reviewer-log.pub
bin/custodyctl log verify run/log --key run/reviewer-log.pub
bin/custodyctl log query run/log --transaction "$tx"
