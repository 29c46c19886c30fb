#!/usr/bin/env bash
# run-anchors.sh -- side-by-side HTTP gateway anchor benchmark (127.0.0.1 only).
#
# Starts, every one pinned to SERVER_CPU (default 1) with ONE worker/thread:
#   upstream     nginx, 127.0.0.1:9001, return 200 '{"ok":true}'   conf/upstream-nginx.conf
#   nginx-lua    nginx + lua-nginx-module, ports 9101/9102/9103    conf/nginx-gateway.conf
#   haproxy-lua  HAProxy 2.6 + Lua 5.3,    ports 9201/9202/9203    conf/haproxy.cfg
#   [gateway]    optional: $GATEWAY_CMD,   ports 9301/9302/9303    (GATEWAY HOOK below)
# then
#   1. checks every route answers as specified (curl),
#   2. measures idle memory: RSS of each peer's process tree before/after
#      IDLE_CONNS (1000) idle keep-alive connections (tools/idle_conns.py),
#   3. runs wrk pinned to CLIENT_CPU (default 0), -t1 -c50, a warm-up run then
#      REPS interleaved measured --latency runs, for S0 limit / S1 lua-hello /
#      S2 proxy / S3 policy-proxy, with per-core and per-process CPU accounting,
#   4. prints a markdown report (also written to $RUN_DIR/results.md) and
#      stops everything it started, by PID.
#
# Scenarios (port = peer base + scenario number):
#   S0 limit         wrk -> upstream :9001 directly (no proxy)
#   S1 lua-hello     GET /  answered by the peer's Lua: 200 application/json {"hello":"world"}
#   S2 proxy         reverse proxy to 127.0.0.1:9001 with keep-alive upstream connections
#   S3 policy-proxy  Lua: Authorization: Bearer <key> in a 1000-key table (401 JSON
#                    otherwise), per-key fixed-window counter (limit never hit),
#                    X-Request-ID added upstream; then the S2 proxy
#
# Knobs (environment):
#   DURATION=10s WARMUP=5s CONNS=50 THREADS=1   wrk parameters
#   SERVER_CPU=1 CLIENT_CPU=0                   taskset cores (servers / wrk)
#   IDLE_CONNS=1000                             idle keep-alive connections per peer
#   REPS=3                                      interleaved repetitions of every cell
#   QUIET_MAX=10 QUIET_TIMEOUT=60 FOREIGN_MAX=5 RETRIES=2   shared-machine guards (see load section)
#   SKIP_MEMORY=1                               skip the idle-memory phase
#   RUN_DIR=/tmp/gwbench-<stamp>                scratch dir (configs copied, logs, raw wrk output)
#   GATEWAY_CMD / GATEWAY_NAME / GATEWAY_SCENARIOS / GATEWAY_READY_TIMEOUT  (see below)
#
# ----------------------------------------------------------------------------
# GATEWAY HOOK -- slot for the project's own gateway binary as a fourth peer.
#   Unset GATEWAY_CMD (the default): the slot is skipped entirely.
#   GATEWAY_CMD  shell command that starts the gateway in the FOREGROUND (no
#                daemonizing; prefer `exec ...` so the process tree is just the
#                gateway).  It is run as
#                    setsid taskset -c $SERVER_CPU bash -c "$GATEWAY_CMD"
#                with cwd=$RUN_DIR and stopped with SIGTERM to its process
#                group (SIGKILL after 5 s).  It must run ONE worker
#                process/thread (BENCH_WORKERS=1 is exported for it).
#   GATEWAY_NAME label in the tables (default: gateway)
#   GATEWAY_SCENARIOS subset to run, default "S1 S2 S3" (e.g. "S2" early on);
#                the memory probe uses the highest listed scenario's port.
#   GATEWAY_READY_TIMEOUT seconds to wait for its ports (default 30)
#   Routes it must expose (all on 127.0.0.1, HTTP/1.1 keep-alive, idle
#   keep-alive timeout >= 300 s, no per-connection request cap < 1e6):
#     :9301 S1  GET /  -> 200, Content-Type: application/json,
#                         body {"hello":"world"} (trailing \n allowed), produced
#                         by the gateway's own scripting/handler layer
#     :9302 S2  any path -> reverse proxy to http://$BENCH_UPSTREAM (same path),
#                         reusing keep-alive upstream connections
#     :9303 S3  Authorization: Bearer <key>, key one of the lines of
#                         $BENCH_KEYS_FILE (1000 keys); missing, malformed or
#                         unknown -> 401, Content-Type: application/json, JSON
#                         body; per-key fixed-window counter, limit
#                         $BENCH_RATE_LIMIT per $BENCH_RATE_WINDOW_S s, over
#                         it -> 429 JSON; add a unique X-Request-ID header to
#                         the upstream request; then proxy exactly like :9302.
#                         (Checked via GET /echo-request-id, which the upstream
#                         answers with {"x_request_id":"<value it received>"}.)
#   Exported to it: BENCH_UPSTREAM=127.0.0.1:9001 BENCH_KEYS_FILE BENCH_RATE_LIMIT
#     BENCH_RATE_WINDOW_S BENCH_WORKERS=1 BENCH_PORT_S1/S2/S3 BENCH_RUN_DIR
#   Example: GATEWAY_CMD='exec /path/to/gw --config /path/to/bench.toml' \
#            GATEWAY_NAME=ourgw bench/run-anchors.sh
#   Working A/A example (the nginx peer's own config, served on 930x):
#            GATEWAY_NAME=aa-nginx GATEWAY_CMD="exec $PWD/bench/tools/aa-gateway.sh" bench/run-anchors.sh
#   moongate (this repo): bench/run-moongate.sh fills the slot with
#            <repo>/build/moongate <repo>/bench/moongate/s1.lua (S1 only).
# ----------------------------------------------------------------------------
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-5s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
SERVER_CPU="${SERVER_CPU:-1}"
CLIENT_CPU="${CLIENT_CPU:-0}"
IDLE_CONNS="${IDLE_CONNS:-1000}"
SKIP_MEMORY="${SKIP_MEMORY:-0}"
RUN_DIR="${RUN_DIR:-/tmp/gwbench-$(date +%Y%m%d-%H%M%S)-$$}"
GATEWAY_CMD="${GATEWAY_CMD:-}"
GATEWAY_NAME="${GATEWAY_NAME:-gateway}"
GATEWAY_SCENARIOS="${GATEWAY_SCENARIOS:-S1 S2 S3}"
GATEWAY_READY_TIMEOUT="${GATEWAY_READY_TIMEOUT:-30}"
PY="${PYTHON:-/usr/bin/python3}"; [ -x "$PY" ] || PY=python3   # stdlib only
HOST=127.0.0.1            # the only address this script ever sends traffic to
UPSTREAM_PORT=9001
RATE_LIMIT=1000000000
RATE_WINDOW_S=60

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

