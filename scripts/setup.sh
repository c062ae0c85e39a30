#!/usr/bin/env bash
# Installs the system packages lmkit's commands need, or says exactly how to.
#
#   bash scripts/setup.sh            install what is missing (as root, or through `sudo -n`)
#   bash scripts/setup.sh --check    list what is missing; install nothing (exit 0 none, 2 some)
#
# Idempotent and fast when everything is present: no `apt-get update` then. Never prompts:
# without root or password-less sudo it prints the one `apt-get install …` line to run and
# exits 2. Used by scripts/demo.sh, scripts/test.sh and .ci/run, so CI takes the user's path.
#
# Test hooks (they never touch the system):
#   LMKIT_SETUP_INSTALLED=FILE   the installed packages, one per line, instead of asking dpkg
#   LMKIT_SETUP_PACKAGES="a b"   the required packages, instead of the list below
set -euo pipefail

# What the project's commands need. Add a package here when an issue brings a new need.
#   libopenblas-dev  sgemm for prefill, LAPACK (Cholesky) for calibrated quantization
#   libjson-c-dev    JSON reading (safetensors headers, config.json, tokenizer.json, gates)
#   zlib1g-dev       zlib's CRC32 (Debian's libz-dev is a virtual name for it)
#   libopenmpi-dev   MPI for multi-process tensor parallelism (the CMPI target; mpi.h, libmpi)
#   openmpi-bin      mpirun, to run one rank per process
#   pkg-config       SwiftPM finds the libraries through it
PACKAGES=${LMKIT_SETUP_PACKAGES:-"libopenblas-dev libjson-c-dev zlib1g-dev libopenmpi-dev openmpi-bin pkg-config"}

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup.sh: unknown option '$1' (use --check, or no option)" >&2; exit 64 ;;
esac

installed() {  # installed PACKAGE → exit 0 when installed
  if [ -n "${LMKIT_SETUP_INSTALLED:-}" ]; then
    grep -qxF "$1" "$LMKIT_SETUP_INSTALLED"
  elif command -v dpkg-query >/dev/null 2>&1; then
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
  else
    return 1
  fi
}

if [ -z "${LMKIT_SETUP_INSTALLED:-}" ] && ! command -v dpkg-query >/dev/null 2>&1; then
  # Not Debian: check the libraries themselves and say what they are on Debian.
  if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openblas json-c zlib ompi-c; then
    echo "setup: not a Debian system; openblas, json-c, zlib and Open MPI found through pkg-config"
    exit 0
  fi
  echo "setup: not a Debian system; install the equivalents of: $PACKAGES (pkg-config must find openblas, json-c, zlib, ompi-c)" >&2
  exit 2
fi

missing=()
for p in $PACKAGES; do installed "$p" || missing+=("$p"); done

if ! command -v swift >/dev/null 2>&1; then
  echo "setup: no 'swift' on PATH: install a Swift 6 toolchain (swift.org) first" >&2
  exit 2
fi

if [ ${#missing[@]} -eq 0 ]; then
  [ $check_only = 1 ] && echo "setup: all present: $PACKAGES"
  exit 0
fi

line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ $check_only = 1 ]; then
  echo "setup: missing: ${missing[*]}"
  echo "setup: to install: $line"
  exit 2
fi

if [ -n "${LMKIT_SETUP_INSTALLED:-}" ]; then
  echo "setup: would install: ${missing[*]} (LMKIT_SETUP_INSTALLED is set: not touching the system)"
  exit 2
fi

if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "setup: missing system packages: ${missing[*]}. Run this, then the same command again:" >&2
  echo "  sudo $line" >&2
  exit 2
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq </dev/null
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
for p in "${missing[@]}"; do
  installed "$p" || { echo "setup: '$p' is still not installed after apt-get" >&2; exit 1; }
done
echo "setup: installed ${missing[*]}"
