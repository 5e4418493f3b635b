#!/usr/bin/env bash
# Installs what custody needs, only when missing:
#  - softhsm2 from Debian's archive (the PKCS#11 token for tests and the first run);
#  - a HashiCorp Vault server built from the Go module proxy (court-order tests and the
#    first run; no Vault package is reachable here): scripts/vault.sh build, cached outside
#    the repository, so only the first run on a machine pays for it (~15 min on 2 cores);
#  - with the argument "test": chromium from Debian's archive, which the tests use to
#    render the access-log HTML report headless, and postgresql, whose binaries the
#    store tests run as a private server (no service is started), and zbar-tools, whose
#    zbarimg reads the enrollment QR code of custodyctl mfa enroll back in its test;
#  - with the argument "softhsm": softhsm2 only (the first run builds Vault in the
#    background, scripts/vault-dev.sh up).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

packages=()
{ [ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null; } || packages+=(softhsm2)
if [ "${1:-}" = test ] && ! command -v chromium >/dev/null; then
  packages+=(chromium)
fi
# PostgreSQL for the store tests (internal/store/pgtest starts a private server; make run
# does not need it). Debian's package would start a cluster of its own on install: the
# policy-rc.d below keeps it from starting any service.
if [ "${1:-}" = test ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  packages+=(postgresql)
fi
if [ "${1:-}" = test ] && ! command -v zbarimg >/dev/null; then
  packages+=(zbar-tools)
fi
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${packages[*]}; run as root or: sudo apt-get install ${packages[*]}" >&2
    exit 1
  fi
  echo "installing ${packages[*]} from the Debian archive…" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq "${packages[@]}" >/dev/null
fi

[ "${1:-}" = softhsm ] || "$here/vault.sh" build >/dev/null
