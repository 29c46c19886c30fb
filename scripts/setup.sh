#!/bin/sh
# Sets up a Debian 12 machine for moongate and builds it.
#   scripts/setup.sh              install what is missing, build build/moongate
#   scripts/setup.sh --test       also the test tools
#   scripts/setup.sh --sanitize   build the ASan+UBSan variant in build-asan/
#   scripts/setup.sh --demo       also what the AI proxy demo needs (scripts/aiproxy-demo.sh):
#                                 PostgreSQL 15, Redis, curl
# Idempotent and quiet when everything is already there. Needs root for apt.
set -eu
cd "$(dirname "$0")/.."

want_test=0
want_demo=0
build_dir=build
cmake_args="-DCMAKE_BUILD_TYPE=RelWithDebInfo"
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --demo) want_demo=1 ;;
    --sanitize) want_test=1; build_dir=build-asan; cmake_args="-DCMAKE_BUILD_TYPE=Debug -DMG_SANITIZE=ON" ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

# Build and runtime dependencies (see README "Dependencies").
pkgs="build-essential cmake pkg-config libuv1-dev libcurl4-openssl-dev libpq-dev
      libhiredis-dev libluajit2-5.1-dev lua-cjson lua-cjson-dev node-llhttp"
if [ "$want_test" = 1 ]; then
  pkgs="$pkgs libcmocka-dev python3 python3-pytest python3-pytest-timeout python3-requests curl
        redis-server openssl postgresql-15 postgresql-client-15"
fi

if [ "$want_demo" = 1 ]; then
  pkgs="$pkgs postgresql-15 postgresql-client-15 redis-server curl"
fi

missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  if [ "$(id -u)" != 0 ]; then echo "setup: run as root to install packages" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 update -qq
  # shellcheck disable=SC2086
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends $missing >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
# shellcheck disable=SC2086
cmake -S . -B "$build_dir" $cmake_args >/dev/null
cmake --build "$build_dir" -j "$jobs" >/dev/null
echo "setup: built $build_dir/moongate"
