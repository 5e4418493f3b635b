#!/usr/bin/env bash
# A custody fleet on one machine (docs/fleet.md): a 3-node Vault cluster with
# integrated (raft) storage, N custodyd on one SoftHSM token directory (the
# stand-in for a network HSM partition), everything on 127.0.0.1.
#
#   scripts/fleet.sh up DIR [N]   start what is not running (idempotent; N
#                                 defaults to the last up's, else 3)
#   scripts/fleet.sh down DIR     stop exactly the processes DIR's pid files name
#   scripts/fleet.sh status DIR   which process runs, the Vault nodes' HA role
#
# DIR holds (created on the first up, kept by down; remove DIR to start over):
#   vault/node-<k>/      node k's config.hcl, raft data, vault.log, pid,
#                        addr (http://127.0.0.1:PORT)
#   vault/unseal-key     the cluster's unseal key (0600; one share, threshold 1)
#   vault/root-token     the initial root token (0600)
#   vault/custodyd.token, vault/intake.token   (0400, scripts/vault-setup.sh)
#   orders/judge-<n>.key order signers (0400) and their public keys
#   softhsm/             softhsm2.conf, tokens/ (the one shared token
#                        "fleet"), user.pin (0400)
#   custodyd-<i>/        daemon i: custodyd.json, log/ (its access log, signed
#                        by its own token key custody/log/custodyd-<i>/v1 and
#                        origin custodyd-<i>/access-log), custodyd.log, pid
#   custodyd-<i>.sock    daemon i's socket
#   fleet.json           the fleet manifest: each daemon's log directory and
#                        log key (custodyctl log verify/query/report --fleet)
#
# Daemon i talks to Vault node ((i-1) mod 3)+1: a standby forwards to the
# active node. Environment (for tests and benchmarks):
#   CUSTODY_BIN           directory of custodyd and custodyctl (default bin/,
#                         built by make fleet)
#   FLEET_POLICY          the daemons' policy file (default policies/example.json)
#   FLEET_CONFIG_EXTRA    a JSON object merged into every daemon's configuration
#                         (top-level keys replace; e.g. {"keys":{"rotation_check":"1s"}})
#   FLEET_VAULT_NODE      point every daemon at this node (1-3) instead
#   FLEET_WATCH_PID       stop each process this up starts when process P exits
#                         (a test binary that crashed or hit its timeout)
#
# The root token and the unseal key are for this local fleet only; they are
# written to 0600 files and never printed or passed in argv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/vault-setup.sh
. "$root/scripts/vault-setup.sh"
bindir=${CUSTODY_BIN:-$root/bin}
NODES=3

die() { echo "fleet.sh: $*" >&2; exit 1; }

abs() { mkdir -p "$1" && (cd "$1" && pwd); }

free_ports() { # N: N distinct free loopback ports, one a line
  python3 -c 'import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

# alive PIDFILE NAME: the pid file names a running process whose command is NAME.
alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null || true)")" = "$2" ]
}

# gone PIDFILE: the process the pid file names has exited (or is a zombie).
# Not "! alive": right after start_* the pid is still the subshell that is
# about to exec setsid and then the program, so its exe is bash or setsid
# for a moment (under load, long enough for a first health check to fail):
# that is what once made up report "custodyd-2 exited" for a daemon that
# was starting normally.
gone() {
  local pid st
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] || return 0
  st=$(cat "/proc/$pid/stat" 2>/dev/null) || return 0
  st=${st##*) }
  [ "${st%% *}" = Z ]
}

# stop NAME PIDFILE...: TERM every process a pid file names (only if it is
# NAME), KILL those still there after 10 s, remove the pid files.
stop() {
  local name=$1 f pids=() i p left
  shift
  for f in "$@"; do
    if alive "$f" "$name"; then
      pids+=("$(cat "$f")")
      kill -TERM "$(cat "$f")" 2>/dev/null || true
    fi
  done
  for i in $(seq 1 100); do
    left=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ $left = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true; done
  rm -f "$@"
}

