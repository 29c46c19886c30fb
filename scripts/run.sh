#!/bin/sh
# Sets everything up, then runs the gateway in the foreground:
#   scripts/run.sh [CONFIG.lua] [moongate options...]
# Default: the hello example on :8080.
set -eu
cd "$(dirname "$0")/.."
scripts/setup.sh
config=${1:-examples/hello/gateway.lua}
[ $# -gt 0 ] && shift
exec build/moongate "$@" "$config"
