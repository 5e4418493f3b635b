#!/usr/bin/env bash
# make bench-vs-vault: custody against Vault transit on this machine, same
# load, same payload (cmd/custodybench). Starts, in run/bench (made anew):
#   - custodyd on the first-run configuration (policies/example.json, durable
#     access log in run/bench/log) on a fresh SoftHSM token of its own;
#   - the cached Vault dev server with transit and a file audit device writing
#     to run/bench/vault-audit.log (the same disk as custodyd's log);
# measures the raw chains first (hsm's open, hit, seal and signature
# benchmarks, envelope's BenchmarkWrapAll: their CPU per op is the floor of
# each row, custodybench --floor-cpu), then runs custodybench, and stops
# both (exactly the processes it started).
# BENCH_ARGS passes flags to custodybench, e.g. BENCH_ARGS="--duration 8s --rounds 3";
# DEK_CACHE_ENTRIES=0 runs custodyd with the DEK handle cache off (default: on, 4096);
# HSM_SESSIONS=N sizes its session pool (default: one per core, at least 2);
# KEY_RECHECK=0s runs it without private-key copies (default: "1s");
# RECYCLE_AFTER=N recycles the PKCS#11 module after N session objects (-1:
# never; default 0, automatic: 10,000 on SoftHSM, hsm.DefaultSoftHSMRecycle);
# CUSTODYD_GOMAXPROCS=N runs it with N Ps (default: one per core plus one per
# session, hsm.Procs), custodybench and Vault keep theirs; CUSTODYD_GOGC=N the
# same for Go's GC target (default: Go's, 100);
# ACCESS_LOG_DIR=DIR puts custodyd's access log in DIR, which must not exist
# (made here, removed afterwards), e.g. under /dev/shm to see what the disk's
# fdatasync costs a row (a tmpfs log is not durable: an experiment only).
# custodybench is given both servers' PIDs and prints their CPU time per item.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/deps.sh softhsm
scripts/vault.sh path >/dev/null || { echo "bench-vs-vault needs the Vault binary: run make deps first" >&2; exit 1; }
make --no-print-directory build
go build -o bin/custodybench ./cmd/custodybench

dir=run/bench
if [ -s "$dir/custodyd.pid" ]; then kill "$(cat "$dir/custodyd.pid")" 2>/dev/null || true; fi
scripts/vault.sh stop "$dir/vault" 2>/dev/null || true
rm -rf "$dir"
mkdir -p "$dir/tokens" "$dir/vault"
chmod 0700 "$dir" "$dir/tokens"
sed "s#@TOKENDIR@#$root/$dir/tokens#" softhsm/softhsm2.conf.in > "$dir/softhsm2.conf"
(umask 0377; head -c 18 /dev/urandom | base64 | tr -d '/+=\n' > "$dir/user.pin")
cache=""
if [ -n "${DEK_CACHE_ENTRIES:-}" ]; then
  [[ "$DEK_CACHE_ENTRIES" =~ ^[0-9]+$ ]] || { echo "DEK_CACHE_ENTRIES must be a number" >&2; exit 2; }
  cache=", \"dek_cache\": {\"entries\": $DEK_CACHE_ENTRIES}"
fi
if [ -n "${HSM_SESSIONS:-}" ]; then
  [[ "$HSM_SESSIONS" =~ ^[0-9]+$ ]] || { echo "HSM_SESSIONS must be a number" >&2; exit 2; }
  cache="$cache, \"sessions\": $HSM_SESSIONS"
fi
if [ -n "${KEY_RECHECK:-}" ]; then
  [[ "$KEY_RECHECK" =~ ^[0-9]+(ms|s|m)$ ]] || { echo "KEY_RECHECK must be a duration such as 0s or 1s" >&2; exit 2; }
  cache="$cache, \"key_recheck\": \"$KEY_RECHECK\""
fi
if [ -n "${RECYCLE_AFTER:-}" ]; then
  [[ "$RECYCLE_AFTER" =~ ^(-1|[0-9]+)$ ]] || { echo "RECYCLE_AFTER must be -1 (never), 0 (automatic) or a count" >&2; exit 2; }
  cache="$cache, \"recycle_after\": $RECYCLE_AFTER"
