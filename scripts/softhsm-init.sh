#!/usr/bin/env bash
# Prepares the first-run SoftHSM token under softhsm/ (idempotent):
#   softhsm/softhsm2.conf      from softhsm/softhsm2.conf.in
#   softhsm/tokens/            the token store (gitignored)
#   softhsm/so.pin, user.pin   random PINs, mode 0400, never printed
#   token "custody"            initialised through custodyd (PINs read from the files)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
label=${CUSTODY_TOKEN_LABEL:-custody}
mkdir -p softhsm/tokens
chmod 0700 softhsm/tokens
sed "s#@TOKENDIR@#$root/softhsm/tokens#" softhsm/softhsm2.conf.in > softhsm/softhsm2.conf
export SOFTHSM2_CONF="$root/softhsm/softhsm2.conf"
for f in so user; do
  if [ ! -s "softhsm/$f.pin" ]; then
    (umask 0377; head -c 18 /dev/urandom | base64 | tr -d '/+=\n' > "softhsm/$f.pin")
  fi
  chmod 0400 "softhsm/$f.pin"
done
if softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]+$label[[:space:]]*$"; then
  echo "token \"$label\" already initialised in softhsm/tokens" >&2
else
  bin/custodyd token init --so-pin-file softhsm/so.pin
fi
