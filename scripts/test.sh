#!/bin/sh
# Sets everything up and runs the whole test suite through ctest:
#   scripts/test.sh              normal build (build/)
#   scripts/test.sh --sanitize   the same suite under ASan+UBSan (build-asan/)
set -eu
cd "$(dirname "$0")/.."
dir=build
if [ "${1:-}" = "--sanitize" ]; then
  scripts/setup.sh --sanitize
  dir=build-asan
else
  scripts/setup.sh --test
fi
cd "$dir"
ctest --output-on-failure --timeout 900