for bin in nginx haproxy wrk curl taskset setsid ss; do
    command -v "$bin" >/dev/null || die "missing $bin (apt-get install nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache haproxy wrk curl)"
done
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || die "libnginx-mod-http-lua not installed"

# --- peers: name, base port (scenario port = base*10 + n), root pid -------------
PEER_NAMES=(nginx-lua haproxy-lua)
declare -A PEER_BASE=([nginx-lua]=910 [haproxy-lua]=920)
declare -A PEER_SCEN=([nginx-lua]="S1 S2 S3" [haproxy-lua]="S1 S2 S3")
if [ -n "$GATEWAY_CMD" ]; then
    [[ "$GATEWAY_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "GATEWAY_NAME must be [A-Za-z0-9._-]+"
    PEER_NAMES+=("$GATEWAY_NAME")
    PEER_BASE[$GATEWAY_NAME]=930
    PEER_SCEN[$GATEWAY_NAME]="$GATEWAY_SCENARIOS"
fi
declare -A PID=()           # name -> root pid we started
STARTED=()                  # names, in start order
declare -A GROUP_KILL=()    # name -> 1 if we kill its whole process group

ALL_PORTS=("$UPSTREAM_PORT")
for p in "${PEER_NAMES[@]}"; do for n in 1 2 3; do ALL_PORTS+=("${PEER_BASE[$p]}$n"); done; done

# --- cleanup: stop only what we started, by PID ---------------------------------
cleanup() {
    local rc=$? i name pid t
    trap - EXIT INT TERM
    for ((i=${#STARTED[@]}-1; i>=0; i--)); do
        name=${STARTED[$i]}; pid=${PID[$name]}
        kill -0 "$pid" 2>/dev/null || continue
        if [ "${GROUP_KILL[$name]:-0}" = 1 ]; then kill -TERM -- "-$pid" 2>/dev/null || true
        else kill -TERM "$pid" 2>/dev/null || true; fi
        for t in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
            if [ "${GROUP_KILL[$name]:-0}" = 1 ]; then kill -KILL -- "-$pid" 2>/dev/null || true
            else kill -KILL "$pid" 2>/dev/null || true; fi
        fi
        wait "$pid" 2>/dev/null || true
        log "stopped $name (pid $pid)"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- preflight ------------------------------------------------------------------
for port in "${ALL_PORTS[@]}"; do
    if [ -n "$(ss -Htln "sport = :$port")" ]; then
        die "port $port already has a listener; not touching it -- free it first"
    fi
done
mkdir -p "$RUN_DIR"/{logs,tmp,raw}
cp -r "$HERE/conf" "$RUN_DIR/conf"
cd "$RUN_DIR"
KEY=$(sed -n 500p conf/keys.txt)   # the (valid) key wrk sends in S3
log "run dir: $RUN_DIR"

# --- start ------------------------------------------------------------------------
start() {   # start NAME CMD... (background, pinned to SERVER_CPU)
    local name=$1; shift
    taskset -c "$SERVER_CPU" "$@" >"logs/$name.out" 2>&1 &
    PID[$name]=$!; STARTED+=("$name")
    log "started $name pid ${PID[$name]}: $*"
}
wait_listen() {   # wait_listen NAME PORT TIMEOUT_S
    local name=$1 port=$2 t
    for t in $(seq $(( $3 * 10 ))); do
        kill -0 "${PID[$name]}" 2>/dev/null || { cat "logs/$name.out" >&2; die "$name exited during start-up"; }
        [ -n "$(ss -Htln "sport = :$port")" ] && return 0
        sleep 0.1
    done
    cat "logs/$name.out" >&2; die "$name is not listening on $port after $3 s"
}

start upstream nginx -p "$RUN_DIR/" -c "$RUN_DIR/conf/upstream-nginx.conf" -g 'daemon off;'
start nginx-lua nginx -p "$RUN_DIR/" -c "$RUN_DIR/conf/nginx-gateway.conf" -g 'daemon off;'
start haproxy-lua haproxy -f conf/haproxy.cfg -db
if [ -n "$GATEWAY_CMD" ]; then
    export BENCH_UPSTREAM="$HOST:$UPSTREAM_PORT" BENCH_KEYS_FILE="$RUN_DIR/conf/keys.txt" \
           BENCH_RATE_LIMIT="$RATE_LIMIT" BENCH_RATE_WINDOW_S="$RATE_WINDOW_S" BENCH_WORKERS=1 \
           BENCH_PORT_S1=9301 BENCH_PORT_S2=9302 BENCH_PORT_S3=9303 BENCH_RUN_DIR="$RUN_DIR"
    setsid taskset -c "$SERVER_CPU" bash -c "$GATEWAY_CMD" >"logs/$GATEWAY_NAME.out" 2>&1 &
    PID[$GATEWAY_NAME]=$!; STARTED+=("$GATEWAY_NAME")
    # setsid execs in place (we are not a group leader), so pid == pgid
    [ "$(ps -o pgid= -p "${PID[$GATEWAY_NAME]}" | tr -d ' ')" = "${PID[$GATEWAY_NAME]}" ] && GROUP_KILL[$GATEWAY_NAME]=1
    log "started $GATEWAY_NAME pid ${PID[$GATEWAY_NAME]}: $GATEWAY_CMD"
fi

wait_listen upstream "$UPSTREAM_PORT" 10
for p in nginx-lua haproxy-lua; do for n in 1 2 3; do wait_listen "$p" "${PEER_BASE[$p]}$n" 10; done; done
if [ -n "$GATEWAY_CMD" ]; then
    for s in $GATEWAY_SCENARIOS; do wait_listen "$GATEWAY_NAME" "930${s#S}" "$GATEWAY_READY_TIMEOUT"; done
fi
sleep 0.5

declare -A PROCINFO=()
for name in "${STARTED[@]}"; do
    PROCINFO[$name]=$("$PY" "$HERE/tools/proctree.py" "${PID[$name]}")
    log "$name: ${PROCINFO[$name]}"
    [[ "${PROCINFO[$name]}" == *" cpus=$SERVER_CPU "* ]] || die "$name is not confined to cpu $SERVER_CPU"
done

# --- functional checks ------------------------------------------------------------
# fetch PORT PATH [AUTH] -> prints "CODE|CONTENT_TYPE|BODY"
fetch() {
    local hdr=() out
    [ -n "${3:-}" ] && hdr=(-H "Authorization: $3")
    out=$(curl -s --max-time 5 -o "tmp/body" -w '%{http_code}|%{content_type}' "${hdr[@]}" "http://$HOST:$1$2") || out="000|"
    printf '%s|%s' "$out" "$(tr -d '\n' <tmp/body 2>/dev/null)"
}
expect() {   # expect LABEL ACTUAL GLOB
    # shellcheck disable=SC2053
    [[ "$2" == $3 ]] || die "check failed: $1: got '$2', want '$3'"
}
check_peer() {   # check_peer NAME
    local name=$1 base=${PEER_BASE[$1]} s id1 id2
    for s in ${PEER_SCEN[$name]}; do
        case $s in
        S1) expect "$name S1" "$(fetch "${base}1" /)" '200|application/json*|{"hello":"world"}' ;;
        S2) expect "$name S2" "$(fetch "${base}2" /)" '200|application/json*|{"ok":true}' ;;
        S3) expect "$name S3 no auth"     "$(fetch "${base}3" /)" '401|application/json*|{*}'
            expect "$name S3 not bearer"  "$(fetch "${base}3" / "Basic $KEY")" '401|application/json*|{*}'
            expect "$name S3 unknown key" "$(fetch "${base}3" / "Bearer gk_nope")" '401|application/json*|{*}'
            expect "$name S3 valid key"   "$(fetch "${base}3" / "Bearer $KEY")" '200|application/json*|{"ok":true}'
            id1=$(fetch "${base}3" /echo-request-id "Bearer $KEY")
            id2=$(fetch "${base}3" /echo-request-id "Bearer $KEY")
            expect "$name S3 x-request-id" "$id1" '200|*|{"x_request_id":"?*"}'
            [ "$id1" != "$id2" ] || die "check failed: $name S3 X-Request-ID not unique ($id1)" ;;
        *) die "unknown scenario '$s' for $name" ;;
        esac
    done
    log "checks passed: $name (${PEER_SCEN[$name]})"
}
expect "upstream S0" "$(fetch "$UPSTREAM_PORT" /)" '200|application/json*|{"ok":true}'
for p in "${PEER_NAMES[@]}"; do check_peer "$p"; done

# --- idle memory (fresh processes, before any load) ---------------------------------
MEM_ROWS=()
if [ "$SKIP_MEMORY" != 1 ]; then
    mem_probe() {   # mem_probe LABEL NAME PORT [KEY]
        local json
        json=$("$PY" "$HERE/tools/idle_conns.py" --port "$3" --pid "${PID[$2]}" --n "$IDLE_CONNS" ${4:+--auth "$4"}) \
            || die "idle-connection probe failed for $1"
        echo "$json" >"raw/memory-$2.json"
        MEM_ROWS+=("$("$PY" -c '
import json, sys
d = json.loads(sys.argv[2])
ok = "yes" if d["non200"] == 0 and d["still_open"] == d["n"] else "NO (%d non-200, %d open)" % (d["non200"], d["still_open"])
print("| %s | %d | %d | %d | %d | %.2f | %.2f | %d | %s |" % (sys.argv[1], d["port"], d["rss_base_kib"],
      d["rss_connected_kib"], d["rss_keepalive_kib"], d["kib_per_conn_connected"],
      d["kib_per_conn_keepalive"], d["rss_closed_kib"], ok))' "$1" "$json")")
        log "memory $1: $(tail -c 400 <<<"$json" | head -c 400)"
    }
    mem_probe "upstream nginx (no Lua, reference)" upstream "$UPSTREAM_PORT"
    for p in "${PEER_NAMES[@]}"; do
        last=$(tr ' ' '\n' <<<"${PEER_SCEN[$p]}" | sort | tail -1)
        port="${PEER_BASE[$p]}${last#S}"
        if [ "$last" = S3 ]; then mem_probe "$p ($last)" "$p" "$port" "$KEY"; else mem_probe "$p ($last)" "$p" "$port"; fi
    done
fi

# --- load ----------------------------------------------------------------------------
# This machine may be shared: other processes (not ours, never touched) can run on
# either core.  So every measured run is bracketed by CPU accounting:
#   foreign% = (user+nice+system ticks on both cores) - (wrk's CPU) - (CPU of every
#              process we started), as % of one core over the run.
# Before each measured run we wait (up to QUIET_TIMEOUT s) for a quiet second
# (< QUIET_MAX % of one core busy in total), and a run whose foreign% exceeds
# FOREIGN_MAX is discarded and repeated, at most RETRIES times; the last attempt
# is reported either way, with its foreign% and attempt count, so nothing is hidden.
QUIET_MAX="${QUIET_MAX:-10}"
QUIET_TIMEOUT="${QUIET_TIMEOUT:-60}"
FOREIGN_MAX="${FOREIGN_MAX:-5}"
RETRIES="${RETRIES:-2}"
HZ=$(getconf CLK_TCK)
cpu_snap() {   # "u0 b0 t0 u1 b1 t1" for CLIENT_CPU, SERVER_CPU; u=user+nice+system, b=u+irq+softirq, t=all (USER_HZ ticks)
    awk -v a="cpu$CLIENT_CPU" -v b="cpu$SERVER_CPU" '
        $1==a {ua=$2+$3+$4; ba=ua+$7+$8; ta=$2+$3+$4+$5+$6+$7+$8+$9}
        $1==b {ub=$2+$3+$4; bb=ub+$7+$8; tb=$2+$3+$4+$5+$6+$7+$8+$9}
        END {print ua, ba, ta, ub, bb, tb}' /proc/stat
}
server_ticks() { "$PY" "$HERE/tools/proctree.py" --ticks "${PID[@]}"; }
# CPU of this shell's finished children (wrk): run `times` in THIS shell (a
# command substitution would be a fresh child with zeroed counters), parse later.
times_ticks() {   # times_ticks FILE -> ticks of line 2 (children user+sys)
    awk -v hz="$HZ" 'NR==2 { t=0; for (i=1;i<=2;i++) { split($i, m, /[ms]/); t += m[1]*60 + m[2] } printf "%d\n", t*hz + 0.5 }' "$1"
}
quiet_gate() {
    local start=$SECONDS a b pct
    while :; do
        a=$(cpu_snap); sleep 1; b=$(cpu_snap)
        pct=$(awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," ");split(b,y," ");
              printf "%d", 100*((y[2]-x[2])+(y[5]-x[5]))/(y[3]-x[3])}')
        [ "$pct" -le "$QUIET_MAX" ] && { [ $((SECONDS-start)) -gt 1 ] && log "quiet after $((SECONDS-start)) s"; return 0; }
        if [ $((SECONDS-start)) -ge "$QUIET_TIMEOUT" ]; then
            log "WARNING: machine not quiet (${pct}% of a core busy) after ${QUIET_TIMEOUT}s; measuring anyway"
            return 0
        fi
    done
}
: >load.tsv
bench() {   # bench REP SCENARIO PEER PORT [AUTH_KEY]  -> appends one line to load.tsv
    local rep=$1 scen=$2 peer=$3 port=$4 key=${5:-} hdr=() tag a b sa sb wa wb parsed row foreign attempt=0
    [ -n "$key" ] && hdr=(-H "Authorization: Bearer $key")
    tag="rep$rep-${scen%% *}-$peer"
    if [ "$rep" = 1 ]; then   # warm-up once per (scenario, peer); later reps find it warm
        quiet_gate
        log "$tag: warm-up $WARMUP on :$port"
        taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "${hdr[@]}" "http://$HOST:$port/" >"raw/$tag.warmup.txt" 2>&1 \
            || die "wrk warm-up failed: $(cat "raw/$tag.warmup.txt")"
    fi
    while :; do
        attempt=$((attempt+1))
        quiet_gate
        sa=$(server_ticks); times >tmp/times.a; a=$(cpu_snap)
        taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "${hdr[@]}" "http://$HOST:$port/" >"raw/$tag.try$attempt.txt" 2>&1 \
            || die "wrk failed: $(cat "raw/$tag.try$attempt.txt")"
        b=$(cpu_snap); times >tmp/times.b; sb=$(server_ticks)
        wa=$(times_ticks tmp/times.a); wb=$(times_ticks tmp/times.b)
        parsed=$("$PY" "$HERE/tools/wrkparse.py" "raw/$tag.try$attempt.txt") || die "cannot parse raw/$tag.try$attempt.txt"
        # wrkparse: rps p50 p99 total non2xx sockerr.  Output: foreign% <TAB> load.tsv line
        row=$(awk -v rep="$rep" -v scen="$scen" -v peer="$peer" -v port="$port" -v hz="$HZ" -v att="$attempt" \
            -v p="$parsed" -v a="$a" -v b="$b" -v srv="$((sb-sa))" -v wrk="$((wb-wa))" 'BEGIN {
                split(p, w, "\t"); split(a, x, " "); split(b, y, " ");
                el = y[3]-x[3];
                c0 = 100 * (y[2]-x[2]) / el; c1 = 100 * (y[5]-x[5]) / (y[6]-x[6]);
                fo = 100 * ((y[1]-x[1]) + (y[4]-x[4]) - srv - wrk) / el; if (fo < 0) fo = 0;
                n = (w[4] > 0) ? w[4] : 1;
                printf "%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%.2f\t%.2f\t%.1f\t%d\n",
                       fo, rep, scen, peer, port, w[1], w[2], w[3], w[4], w[5], w[6], c0, c1,
                       (y[5]-x[5]) / hz * 1e6 / n, srv / hz * 1e6 / n, fo, att }')
        foreign=${row%%$'\t'*}
        row=${row#*$'\t'}
        if awk -v f="$foreign" -v m="$FOREIGN_MAX" 'BEGIN{exit !(f > m)}' && [ "$attempt" -le "$RETRIES" ]; then
            log "$tag: foreign CPU ${foreign}% of a core > ${FOREIGN_MAX}%: discarding attempt $attempt ($(cut -f5-7 <<<"$row" | tr '\t' ' '))"
            continue
        fi
        break
    done
    cp "raw/$tag.try$attempt.txt" "raw/$tag.txt"
    printf '%s\n' "$row" >>load.tsv
    log "$tag: $(awk -F'\t' '{printf "%s req/s  p50 %s ms  p99 %s ms  errors %d  cpu0 %s%% cpu1 %s%%  server %s us/req  foreign %s%%  tries %s",
        $5, $6, $7, $9+$10, $11, $12, $14, $15, $16}' <<<"$row")"
}
# Interleaved: every repetition runs every (scenario, peer) cell once, and the
# peers' order inside a scenario rotates from one repetition to the next, so a
# slow stretch of the (shared, virtualised) machine hits all peers alike.
REPS="${REPS:-3}"
for rep in $(seq "$REPS"); do
    bench "$rep" "S0 limit" upstream "$UPSTREAM_PORT"
    for s in S1 S2 S3; do
        n=${#PEER_NAMES[@]}
        for ((i=0; i<n; i++)); do
            p=${PEER_NAMES[$(( (i + rep - 1) % n ))]}
            [[ " ${PEER_SCEN[$p]} " == *" $s "* ]] || continue
            case $s in
            S1) bench "$rep" "S1 lua-hello" "$p" "${PEER_BASE[$p]}1" ;;
            S2) bench "$rep" "S2 proxy" "$p" "${PEER_BASE[$p]}2" ;;
            S3) bench "$rep" "S3 policy-proxy" "$p" "${PEER_BASE[$p]}3" "$KEY" ;;
            esac
        done
    done
