#!/usr/bin/env bash
# Prepares the first-run SoftHSM token under softhsm/ (idempotent):
#   softhsm/softhsm2.conf      from softhsm/softhsm2.conf.in
#   softhsm/tokens/            the token store (gitignored)
#   softhsm/user.pin           a random user PIN, mode 0400, never printed
#   token "custody"            initialised through custodyd with an SO PIN that no one
#                              keeps (--no-backups): the demo has no officers to split it
#                              among, and the daemon must never hold it (docs/ceremonies.md)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
label=${CUSTODY_TOKEN_LABEL:-custody}
mkdir -p softhsm/tokens
chmod 0700 softhsm/tokens
sed "s#@TOKENDIR@#$root/softhsm/tokens#" softhsm/softhsm2.conf.in > softhsm/softhsm2.conf
export SOFTHSM2_CONF="$root/softhsm/softhsm2.conf"
if [ ! -s softhsm/user.pin ]; then
  (umask 0377; head -c 18 /dev/urandom | base64 | tr -d '/+=\n' > softhsm/user.pin)
fi
chmod 0400 softhsm/user.pin
if softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]+$label[[:space:]]*$"; then
  echo "token \"$label\" already initialised in softhsm/tokens" >&2
else
  bin/custodyd token init --no-backups
fi