# watch PID: with FLEET_WATCH_PID set, TERM PID once that process is gone.
watch() {
  [ -n "${FLEET_WATCH_PID:-}" ] || return 0
  (setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done; kill -TERM "$2" 2>/dev/null' \
    _ "$FLEET_WATCH_PID" "$1" </dev/null >/dev/null 2>&1 &)
}

# The node's HTTP API through curl, not the vault CLI: each CLI call starts a
# 360 MB binary (0.1 s idle, 0.5 s while the cluster forms), and up polls.
vstatus() { # ADDR -> JSON of sys/seal-status (initialized, sealed), or nothing
  curl -sf --max-time 5 "$1/v1/sys/seal-status" 2>/dev/null || true
}

is_active() { # ADDR: the node answers that it is the active one
  [ "$(field "$(curl -sf --max-time 5 "$1/v1/sys/leader" 2>/dev/null || true)" is_self)" = true ]
}

# unseal ADDR FILE: one unseal key share, read from FILE into the request
# body on curl's stdin (printf is a shell builtin: never in any argv).
unseal() {
  local key
  key=$(cat "$2")
  printf '{"key":"%s"}' "$key" | curl -sf --max-time 10 -X PUT --data-binary @- "$1/v1/sys/unseal" >/dev/null 2>&1 || true
}

# field JSON NAME: the value of a top-level true/false/number field of a
# Vault status answer (flat JSON), or nothing. Pure bash: up polls it often
# and a python3 start costs 0.2 s here.
field() {
  local re="\"$2\"[[:space:]]*:[[:space:]]*([a-z0-9.]+)"
  if [[ $1 =~ $re ]]; then echo "${BASH_REMATCH[1]}"; fi
}

node_config() { # K DIR
  local k=$1 d=$2/vault/node-$1 j peers=""
  for j in $(seq 1 $NODES); do
    [ "$j" = "$k" ] && continue
    peers+="  retry_join {
    leader_api_addr = \"http://127.0.0.1:$(cat "$2/vault/node-$j/api-port")\"
  }
"
  done
  cat > "$d/config.hcl" <<HCL
storage "raft" {
  path    = "$d/data"
  node_id = "node-$k"
  # Raft's fastest timings (Vault's advice for production too; the default
  # 5 makes elections and the first leader take seconds longer).
  performance_multiplier = 1
  # Autopilot promotes a joined node to voter on its reconcile pass (every
  # 10 s by default; the state update must be more frequent) after
  # server_stabilization_time (set to 1 s by up):
  # with both short, up's cluster tolerates a node's loss seconds sooner.
  autopilot_reconcile_interval = "1s"
  autopilot_update_interval    = "500ms"
$peers}
listener "tcp" {
  address         = "127.0.0.1:$(cat "$d/api-port")"
  cluster_address = "127.0.0.1:$(cat "$d/cluster-port")"
  tls_disable     = true
}
api_addr      = "http://127.0.0.1:$(cat "$d/api-port")"
cluster_addr  = "https://127.0.0.1:$(cat "$d/cluster-port")"
disable_mlock = true
ui            = false
HCL
}

start_node() { # K DIR
  local d=$2/vault/node-$1
  alive "$d/pid" vault && return 0
  (umask 077; exec setsid "$vault" server -config="$d/config.hcl" >>"$d/vault.log" 2>&1 </dev/null) &
  echo $! > "$d/pid"
  watch $!
  local i
  for i in $(seq 1 100); do
    [ -n "$(vstatus "$(cat "$d/addr")")" ] && return 0
    gone "$d/pid" && die "Vault node $1 exited; see $d/vault.log"
    sleep 0.1
  done
  die "Vault node $1 did not answer; see $d/vault.log"
}

# unseal_all DIR: unseal every node (all at once: a joining node needs the
# leader unsealed, the others need not wait for each other).
unseal_all() {
  local dir=$1 k addr st pending deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    pending=0
    for k in $(seq 1 $NODES); do
      addr=$(cat "$dir/vault/node-$k/addr")
      st=$(vstatus "$addr")
      if [ "$(field "$st" initialized)" = true ] && [ "$(field "$st" sealed)" = false ]; then continue; fi
      pending=1
      if [ "$(field "$st" sealed)" = true ]; then
        unseal "$addr" "$dir/vault/unseal-key"
      fi
    done
    [ $pending = 0 ] && return 0
    sleep 0.3
  done
  die "a Vault node is still sealed or not joined; see $dir/vault/node-*/vault.log"
}

# vault_api DIR METHOD ADDR PATH [BODY]: a Vault API call with the root
# token (its header read from a file descriptor, never in argv).
vault_api() {
  curl -sf --max-time 10 -X "$2" -H @<(printf 'X-Vault-Token: %s\n' "$(cat "$1/vault/root-token")") ${5:+--data-binary "$5"} "$3/v1/$4" 2>/dev/null
}

