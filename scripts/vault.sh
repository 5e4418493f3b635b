#!/usr/bin/env bash
# A real HashiCorp Vault for custody's tests and first run (no Vault package is
# reachable here; see scripts/vault/main.go). Vault is under the Business
# Source License; custody uses it only as a test and demo dependency.
#
#   scripts/vault.sh build       build scripts/vault once into a cache outside the
#                                repository and print the binary's path (idempotent)
#   scripts/vault.sh path        print the cached binary's path; exit 1 if not built
#   scripts/vault.sh start DIR   start a dev server on a free 127.0.0.1 port (or on
#                                VAULT_SH_PORT, when set: one attempt); writes
#                                DIR/addr, DIR/root-token (0400), DIR/unseal-key (0400),
#                                DIR/pid, DIR/vault.log; returns once Vault answers.
#                                With VAULT_SH_WATCH_PID=P set, the server is also
#                                stopped when process P exits.
#   scripts/vault.sh stop DIR    stop exactly the process in DIR/pid
#
# The cache is ${CUSTODY_VAULT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custody}/vault-<version>/vault,
# so a fresh clone on the same machine (as CI runs) reuses it. A dev server keeps
# everything in memory and is only for tests and demos.
set -euo pipefail

VAULT_VERSION=1.21.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${CUSTODY_VAULT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custody}/vault-${VAULT_VERSION}"
bin="$cache/vault"

die() { echo "vault.sh: $*" >&2; exit 1; }

build() {
  if [ -x "$bin" ] && [[ "$("$bin" version 2>/dev/null)" == *"Vault v${VAULT_VERSION}"* ]]; then
    echo "$bin"
    return 0
  fi
  command -v go >/dev/null || die "go is not on PATH"
  mkdir -p "$cache"
  echo "building Vault v${VAULT_VERSION} from the Go module proxy into $cache" >&2
  echo "(cold cache: ~7 min of downloads, then ~8-9 min of compiling on 2 cores; once only)" >&2
  local start=$SECONDS tmp="$cache/vault.tmp.$$"
  trap 'rm -f "$tmp"' RETURN
  ( cd "$here/vault" && echo "  downloading modules…" >&2 && go mod download >&2 \
    && echo "  compiling (started $(date +%H:%M:%S))…" >&2 \
    && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp" . >&2 )
  [[ "$("$tmp" version)" == *"Vault v${VAULT_VERSION}"* ]] || die "built binary does not report v${VAULT_VERSION}"
  mv -f "$tmp" "$bin"
  echo "  built in $((SECONDS - start))s: $bin" >&2
  echo "$bin"
}

path() {
  [ -x "$bin" ] || die "Vault is not built: run \`make deps\` (or scripts/vault.sh build)"
  echo "$bin"
}

free_port() {
  # Ask the kernel for a free port on loopback.
  python3 - <<'PY' 2>/dev/null || shuf -i 20000-60000 -n 1
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

start() {
  local dir="${1:?usage: vault.sh start DIR}"
  path >/dev/null
  mkdir -p "$dir"
  chmod 0700 "$dir"
  if [ -s "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    die "a Vault started from $dir is already running (pid $(cat "$dir/pid"))"
  fi
  rm -f "$dir/addr" "$dir/root-token" "$dir/unseal-key" "$dir/pid"
  local token port addr attempt
  token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  local attempts=5
  [ -z "${VAULT_SH_PORT:-}" ] || attempts=1
  for attempt in $(seq 1 "$attempts"); do
    port="${VAULT_SH_PORT:-$(free_port)}"
    addr="http://127.0.0.1:$port"
    # The root token reaches Vault through its environment, not its argv
    # (which every user can read in ps); it is written to a 0400 file and
    # never printed. The dev server itself prints it to DIR/vault.log (0600).
    (umask 077; export VAULT_DEV_ROOT_TOKEN_ID="$token"; exec "$bin" server -dev \
        -dev-listen-address="127.0.0.1:$port" -dev-no-store-token \
        >"$dir/vault.log" 2>&1 </dev/null) &
    local pid=$!
    echo "$pid" >"$dir/pid"
    local i
    for i in $(seq 1 150); do
      if ! kill -0 "$pid" 2>/dev/null; then break; fi
      if VAULT_ADDR="$addr" "$bin" status >/dev/null 2>&1; then
        local key
        key="$(sed -n 's/^Unseal Key: //p' "$dir/vault.log" | head -n1)"
        [ -n "$key" ] || { sleep 0.1; continue; }
        (umask 077; printf '%s\n' "$addr" >"$dir/addr"
         printf '%s' "$token" >"$dir/root-token"; chmod 0400 "$dir/root-token"
         printf '%s' "$key" >"$dir/unseal-key"; chmod 0400 "$dir/unseal-key")
        chmod 0644 "$dir/addr"
        if [ -n "${VAULT_SH_WATCH_PID:-}" ]; then
          # Stop this server when the process that asked for it is gone
          # (a test binary that crashed or was killed by its timeout).
          (setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done; kill -TERM "$2" 2>/dev/null' \
            _ "$VAULT_SH_WATCH_PID" "$pid" </dev/null >/dev/null 2>&1 &)
        fi
        echo "$addr"
        return 0
      fi
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
    if grep -q "address already in use" "$dir/vault.log" 2>/dev/null; then continue; fi
    die "Vault did not become ready; see $dir/vault.log"
  done
  die "no free port after $attempts attempt(s)"
}

stop() {
  local dir="${1:?usage: vault.sh stop DIR}"
  [ -s "$dir/pid" ] || return 0
  local pid
  pid="$(cat "$dir/pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pid"
}

case "${1:-}" in
  build) build ;;
  path) path ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 build | path | start DIR | stop DIR" >&2; exit 2 ;;
esac
