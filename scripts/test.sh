#!/usr/bin/env bash
# The tests, complete on a fresh machine: system packages (scripts/setup.sh), one release
# build with the tests, then every suite. Extra arguments go to `swift test`
# (e.g. `bash scripts/test.sh --filter CLITests`).
# Real-model tests read ../shared (or $LMKIT_SHARED); without it they print SKIPPED,
# and under CI=true its absence fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release --build-tests
swift test -c release --skip-build "$@"