# raft_ready DIR: wait until the cluster tolerates the loss of a node (every
# node a healthy voter). A node that joins is a non-voter until autopilot
# promotes it; until then killing the active node leaves no quorum.
raft_ready() {
  local dir=$1 k st deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    for k in $(seq 1 $NODES); do
      st=$(vault_api "$dir" GET "$(cat "$dir/vault/node-$k/addr")" sys/storage/raft/autopilot/state || true)
      [ -n "$st" ] && break
    done
    if [ "$(field "$st" healthy)" = true ] && [ "$(field "$st" failure_tolerance)" -ge 1 ] 2>/dev/null; then return 0; fi
    sleep 0.3
  done
  die "the Vault cluster does not tolerate a node's loss (a node is not a healthy voter); see $dir/vault/node-*/vault.log"
}

vault_up() { # DIR
  local dir=$1 k d
  mkdir -p "$dir/vault"
  chmod 0700 "$dir/vault"
  local ports
  mapfile -t ports < <(free_ports $((2 * NODES)))
  for k in $(seq 1 $NODES); do
    d=$dir/vault/node-$k
    mkdir -p "$d/data"
    chmod 0700 "$d"
    [ -s "$d/api-port" ] || echo "${ports[2 * k - 2]}" > "$d/api-port"
    [ -s "$d/cluster-port" ] || echo "${ports[2 * k - 1]}" > "$d/cluster-port"
    echo "http://127.0.0.1:$(cat "$d/api-port")" > "$d/addr"
  done
  for k in $(seq 1 $NODES); do node_config "$k" "$dir"; start_node "$k" "$dir"; done
  local first
  first=$(cat "$dir/vault/node-1/addr")
  if [ ! -s "$dir/vault/unseal-key" ]; then
    [ "$(field "$(vstatus "$first")" initialized)" = true ] && die "Vault node 1 is initialised but $dir/vault/unseal-key is missing"
    local out
    out=$(VAULT_ADDR="$first" "$vault" operator init -key-shares=1 -key-threshold=1 -format=json)
    (umask 077
     python3 -c 'import json,sys; sys.stdout.write(json.loads(sys.stdin.read())["unseal_keys_b64"][0])' <<<"$out" > "$dir/vault/unseal-key"
     python3 -c 'import json,sys; sys.stdout.write(json.loads(sys.stdin.read())["root_token"])' <<<"$out" > "$dir/vault/root-token")
    unset out
    # Node 1 first, alone: it elects itself, and autopilot's configuration
    # is set before the others join (they are promoted sooner).
    unseal "$first" "$dir/vault/unseal-key"
    local i
    for i in $(seq 1 150); do
      is_active "$first" && autopilot_config "$dir" "$first" && break
      sleep 0.2
    done
  fi
  unseal_all "$dir"
  # The setup is applied once (again when a policy file changed).
  if [ ! -e "$dir/vault/applied" ] || [ -n "$(find "$root/policies/vault" -newer "$dir/vault/applied" -name '*.hcl')" ]; then
    vault_apply "$dir"
  fi
  raft_ready "$dir"
}

# autopilot_config DIR ADDR: autopilot promotes a joined node to voter once
# it has been healthy for server_stabilization_time (default 10 s): 1 s here
# (see node_config).
autopilot_config() {
  vault_api "$1" POST "$2" sys/storage/raft/autopilot/configuration '{"server_stabilization_time":"1s"}' >/dev/null
}

vault_apply() { # DIR
  local dir=$1
  # Wait for an active node, then apply the setup through it.
  local i active=""
  for i in $(seq 1 150); do
    active=$(leader "$dir")
    [ -n "$active" ] && break
    sleep 0.2
  done
  [ -n "$active" ] || die "no active Vault node; see $dir/vault/node-*/vault.log"
  local addr
  addr=$(cat "$dir/vault/node-$active/addr")
  for i in $(seq 1 50); do
    if autopilot_config "$dir" "$addr" && custody_vault_apply "$vault" "$addr" "$dir/vault/root-token" "$dir/vault" 2>/dev/null; then
      touch "$dir/vault/applied"
      return 0
    fi
    sleep 0.2
  done
  autopilot_config "$dir" "$addr" || die "cannot set the autopilot configuration through $addr; see $dir/vault/node-$active/vault.log"
  custody_vault_apply "$vault" "$addr" "$dir/vault/root-token" "$dir/vault"
  touch "$dir/vault/applied"
}

