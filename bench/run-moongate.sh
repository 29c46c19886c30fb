#!/usr/bin/env bash
# run-moongate.sh -- benchmark moongate against the anchors (nginx-lua, haproxy-lua)
# through run-anchors.sh's GATEWAY HOOK, scenario S1 (lua-hello on 127.0.0.1:9301).
#
# Builds nothing: expects the binary at <repo>/build/moongate, e.g.
#     cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build
# Installs the bench's Debian packages only if dpkg says one is missing.
# Every other environment variable passes through to run-anchors.sh
# (DURATION WARMUP CONNS THREADS REPS SKIP_MEMORY RUN_DIR ...; see its header).
#   bench/run-moongate.sh                          # full run, about 4 min
#   DURATION=5s REPS=1 SKIP_MEMORY=1 bench/run-moongate.sh   # quick look
# Overridable: MOONGATE_CONFIG (default bench/moongate/s1.lua) and
# GATEWAY_SCENARIOS (default S1; the config must then serve 9302/9303 as well).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/build/moongate"
CONFIG="${MOONGATE_CONFIG:-$HERE/moongate/s1.lua}"

die() { echo "run-moongate.sh: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "moongate binary not found at $BIN -- build it first (this script builds nothing):
    cmake -S '$REPO' -B '$REPO/build' -DCMAKE_BUILD_TYPE=Release && cmake --build '$REPO/build'"
[ -f "$CONFIG" ] || die "config not found: $CONFIG"
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"   # absolute: the hook runs with cwd=RUN_DIR

PKGS=(nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache haproxy wrk curl)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "run-moongate.sh: missing packages: ${missing[*]}; installing" >&2
    SUDO=(); [ "$(id -u)" = 0 ] || SUDO=(sudo)
    apt_install() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y "${PKGS[@]}"; }
    apt_install || { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=120 update && apt_install; } \
        || die "could not install: ${PKGS[*]}"
fi

export GATEWAY_NAME=moongate
export GATEWAY_SCENARIOS="${GATEWAY_SCENARIOS:-S1}"
# Hook contract: foreground, one worker, stopped by SIGTERM to its process group.
GATEWAY_CMD="exec $(printf '%q' "$BIN") $(printf '%q' "$CONFIG")"
export GATEWAY_CMD
exec "$HERE/run-anchors.sh"
