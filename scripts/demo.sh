#!/usr/bin/env bash
# Walks through the API against a running first-run daemon (make run):
# register two participants, seal a transaction, open it for two purposes,
# and show a denial. Safe to run twice.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ctl="bin/custodyctl --socket ${CUSTODY_SOCKET:-run/custodyd.sock}"
for p in client-456 miner-789; do
  $ctl participants register "$p" 2>/dev/null || $ctl participants show "$p" | head -1
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