# leader DIR: the number of the active node, or nothing.
leader() {
  local k st
  for k in $(seq 1 $NODES); do
    alive "$1/vault/node-$k/pid" vault || continue
    st=$(vstatus "$(cat "$1/vault/node-$k/addr")")
    if [ "$(field "$st" sealed)" = false ] && is_active "$(cat "$1/vault/node-$k/addr")"; then
      echo "$k"; return 0
    fi
  done
}

token_up() { # DIR
  local dir=$1 s=$1/softhsm
  mkdir -p "$s/tokens"
  chmod 0700 "$s" "$s/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$s/tokens" > "$s/softhsm2.conf"
  if [ ! -s "$s/user.pin" ]; then
    (umask 0377; head -c 18 /dev/urandom | base64 | tr -d '/+=\n' > "$s/user.pin")
  fi
  export SOFTHSM2_CONF=$s/softhsm2.conf
  if ! softhsm2-util --show-slots 2>/dev/null | grep -Eq '^[[:space:]]*Label:[[:space:]]+fleet[[:space:]]*$'; then
    printf '{"pkcs11":{"token_label":"fleet","pin_file":"%s"}}\n' "$s/user.pin" > "$s/init.json"
    "$bindir/custodyd" token init --config "$s/init.json" --no-backups >/dev/null
  fi
}

daemon_config() { # I DIR SIGNERS
  local i=$1 dir=$2 node=${FLEET_VAULT_NODE:-$(( (($1 - 1) % NODES) + 1 ))}
  mkdir -p "$dir/custodyd-$i"
  chmod 0700 "$dir/custodyd-$i"
  FLEET_I=$i FLEET_DIR=$dir FLEET_NODE_ADDR=$(cat "$dir/vault/node-$node/addr") FLEET_SIGNERS="[$3]" \
  FLEET_POLICY_FILE=$(cd "$(dirname "${FLEET_POLICY:-$root/policies/example.json}")" && pwd)/$(basename "${FLEET_POLICY:-policies/example.json}") \
  python3 - > "$dir/custodyd-$i/custodyd.json.tmp" <<'PY'
import json, os
i, d = os.environ["FLEET_I"], os.environ["FLEET_DIR"]
cfg = {
  "pkcs11": {"token_label": "fleet", "pin_file": d + "/softhsm/user.pin", "softhsm_conf": d + "/softhsm/softhsm2.conf"},
  "socket": {"path": d + "/custodyd-" + i + ".sock"},
  "policy_file": os.environ["FLEET_POLICY_FILE"],
  "access_log": {"dir": d + "/custodyd-" + i + "/log", "origin": "custodyd-" + i + "/access-log",
                 "signing_key_label": "custody/log/custodyd-" + i + "/v1"},
  "ceremony": {"auto_genesis": True},
  "vault": {"address": os.environ["FLEET_NODE_ADDR"], "token_file": d + "/vault/custodyd.token",
            "signers": json.loads(os.environ["FLEET_SIGNERS"]), "quorum": 2},
}
extra = os.environ.get("FLEET_CONFIG_EXTRA")
if extra:
  cfg.update(json.loads(extra))
print(json.dumps(cfg, indent=2))
PY
  mv -f "$dir/custodyd-$i/custodyd.json.tmp" "$dir/custodyd-$i/custodyd.json"
}

start_daemon() { # I DIR
  local d=$2/custodyd-$1 sock=$2/custodyd-$1.sock
  alive "$d/pid" custodyd && return 0
  (exec setsid "$bindir/custodyd" run --config "$d/custodyd.json" >>"$d/custodyd.log" 2>&1 </dev/null) &
  echo $! > "$d/pid"
  watch $!
}

wait_daemon() { # I DIR
  local d=$2/custodyd-$1 i
  for i in $(seq 1 300); do
    if "$bindir/custodyctl" --socket "$2/custodyd-$1.sock" health >/dev/null 2>&1; then return 0; fi
    gone "$d/pid" && die "custodyd-$1 exited; see $d/custodyd.log"
    sleep 0.1
  done
  die "custodyd-$1 did not answer on its socket; see $d/custodyd.log"
}

