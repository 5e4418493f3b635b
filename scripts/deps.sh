#!/usr/bin/env bash
# Installs what custody needs from Debian's archive, only when missing:
# softhsm2 (the PKCS#11 token for tests and the first run).
set -euo pipefail
if [ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "softhsm2 is missing; run as root or: sudo apt-get install softhsm2" >&2
  exit 1
fi
echo "installing softhsm2 from the Debian archive…" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq softhsm2 >/dev/null
