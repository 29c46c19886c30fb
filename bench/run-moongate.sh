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
# Overridable: MOONGATE_CONFIG (default: bench/moongate/s1.lua s2.lua s3.lua, one
# moongate process per config, each listening on its scenario's port 930N) and
# GATEWAY_SCENARIOS (default "S1 S2 S3").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/build/moongate"
CONFIGS="${MOONGATE_CONFIG:-$HERE/moongate/s1.lua $HERE/moongate/s2.lua $HERE/moongate/s3.lua}"

die() { echo "run-moongate.sh: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "moongate binary not found at $BIN -- build it first (this script builds nothing):
    cmake -S '$REPO' -B '$REPO/build' -DCMAKE_BUILD_TYPE=Release && cmake --build '$REPO/build'"
ABS_CONFIGS=()
for c in $CONFIGS; do
    [ -f "$c" ] || die "config not found: $c"
    ABS_CONFIGS+=("$(cd "$(dirname "$c")" && pwd)/$(basename "$c")")   # absolute: the hook runs with cwd=RUN_DIR
done

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
export GATEWAY_SCENARIOS="${GATEWAY_SCENARIOS:-S1 S2 S3}"
# Hook contract: foreground, one worker, stopped by SIGTERM to its process group.
# moongate listens on one address per process, so each scenario gets its own
# process (one worker each); they share the hook's process group and CPU
# accounting, and an idle one costs nothing measurable.
GATEWAY_CMD=""
n=${#ABS_CONFIGS[@]}
for ((i = 0; i < n - 1; i++)); do
    GATEWAY_CMD+="$(printf '%q' "$BIN") $(printf '%q' "${ABS_CONFIGS[$i]}") & "
done
GATEWAY_CMD+="exec $(printf '%q' "$BIN") $(printf '%q' "${ABS_CONFIGS[$((n - 1))]}")"
export GATEWAY_CMD
exec "$HERE/run-anchors.sh"