# manifest DIR N: DIR/fleet.json, the fleet manifest of custodyctl log
# verify/query/report --fleet (docs/fleet.md): each daemon's log directory
# (relative to DIR) and the key its log.pub holds now, as seen by whoever
# runs up. A reviewer keeps a copy made when the keys were checked.
manifest() {
  local dir=$1 n=$2 i key sep="" out='{"version": 1, "logs": ['
  for i in $(seq 1 "$n"); do
    key=$(cat "$dir/custodyd-$i/log/log.pub")
    [[ $key =~ ^[A-Za-z0-9/+=._-]+$ ]] || die "custodyd-$i/log/log.pub is not a verifier key"
    out+="$sep"$'\n'"  {\"name\": \"custodyd-$i\", \"dir\": \"custodyd-$i/log\", \"key\": \"$key\"}"
    sep=,
  done
  printf '%s\n]}\n' "$out" > "$dir/fleet.json.tmp"
  mv -f "$dir/fleet.json.tmp" "$dir/fleet.json"
}

up() {
  local dir n i
  [ -n "${1:-}" ] || die "usage: fleet.sh up DIR [N]"
  dir=$(abs "$1")
  chmod 0700 "$dir"
  n=${2:-$(cat "$dir/size" 2>/dev/null || echo 3)}
  [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "N must be 1..99, not $n"
  [ -x "$bindir/custodyd" ] && [ -x "$bindir/custodyctl" ] || die "no custodyd/custodyctl in $bindir: run make build (or set CUSTODY_BIN)"
  vault=$(scripts_vault path) || exit 1
  echo "$n" > "$dir/size"
  token_up "$dir"
  vault_up "$dir"
  local signers
  signers=$(custody_order_signers "$bindir/custodyctl" "$dir/orders")
  for i in $(seq 1 "$n"); do daemon_config "$i" "$dir" "$signers"; done
  # Daemon 1 first: on a fresh token its auto-genesis makes the escrow and
  # signing keys once; the others find them.
  start_daemon 1 "$dir"
  wait_daemon 1 "$dir"
  for i in $(seq 2 "$n"); do start_daemon "$i" "$dir"; done
  for i in $(seq 2 "$n"); do wait_daemon "$i" "$dir"; done
  manifest "$dir" "$n"
  echo "fleet up in $dir: $n custodyd (custodyd-<i>.sock); fleet.sh status $1 names the Vault leader" >&2
}

down() {
  local dir i k
  [ -n "${1:-}" ] && [ -d "$1" ] || die "usage: fleet.sh down DIR"
  dir=$(abs "$1")
  local files=()
  for i in "$dir"/custodyd-*/pid; do [ -e "$i" ] && files+=("$i"); done
  [ ${#files[@]} = 0 ] || stop custodyd "${files[@]}"
  files=()
  for k in $(seq 1 $NODES); do [ -e "$dir/vault/node-$k/pid" ] && files+=("$dir/vault/node-$k/pid"); done
  [ ${#files[@]} = 0 ] || stop vault "${files[@]}"
  echo "fleet in $dir stopped" >&2
}

status() {
  local dir k i st role
  [ -n "${1:-}" ] && [ -d "$1" ] || die "usage: fleet.sh status DIR"
  dir=$(abs "$1")
  vault=$(scripts_vault path) || exit 1
  for k in $(seq 1 $NODES); do
    if alive "$dir/vault/node-$k/pid" vault; then
      st=$(vstatus "$(cat "$dir/vault/node-$k/addr")")
      role=standby
      [ "$(field "$st" sealed)" = true ] && role=sealed
      [ "$(leader "$dir")" = "$k" ] && role=active
      echo "vault node-$k  $(cat "$dir/vault/node-$k/addr")  pid $(cat "$dir/vault/node-$k/pid")  $role"
    else
      echo "vault node-$k  stopped"
    fi
  done
  for i in "$dir"/custodyd-*/; do
    [ -d "$i" ] || continue
    i=$(basename "$i")
    if alive "$dir/$i/pid" custodyd; then
      if "$bindir/custodyctl" --socket "$dir/$i.sock" health >/dev/null 2>&1; then st=serving; else st="not answering"; fi
      echo "$i  pid $(cat "$dir/$i/pid")  $st  $dir/$i.sock"
    else
      echo "$i  stopped"
    fi
  done
}

scripts_vault() { "$root/scripts/vault.sh" path; }

case "${1:-}" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  status) shift; status "$@" ;;
  *) echo "usage: $0 up DIR [N] | down DIR | status DIR" >&2; exit 2 ;;
esac
