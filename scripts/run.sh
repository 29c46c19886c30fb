#!/bin/sh
# Sets everything up, then runs in the foreground:
#   scripts/run.sh [demo options]               the AI proxy demo (scripts/aiproxy-demo.sh):
#                                               PostgreSQL, Redis, the mock provider, the proxy on :8080
#   scripts/run.sh CONFIG.lua [moongate options]  any config, e.g. examples/hello/gateway.lua
set -eu
cd "$(dirname "$0")/.."
case "${1:-}" in
  ""|-*)
    scripts/setup.sh --demo
    exec scripts/aiproxy-demo.sh "$@" ;;
esac
scripts/setup.sh
config=$1
shift
exec build/moongate "$@" "$config"