done

# --- report ---------------------------------------------------------------------------
{
    echo "## Gateway anchors -- $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    echo "- nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), lua-nginx-module $(dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null), LuaJIT $(dpkg-query -W -f='${Version}' libluajit2-5.1-2 2>/dev/null || echo '?'), lua-resty-core $(dpkg-query -W -f='${Version}' lua-resty-core 2>/dev/null)"
    echo "- $(haproxy -v 2>&1 | head -1 | sed 's/ - https.*//'), $(haproxy -vv 2>&1 | grep -m1 'Built with Lua' | sed 's/Built with //')"
    echo "- $( (wrk -v 2>&1 || true) | head -1 | sed 's/ Copyright.*//'); wrk -t$THREADS -c$CONNS -d$DURATION --latency on cpu $CLIENT_CPU after a $WARMUP warm-up; servers on cpu $SERVER_CPU"
    for name in "${STARTED[@]}"; do echo "- $name: ${PROCINFO[$name]} (at start)"; done
    echo "- raw output: $RUN_DIR/raw"
    echo
    echo "Summary over $REPS interleaved repetitions (median, min–max):"
    echo
    "$PY" "$HERE/tools/summarize.py" load.tsv summary
    echo
    echo "- errors: non-2xx responses + socket errors, summed over repetitions."
    echo "- cpu$SERVER_CPU busy: share of the server core busy (user+sys+irq+softirq) during the run; < 100% means the server core idled."
    echo "- server µs/req: user+sys CPU of every process this script started (peer + upstream) / requests. In S2/S3 it"
    echo "  includes the upstream's share (the upstream runs on cpu $SERVER_CPU too); subtract S0's value for the proxy alone."
    echo "- foreign: CPU used by processes NOT started here, % of one core, during a measured run (runs above"
    echo "  ${FOREIGN_MAX}% were repeated, at most ${RETRIES} times; the last attempt is kept either way)."
    echo
    echo "All repetitions:"
    echo
    "$PY" "$HERE/tools/summarize.py" load.tsv all
    if [ "${#MEM_ROWS[@]}" -gt 0 ]; then
        echo
        echo "Idle memory: RSS (KiB) of the peer's whole process tree, fresh process after a 200-request warm-up;"
        echo "$IDLE_CONNS connections opened, then one keep-alive request on each, then all closed."
        echo
        echo "| peer (port probed) | port | RSS idle | +$IDLE_CONNS conns, no request | +$IDLE_CONNS keep-alive conns | KiB/conn (no request) | KiB/conn (keep-alive) | RSS after close | all $IDLE_CONNS OK |"
        echo "|---|---|--:|--:|--:|--:|--:|--:|---|"
        printf '%s\n' "${MEM_ROWS[@]}"
    fi
} | tee results.md
log "report saved to $RUN_DIR/results.md"
