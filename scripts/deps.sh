#!/usr/bin/env bash
# Installs what custody needs, only when missing:
#  - softhsm2 from Debian's archive (the PKCS#11 token for tests and the first run);
#  - a HashiCorp Vault server built from the Go module proxy (court-order tests and the
#    first run; no Vault package is reachable here): scripts/vault.sh build, cached outside
#    the repository, so only the first run on a machine pays for it (~15 min on 2 cores).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! { [ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null; }; then
  if [ "$(id -u)" != 0 ]; then
    echo "softhsm2 is missing; run as root or: sudo apt-get install softhsm2" >&2
    exit 1
  fi
  echo "installing softhsm2 from the Debian archive…" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq softhsm2 >/dev/null
fi

"$here/vault.sh" build >/dev/null