fi
logdir=log
madelog=""  # set once this script made ACCESS_LOG_DIR: only then is it removed
cleanup() {
  kill "$(cat "$dir/custodyd.pid")" 2>/dev/null || true
  scripts/vault.sh stop "$dir/vault" 2>/dev/null || true
  if [ -n "$madelog" ]; then rm -rf "$madelog"; fi
}
trap cleanup EXIT
if [ -n "${ACCESS_LOG_DIR:-}" ]; then
  [[ "$ACCESS_LOG_DIR" = /* ]] || { echo "ACCESS_LOG_DIR must be an absolute path" >&2; exit 2; }
  [ ! -e "$ACCESS_LOG_DIR" ] || { echo "ACCESS_LOG_DIR=$ACCESS_LOG_DIR exists; give a path that does not" >&2; exit 2; }
  mkdir -m 0700 "$ACCESS_LOG_DIR"
  madelog=$ACCESS_LOG_DIR
  logdir=$ACCESS_LOG_DIR
fi
cat > "$dir/custodyd.json" <<JSON
{
  "pkcs11": {"pin_file": "user.pin", "softhsm_conf": "softhsm2.conf"$cache},
  "socket": {"path": "custodyd.sock"},
  "policy_file": "../../policies/example.json",
  "access_log": {"dir": "$logdir"},
  "ceremony": {"auto_genesis": true}
}
JSON
bin/custodyd token init --no-backups --config "$dir/custodyd.json" >/dev/null

echo "== the raw chains alone (hsm and envelope benchmarks, 2 goroutines): the open chains, a hit, the seal's device and software halves, the signature" >&2
rawout=$(go test -run '^$' -bench '^Benchmark(OpenFields4|OpenFields4Cached|OpenX25519|SealFields4|Sign)$' -benchtime "${RAW_BENCHTIME:-3s}" ./hsm/)
rawout+=$'\n'$(go test -run '^$' -bench '^BenchmarkWrapAll$' -benchtime "${RAW_BENCHTIME:-3s}" ./internal/envelope/)
echo "$rawout" | grep '^Benchmark' >&2
raw=$(awk '/^BenchmarkOpenFields4-/ {print $3}' <<<"$rawout")
rawv1=$(awk '/^BenchmarkOpenX25519-/ {print $3}' <<<"$rawout")
# cpu-µs/op of benchmark $1 (the value before the unit).
cpu() { awk -v b="^Benchmark$1-" '$0 ~ b { for (i = 2; i <= NF; i++) if ($i == "cpu-µs/op") print $(i-1) }' <<<"$rawout"; }
floors="decrypt-cold=$(cpu OpenFields4),decrypt-warm=$(cpu OpenFields4Cached)"
floors+=",encrypt=$(awk -v a="$(cpu WrapAll)" -v b="$(cpu SealFields4)" -v c="$(cpu Sign)" 'BEGIN { print a + b + c }')"
[ -n "$raw" ] && [ -n "$rawv1" ] || { echo "the raw chain benchmarks printed no figure: $rawout" >&2; exit 1; }

runenv=()  # custodyd's own environment additions
if [ -n "${CUSTODYD_GOMAXPROCS:-}" ]; then
  [[ "$CUSTODYD_GOMAXPROCS" =~ ^[1-9][0-9]*$ ]] || { echo "CUSTODYD_GOMAXPROCS must be a positive number" >&2; exit 2; }
  runenv+=("GOMAXPROCS=$CUSTODYD_GOMAXPROCS")
fi
if [ -n "${CUSTODYD_GOGC:-}" ]; then
  [[ "$CUSTODYD_GOGC" =~ ^([1-9][0-9]*|off)$ ]] || { echo "CUSTODYD_GOGC must be a positive number or off" >&2; exit 2; }
  runenv+=("GOGC=$CUSTODYD_GOGC")
fi
env "${runenv[@]}" bin/custodyd run --config "$dir/custodyd.json" > "$dir/custodyd.log" 2>&1 &
echo $! > "$dir/custodyd.pid"
for _ in $(seq 1 100); do [ -S "$dir/custodyd.sock" ] && break; sleep 0.1; done
[ -S "$dir/custodyd.sock" ] || { cat "$dir/custodyd.log" >&2; exit 1; }
VAULT_SH_WATCH_PID=$$ scripts/vault.sh start "$dir/vault" >/dev/null

# shellcheck disable=SC2086
bin/custodybench --socket "$dir/custodyd.sock" --vault-addr "$(cat "$dir/vault/addr")" \
  --vault-token-file "$dir/vault/root-token" --vault-audit-file "$root/$dir/vault-audit.log" \
  --custody-pid "$(cat "$dir/custodyd.pid")" --vault-pid "$(cat "$dir/vault/pid")" \
  --raw-chain-ns "$raw" --raw-v1-chain-ns "$rawv1" --floor-cpu "$floors" ${BENCH_ARGS:-} | tee "$dir/custodybench.out"

# The chain drifts with the machine (its CPU per op spread 507-751 µs between
# runs of one session): measure it again now that the rows are done, and
# give the cold rows against both and against their mean.
kill "$(cat "$dir/custodyd.pid")" 2>/dev/null || true
scripts/vault.sh stop "$dir/vault" 2>/dev/null || true
after=$(go test -run '^$' -bench '^BenchmarkOpenFields4$' -benchtime "${RAW_BENCHTIME:-3s}" ./hsm/ | awk '/^BenchmarkOpenFields4-/ {print $3}')
[ -n "$after" ] || { echo "the second raw chain benchmark printed no figure" >&2; exit 1; }
awk -v before="$raw" -v after="$after" '
  BEGIN { b = 1e9 / before; a = 1e9 / after; m = (a + b) / 2
          printf "\nraw on-device open chain, v2, 4 fields: %.0f/s before the rows, %.0f/s after (mean %.0f/s)\n", b, a, m }
  ($1 == "decrypt-cold" || $1 == "batch-decrypt-cold") && $3 ~ /^[0-9]+$/ {
          printf "%-18s %2d clients: %5.0f/s = %.2f × the mean chain (%.2f × before, %.2f × after; goal %s)\n",
            $1, $2, $3, $3 / m, $3 / b, $3 / a, ($1 == "decrypt-cold" ? "0.85" : "0.9") }' "$dir/custodybench.out"
