#!/usr/bin/env bash
# run-relay.sh -- the AI proxy relay benchmark (issue 6), 127.0.0.1 only.
#
# Starts, every one pinned to SERVER_CPU (default 1):
#   postgres      a throwaway PostgreSQL 15 (initdb in RUN_DIR, fsync off)   :PG_PORT
#   redis         redis-server, no persistence                               :REDIS_PORT
#   mock          examples/mock-openai (one worker)                          :MOCK_PORT
#   relay         build/moongate --workers 1 examples/aiproxy/gateway.lua    :RELAY_PORT
#                 with AIPROXY_ACCESS_LOG=off (RELAY_ACCESS_LOG): nginx S3 runs with
#                 access_log off, and the relay's per-request record is its log row
#                 in PostgreSQL, which the run checks
#   upstream      nginx, bench/conf/upstream-nginx.conf (run-anchors' S0)    :UPSTREAM_PORT
#   nginx-s3      nginx + lua-nginx-module, bench/conf/nginx-gateway.conf    :NGINX_BASE+2 (S3)
# creates through the admin API a group, a token, a channel to the mock and a
# model config for gpt-4o-mini with rpm 1e9 (every request counted in Redis, in
# leases: one script call per up to 65 requests; never rejects), checks every
# route once by curl, then
#   1. load: wrk -t1 -c50 --latency on CLIENT_CPU (default 0), the same POST
#      (bench/relay/chat.lua: {"model":"gpt-4o-mini","messages":[...]} with
#      Authorization: Bearer <key>) against
#        relay        moongate AI proxy -> mock           (the subject)
#        nginx-s3     nginx S3 policy-proxy -> upstream   (the anchor)
#        mock         the mock alone                       (reference)
#        upstream     the upstream nginx alone (S0)        (reference)
#      a warm-up per cell, then REPS interleaved repetitions with the cells'
#      order rotated; CPU of each process tree from /proc/<pid>/stat;
#      run-anchors.sh's shared-machine guards (quiet second, foreign CPU);
#      and the TCP connections opened during each run (the gateway's new
#      upstream connections: /proc/net/snmp ActiveOpens minus wrk's);
#   2. checks that no answer was non-2xx, that PostgreSQL holds one log row per
#      relayed request (after the batch flush), and that Redis ran the RPM
#      script at least once per 65 relayed requests (a request and a lease);
#   3. SSE: bench/relay/sse_latency.py measures the latency the relay adds per
#      streamed chunk (mock chunks=SSE_CHUNKS, delay_ms=SSE_DELAY_MS);
#   4. prints a markdown report (also $RUN_DIR/results.md) and stops
#      everything it started, by PID (trap, also on failure).
#
# Knobs (environment):
#   DURATION=10s WARMUP=5s CONNS=50 THREADS=1 REPS=3   wrk parameters
#   SERVER_CPU=1 CLIENT_CPU=0                          taskset cores
#   QUIET_MAX=10 QUIET_TIMEOUT=60 FOREIGN_MAX=5 RETRIES=2   shared-machine guards
#   CELLS="relay nginx-s3 mock upstream"               which cells to load
#   PG_NICE=-10     autogroup nice of the PostgreSQL processes (empty: leave it; see pg_share)
#   SSE_STREAMS=10 SSE_CHUNKS=200 SSE_DELAY_MS=5 SSE_WARMUP=3  (SKIP_SSE=1 skips it)
#   RUN_DIR=/tmp/relaybench-<stamp>-<pid>              scratch dir (absolute)
#   RELAY_PORT=9501 MOCK_PORT=9502 TAP_PORT=9503 PG_PORT=9504 REDIS_PORT=9505
#   UPSTREAM_PORT=9506 NGINX_BASE=9507 (nginx S1/S2/S3 on 9507/9508/9509)
#   MOONGATE_BIN=<repo>/build/moongate  RELAY_CONFIG=<repo>/examples/aiproxy/gateway.lua
#   RELAY_ACCESS_LOG=off   on: the relay also writes its access log (logs/relay.out)
#   RELAY_B_BIN / RELAY_B_CONFIG / RELAY_B_PORT=9510   a second relay, cell "relay-b": another
#                          moongate binary (with its own lua/) and/or config, on the same
#                          PostgreSQL, Redis and mock; CELLS then defaults to "relay relay-b"
#                          and the report gives relay − relay-b per repetition (same-run
#                          pairs: the way to measure one change to the relay natively)
# Needs: build/moongate (builds nothing), nginx + libnginx-mod-http-lua,
# wrk, curl, postgresql-15, redis-server, /usr/bin/python3. As root,
# PostgreSQL runs as the postgres user (initdb refuses root).
#   DURATION=3s REPS=1 bench/run-relay.sh      # quick look, about 1 min
#   bench/run-relay.sh                          # full run, about 4 min
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="${MOONGATE_BIN:-$REPO/build/moongate}"
RELAY_CONFIG="${RELAY_CONFIG:-$REPO/examples/aiproxy/gateway.lua}"
DURATION="${DURATION:-10s}"
PG_NICE="${PG_NICE--10}"
WARMUP="${WARMUP:-5s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
REPS="${REPS:-3}"
SERVER_CPU="${SERVER_CPU:-1}"
CLIENT_CPU="${CLIENT_CPU:-0}"
QUIET_MAX="${QUIET_MAX:-10}"
QUIET_TIMEOUT="${QUIET_TIMEOUT:-60}"
FOREIGN_MAX="${FOREIGN_MAX:-5}"
RETRIES="${RETRIES:-2}"
CELLS_SET="${CELLS:+1}"
CELLS="${CELLS:-relay nginx-s3 mock upstream}"
SKIP_SSE="${SKIP_SSE:-0}"
RELAY_ACCESS_LOG="${RELAY_ACCESS_LOG:-off}"
RELAY_B_PORT="${RELAY_B_PORT:-9510}"
RELAY_B=0
if [ -n "${RELAY_B_BIN:-}${RELAY_B_CONFIG:-}" ]; then
    RELAY_B=1
    RELAY_B_BIN="${RELAY_B_BIN:-$BIN}"
    RELAY_B_CONFIG="${RELAY_B_CONFIG:-$RELAY_CONFIG}"
    [ -n "$CELLS_SET" ] || CELLS="relay relay-b"
fi
SSE_STREAMS="${SSE_STREAMS:-10}"
SSE_CHUNKS="${SSE_CHUNKS:-200}"
SSE_DELAY_MS="${SSE_DELAY_MS:-5}"
SSE_WARMUP="${SSE_WARMUP:-3}"
RELAY_PORT="${RELAY_PORT:-9501}"
MOCK_PORT="${MOCK_PORT:-9502}"
TAP_PORT="${TAP_PORT:-9503}"
PG_PORT="${PG_PORT:-9504}"
REDIS_PORT="${REDIS_PORT:-9505}"
# The anchors' nginx configs are used as they are, with their ports moved (in the
# copies in RUN_DIR) so that a run-anchors.sh running at the same time does not clash:
# upstream 9001 -> UPSTREAM_PORT, nginx S1/S2/S3 9101/9102/9103 -> NGINX_BASE+0/1/2.
UPSTREAM_PORT="${UPSTREAM_PORT:-9506}"
NGINX_BASE="${NGINX_BASE:-9507}"
NGINX_S3_PORT=$((NGINX_BASE + 2))
RUN_DIR="${RUN_DIR:-/tmp/relaybench-$(date +%Y%m%d-%H%M%S)-$$}"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3   # standard library only
HOST=127.0.0.1
ADMIN_KEY=relay-bench-admin
MODEL=gpt-4o-mini
SSE_MODEL=gpt-4o-mini-sse
CHANNEL_KEY=sk-relay-bench-channel
DIRECT_KEY=sk-relay-bench-direct

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[ -x "$BIN" ] || die "moongate binary not found at $BIN -- build it first (this script builds nothing)"
for bin in nginx wrk curl taskset ss redis-server redis-cli; do
    command -v "$bin" >/dev/null || die "missing $bin (apt-get install nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache wrk curl redis-server postgresql-15)"
done
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || die "libnginx-mod-http-lua not installed"
PGBIN=$(pg_config --bindir 2>/dev/null || true)
[ -x "${PGBIN:-/nonexistent}/initdb" ] || PGBIN=/usr/lib/postgresql/15/bin
[ -x "$PGBIN/initdb" ] || die "PostgreSQL 15 not installed (apt-get install postgresql-15)"
case "$RUN_DIR" in /*) ;; *) die "RUN_DIR must be an absolute path" ;; esac
for c in $CELLS; do
    case $c in
        relay|nginx-s3|mock|upstream) ;;
        relay-b) [ "$RELAY_B" = 1 ] || die "cell relay-b needs RELAY_B_BIN and/or RELAY_B_CONFIG" ;;
        *) die "unknown cell '$c' in CELLS" ;;
    esac
done
[ "$RELAY_B" = 0 ] || [ -x "$RELAY_B_BIN" ] || die "RELAY_B_BIN: no executable at $RELAY_B_BIN"

as_pg() {   # a PostgreSQL tool as the postgres user when we are root (initdb refuses root)
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# --- processes and cleanup: stop only what we started, by PID -------------------
declare -A PID=()
STARTED=()
PG_DATA=""
cleanup() {
    local rc=$? i name pid t
    trap - EXIT INT TERM
    for ((i=${#STARTED[@]}-1; i>=0; i--)); do
        name=${STARTED[$i]}; pid=${PID[$name]}
        kill -0 "$pid" 2>/dev/null || continue
        if [ "$name" = postgres ]; then
            as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 20 stop >/dev/null 2>&1 || true
        else
            kill -TERM "$pid" 2>/dev/null || true
        fi
        for t in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) still running after SIGTERM, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        log "stopped $name (pid $pid)"
    done
    if [ -n "$PG_DATA" ] && [ -d "$PG_DATA" ]; then
        # a postmaster whose start did not complete (pg_ctl stop reads its PID from postmaster.pid)
        [ -f "$PG_DATA/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 20 stop >/dev/null 2>&1 || true
        rm -rf "$PG_DATA"     # throwaway data; the server log stays in logs/
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- preflight ----------------------------------------------------------------------
for port in "$RELAY_PORT" "$MOCK_PORT" "$TAP_PORT" "$PG_PORT" "$REDIS_PORT" "$UPSTREAM_PORT" "$NGINX_BASE" $((NGINX_BASE + 1)) "$NGINX_S3_PORT"; do
    [ -z "$(ss -Htln "sport = :$port")" ] || die "port $port already has a listener; not touching it -- free it first"
done
mkdir -p "$RUN_DIR"/{logs,tmp,raw}
chmod 755 "$RUN_DIR"
cp -r "$HERE/conf" "$RUN_DIR/conf"
cd "$RUN_DIR"
sed -i "s/127\.0\.0\.1:9001;/127.0.0.1:$UPSTREAM_PORT;/" conf/upstream-nginx.conf conf/nginx-gateway.conf
sed -i "s/127\.0\.0\.1:9101;/127.0.0.1:$NGINX_BASE;/; s/127\.0\.0\.1:9102;/127.0.0.1:$((NGINX_BASE + 1));/; s/127\.0\.0\.1:9103;/127.0.0.1:$NGINX_S3_PORT;/" conf/nginx-gateway.conf
[ "$(grep -c "127.0.0.1:$UPSTREAM_PORT;" conf/upstream-nginx.conf conf/nginx-gateway.conf | cut -d: -f2 | tr '\n' ' ')" = "1 1 " ] &&
    grep -q "listen 127.0.0.1:$NGINX_S3_PORT;" conf/nginx-gateway.conf || die "could not move the nginx configs' ports"
NGINX_KEY=$(sed -n 500p conf/keys.txt)   # the valid key run-anchors.sh sends to S3
log "run dir: $RUN_DIR"

start() {   # start NAME CMD...   (background, pinned to SERVER_CPU, output to logs/NAME.out)
    local name=$1; shift
    taskset -c "$SERVER_CPU" "$@" >"logs/$name.out" 2>&1 </dev/null &
    PID[$name]=$!; STARTED+=("$name")
    log "started $name pid ${PID[$name]}: $*"
}
wait_listen() {   # wait_listen NAME PORT TIMEOUT_S
    local name=$1 port=$2 t
    for t in $(seq $(( $3 * 10 ))); do
        kill -0 "${PID[$name]}" 2>/dev/null || { tail -n 20 "logs/$name.out" >&2 || true; die "$name exited during start-up"; }
        [ -n "$(ss -Htln "sport = :$port")" ] && return 0
        sleep 0.1
    done
    tail -n 20 "logs/$name.out" >&2 || true; die "$name is not listening on $port after $3 s"
}

# PostgreSQL: its data directory must be reachable by the postgres user.
PG_DATA="$RUN_DIR/pgdata"
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$RUN_DIR" 2>/dev/null; then
    PG_DATA=$(mktemp -d /tmp/relaybench-pgdata.XXXXXX)
    log "the postgres user cannot reach $RUN_DIR; PostgreSQL data goes to $PG_DATA"
fi
if [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres -m 700 "$PG_DATA"
    install -o postgres -g postgres -m 644 /dev/null logs/postgres.log
else
    install -d -m 700 "$PG_DATA"
fi
as_pg "$PGBIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 --no-sync \
    >logs/initdb.log 2>&1 || die "initdb failed: $(tail -n 5 logs/initdb.log)"
as_pg sh -c "cat >> '$PG_DATA/postgresql.conf'" <<'EOF'
# bench/run-relay.sh: loopback only, no unix socket, no durability (throwaway data)
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
# pg_ctl forks the postmaster, which inherits the CPU affinity (and so do its backends).
as_pg taskset -c "$SERVER_CPU" "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$RUN_DIR/logs/postgres.log" -w -t 30 \
    -o "-p $PG_PORT" start >/dev/null || die "PostgreSQL did not start: $(tail -n 5 logs/postgres.log)"
PID[postgres]=$(head -n 1 "$PG_DATA/postmaster.pid"); STARTED+=(postgres)
log "started postgres pid ${PID[postgres]} (data $PG_DATA)"
PSQL=("$PGBIN/psql" -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -At -v ON_ERROR_STOP=1)
# PostgreSQL's share of the server core. Every PostgreSQL process calls
# setsid(), so each backend is a scheduler autogroup of its own, and on this
# kernel (EEVDF) such a backend, runnable but alone in its group, got ~3% of
# the core against the group of the relay, the mock and Redis: a 1000-row
# log flush that takes 16 ms on a quiet core took 1.1 s under load, the log
# queue outgrew memory and the relay wrote most rows to its disk spool and
# read them back -- the slow-database path, not the steady state this
# benchmark measures. With its autogroups at nice PG_NICE (default -10)
# the flushes keep up. In a deployment the database has its own CPU. Applied
# before every load and, by the spool watcher, every second (the relay's pool
# may open a backend mid-run).
pg_share() {
    [ -n "$PG_NICE" ] || return 0
    local p
    for p in ${PID[postgres]} $(pgrep -P "${PID[postgres]}" 2>/dev/null); do
        echo "$PG_NICE" >"/proc/$p/autogroup" 2>/dev/null || true
    done
}

mkdir -p redis
start redis redis-server --port "$REDIS_PORT" --bind "$HOST" --save '' --appendonly no --dir "$RUN_DIR/redis"
wait_listen redis "$REDIS_PORT" 10
start upstream nginx -p "$RUN_DIR/" -c "$RUN_DIR/conf/upstream-nginx.conf" -g 'daemon off;'
start nginx-s3 nginx -p "$RUN_DIR/" -c "$RUN_DIR/conf/nginx-gateway.conf" -g 'daemon off;'
LISTEN_ADDR="$HOST:$MOCK_PORT" start mock "$BIN" "$REPO/examples/mock-openai/gateway.lua"
start_relay() {   # start_relay NAME BINARY CONFIG PORT SPOOL_DIR
    ADMIN_KEY="$ADMIN_KEY" \
    SQL_DSN="postgres://postgres@$HOST:$PG_PORT/postgres?sslmode=disable&gssencmode=disable" \
    REDIS_CONN_STRING="redis://$HOST:$REDIS_PORT/0" \
    AIPROXY_SPOOL_DIR="$5" \
    AIPROXY_ACCESS_LOG="$RELAY_ACCESS_LOG" \
    LISTEN_ADDR="$HOST:$4" \
        start "$1" "$2" --workers 1 "$3"
}
start_relay relay "$BIN" "$RELAY_CONFIG" "$RELAY_PORT" "$RUN_DIR/spool"
[ "$RELAY_B" = 0 ] || start_relay relay-b "$RELAY_B_BIN" "$RELAY_B_CONFIG" "$RELAY_B_PORT" "$RUN_DIR/spool-b"
# The relay's log queue (moongate.batch) spills rows to a spool file on disk when
# PostgreSQL falls behind (more than memory_rows waiting) and replays them later.
# This watcher notes every spool file it sees (bash builtins only: a glob and a
# read with a timeout, no process per look), so the report can say whether the
# logging kept up in memory. Its CPU is negligible and counted as foreign.
mkdir -p spool spool-b
rm -f tmp/watch.fifo          # left by an earlier run in the same RUN_DIR
mkfifo tmp/watch.fifo
(
    exec 3<>tmp/watch.fifo
    declare -A seen=()
    tick=0
    while :; do
        tick=$((tick+1)); [ $((tick % 10)) = 0 ] && pg_share
        for f in spool/* spool-b/*; do
            [ -e "$f" ] || continue
            f=${f#spool/}; f=${f#spool-b/}
            [ -n "${seen[$f]:-}" ] && continue
            seen[$f]=1
            printf '%(%H:%M:%S)T %s\n' -1 "$f" >>logs/spool-files.txt
        done
        read -r -t 0.1 -u 3 _ || true
    done
) </dev/null >/dev/null 2>&1 &
PID[spool-watch]=$!; STARTED+=(spool-watch)
: >logs/spool-files.txt

wait_listen upstream "$UPSTREAM_PORT" 10
wait_listen nginx-s3 "$NGINX_S3_PORT" 10
wait_listen mock "$MOCK_PORT" 15
wait_listen relay "$RELAY_PORT" 15
[ "$RELAY_B" = 0 ] || wait_listen relay-b "$RELAY_B_PORT" 15
sleep 0.5

declare -A PROCINFO=()
for name in "${STARTED[@]}"; do
    [ "$name" = spool-watch ] && continue
    PROCINFO[$name]=$("$PY" "$HERE/tools/proctree.py" "${PID[$name]}")
    log "$name: ${PROCINFO[$name]}"
    [[ "${PROCINFO[$name]}" == *" cpus=$SERVER_CPU "* ]] || die "$name is not confined to cpu $SERVER_CPU"
done

# --- the AI proxy's data: group, token, channels, model config --------------------
admin() {   # METHOD PATH [JSON] -> the answer; fails unless "success":true
    local out
    out=$(curl -sS --max-time 10 -X "$1" "http://$HOST:$RELAY_PORT$2" -H "Authorization: $ADMIN_KEY" \
               -H 'Content-Type: application/json' ${3:+--data "$3"}) || return 1
    case "$out" in *'"success":true'*) printf '%s\n' "$out" ;; *) printf '%s\n' "$out" >&2; return 1 ;; esac
}
for i in $(seq 1 100); do      # the schema is created just after start: retry a little
    if out=$(admin POST /api/group/bench 2>&1); then break; fi
    [ "$i" = 100 ] && die "creating the group failed: $out"
    sleep 0.1
done
tok=$(admin POST /api/token/bench '{"name":"relay-bench"}') || die "creating the token failed"
KEY=$(printf '%s' "$tok" | sed -n 's/.*"key":"\([A-Za-z0-9]*\)".*/\1/p')
[ -n "$KEY" ] || die "no key in the token answer: $tok"
admin POST /api/channel/ "{\"type\":\"openai\",\"name\":\"mock\",\"key\":\"$CHANNEL_KEY\",\"base_url\":\"http://$HOST:$MOCK_PORT\",\"models\":[\"$MODEL\"]}" >/dev/null \
    || die "creating the mock channel failed"
# The SSE measurement's channel: the same mock behind sse_latency.py's timestamping tap.
admin POST /api/channel/ "{\"type\":\"openai\",\"name\":\"sse-tap\",\"key\":\"$CHANNEL_KEY\",\"base_url\":\"http://$HOST:$TAP_PORT\",\"models\":[\"$SSE_MODEL\"]}" >/dev/null \
    || die "creating the SSE channel failed"
admin POST "/api/model_config/$MODEL" '{"rpm":1000000000}' >/dev/null || die "creating the model config failed"
log "group bench, token sk-${KEY:0:6}..., channels mock (:$MOCK_PORT) and sse-tap (:$TAP_PORT), $MODEL rpm 1e9"

# --- checks before measuring ----------------------------------------------------------
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}'
post() {   # post PORT AUTH -> "CODE|BODY" (headers in tmp/headers)
    local out
    out=$(curl -s --max-time 10 -o tmp/body -D tmp/headers -w '%{http_code}' -H 'Content-Type: application/json' \
               ${2:+-H "Authorization: $2"} --data "$BODY" "http://$HOST:$1/v1/chat/completions") || out=000
    printf '%s|%s' "$out" "$(tr -d '\n' <tmp/body 2>/dev/null)"
}
expect() {   # expect LABEL ACTUAL GLOB
    # shellcheck disable=SC2053
    [[ "$2" == $3 ]] || die "check failed: $1: got '$2', want '$3'"
}
CHECK_RELAY=0
for i in $(seq 1 50); do     # the channel list is cached for a moment: retry
    r=$(post "$RELAY_PORT" "Bearer sk-$KEY"); CHECK_RELAY=$((CHECK_RELAY+1))
    [[ "$r" == 200\|* ]] && break
    sleep 0.2
done
expect "relay chat" "$r" '200|{*"object":"chat.completion"*}'
expect "relay chat model" "$r" '*"model":"gpt-4o-mini"*'
if [ "$RELAY_B" = 1 ]; then
    r=$(post "$RELAY_B_PORT" "Bearer sk-$KEY"); CHECK_RELAY=$((CHECK_RELAY+1))
    expect "relay-b chat" "$r" '200|{*"object":"chat.completion"*}'
    expect "relay-b chat model" "$r" '*"model":"gpt-4o-mini"*'
fi
# The RPM check leaves its counter in Redis (the relay sends X-RateLimit-* headers only on a 429).
rk=$(redis-cli -h "$HOST" -p "$REDIS_PORT" --scan --pattern "aiproxy:limit:bench:$MODEL:*:rpm" | head -n 1)
[ -n "$rk" ] && [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" get "$rk")" -ge 1 ] \
    || die "check failed: no RPM counter aiproxy:limit:bench:$MODEL:*:rpm in Redis (RPM check not active?)"
expect "relay no key" "$(post "$RELAY_PORT" "")" '401|{"error":*}'
expect "relay bad key" "$(post "$RELAY_PORT" "Bearer sk-nope")" '401|{"error":*}'
expect "nginx-s3 chat" "$(post "$NGINX_S3_PORT" "Bearer $NGINX_KEY")" '200|{"ok":true}'
expect "nginx-s3 no key" "$(post "$NGINX_S3_PORT" "")" '401|{*}'
expect "mock chat" "$(post "$MOCK_PORT" "Bearer $DIRECT_KEY")" '200|{*"object":"chat.completion"*}'
expect "upstream" "$(post "$UPSTREAM_PORT" "")" '200|{"ok":true}'
log "checks passed: relay (200, model $MODEL, RPM counter $rk in Redis, 401s), nginx-s3, mock, upstream"

# --- load --------------------------------------------------------------------------------
# Same guards as run-anchors.sh: wait (up to QUIET_TIMEOUT s) for one quiet second
# before every measured run, and discard (at most RETRIES times) a run during which
# processes NOT started here used more than FOREIGN_MAX % of a core:
#   foreign = user+nice+system on both cores - wrk's CPU - CPU of all our processes.
HZ=$(getconf CLK_TCK)
cpu_snap() {   # "u0 b0 t0 u1 b1 t1 st": CLIENT_CPU, SERVER_CPU; u=user+nice+system, b=u+irq+softirq, t=all,
               # st = steal on both (time the hypervisor ran something else: invisible to the foreign-CPU guard)
    awk -v a="cpu$CLIENT_CPU" -v b="cpu$SERVER_CPU" '
        $1==a {ua=$2+$3+$4; ba=ua+$7+$8; ta=$2+$3+$4+$5+$6+$7+$8+$9; sa=$9}
        $1==b {ub=$2+$3+$4; bb=ub+$7+$8; tb=$2+$3+$4+$5+$6+$7+$8+$9; sb=$9}
        END {print ua, ba, ta, ub, bb, tb, sa+sb}' /proc/stat
}
COMPONENTS="relay mock redis postgres nginx-s3 upstream"
proc_ticks() {   # "relay mock redis postgres nginx-s3 upstream" ticks, in that order
    local args=() n
    for n in $COMPONENTS; do args+=("$n=${PID[$n]}"); done
    "$PY" "$HERE/relay/ticks.py" "${args[@]}" | tr ' ' '\n' | cut -d= -f2 | tr '\n' ' '
}
sys_ticks() {    # "relay nginx-s3" kernel (stime) ticks: where the gateways' CPU goes; then relay-b's
                 # ticks and its kernel ticks (0 0 without it)
    "$PY" "$HERE/relay/ticks.py" "relay-sys=${PID[relay]}" "nginx-s3-sys=${PID[nginx-s3]}" \
        "relay-b=${PID[relay-b]:-0}" "relay-b-sys=${PID[relay-b]:-0}" |
        tr ' ' '\n' | cut -d= -f2 | tr '\n' ' '
}
tcp_counters() {   # the machine's TCP "ActiveOpens RetransSegs" (connect() calls, retransmitted segments), /proc/net/snmp
    awk '$1 == "Tcp:" { if (seen) print $6, $13; seen = 1 }' /proc/net/snmp
}
times_ticks() {   # times_ticks FILE -> ticks of line 2 (children user+sys) of bash `times`
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
            NOT_QUIET=$((NOT_QUIET+1))
            return 0
        fi
    done
}
NOT_QUIET=0
declare -A CELL_PORT=([relay]=$RELAY_PORT [relay-b]=$RELAY_B_PORT [nginx-s3]=$NGINX_S3_PORT [mock]=$MOCK_PORT [upstream]=$UPSTREAM_PORT)
declare -A CELL_AUTH=([relay]="Bearer sk-$KEY" [relay-b]="Bearer sk-$KEY" [nginx-s3]="Bearer $NGINX_KEY" [mock]="Bearer $DIRECT_KEY" [upstream]="Bearer $DIRECT_KEY")
declare -A SENT=()   # cell -> requests wrk completed against it (warm-ups and discarded tries included)
wrk_run() {   # wrk_run CELL DURATION OUTFILE
    taskset -c "$CLIENT_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$2" --latency -s "$HERE/relay/chat.lua" \
        -H "Authorization: ${CELL_AUTH[$1]}" "http://$HOST:${CELL_PORT[$1]}/v1/chat/completions" >"$3" 2>&1 \
        || die "wrk failed: $(cat "$3")"
}
wrk_count() {   # wrk_count CELL OUTFILE -> PARSED (wrkparse.py's line); no subshell, so SENT counts
    PARSED=$("$PY" "$HERE/tools/wrkparse.py" "$2") || die "cannot parse $2"
    local f
    IFS=$'\t' read -r -a f <<<"$PARSED"
    SENT[$1]=$(( ${SENT[$1]:-0} + f[3] ))
    NON2XX=$(( NON2XX + f[4] )); SOCKERR=$(( SOCKERR + f[5] ))
}
NON2XX=0; SOCKERR=0
PARSED=
: >load.tsv
bench() {   # bench REP CELL -> appends one line to load.tsv
    local rep=$1 cell=$2 tag a b sa sb oa ob wa wb parsed row foreign attempt=0
    tag="rep$rep-$cell"
    pg_share
    if [ "$rep" = 1 ]; then
        quiet_gate
        log "$tag: warm-up $WARMUP on :${CELL_PORT[$cell]}"
        wrk_run "$cell" "$WARMUP" "raw/$tag.warmup.txt"
        wrk_count "$cell" "raw/$tag.warmup.txt"
    fi
    while :; do
        attempt=$((attempt+1))
        quiet_gate
        pg_share                       # backends the warm-up opened, too
        sa=$(proc_ticks); ka=$(sys_ticks); oa=$(tcp_counters); times >tmp/times.a; a=$(cpu_snap)
        wrk_run "$cell" "$DURATION" "raw/$tag.try$attempt.txt"
        b=$(cpu_snap); times >tmp/times.b; ob=$(tcp_counters); kb=$(sys_ticks); sb=$(proc_ticks)
        wrk_count "$cell" "raw/$tag.try$attempt.txt"; parsed=$PARSED
        wa=$(times_ticks tmp/times.a); wb=$(times_ticks tmp/times.b)
        # load.tsv: rep cell port rps p50 p99 total non2xx sockerr cpu0% cpu1% cpu1_ticks
        #           relay mock redis postgres nginx-s3 upstream (ticks) foreign% tries new_connections retransmits steal%
        #           relay_sys nginx-s3_sys (kernel ticks of the two gateways) relay-b relay-b_sys
        # new_connections: the machine's TCP active opens during the run minus wrk's CONNS,
        # i.e. the connections the gateway opened to its upstream (or anyone else did);
        # retransmits: the machine's retransmitted TCP segments during the run (a SYN
        # retransmitted after 1 s shows up as a ~1 s latency outlier).
        row=$(awk -v rep="$rep" -v cell="$cell" -v port="${CELL_PORT[$cell]}" -v att="$attempt" \
            -v opens="$(( ${ob% *} - ${oa% *} - CONNS ))" -v retrans="$(( ${ob#* } - ${oa#* } ))" \
            -v p="$parsed" -v a="$a" -v b="$b" -v sa="$sa" -v sb="$sb" -v ka="$ka" -v kb="$kb" -v wrk="$((wb-wa))" 'BEGIN {
                split(p, w, "\t"); split(a, x, " "); split(b, y, " ");
                n = split(sa, s0, " "); split(sb, s1, " ");
                srv = 0; d = "";
                for (i = 1; i <= n; i++) { v = s1[i] - s0[i]; srv += v; d = d "\t" v }
                el = y[3]-x[3];
                c0 = 100 * (y[2]-x[2]) / el; c1 = 100 * (y[5]-x[5]) / (y[6]-x[6]);
                split(ka, k0, " "); split(kb, k1, " ");
                srv_all = srv + k1[3]-k0[3];                # relay-b, when there is one, is ours too
                fo = 100 * ((y[1]-x[1]) + (y[4]-x[4]) - srv_all - wrk) / el; if (fo < 0) fo = 0;
                printf "%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%d%s\t%.1f\t%d\t%d\t%d\t%.1f\t%d\t%d\t%d\t%d\n",
                       fo, rep, cell, port, w[1], w[2], w[3], w[4], w[5], w[6], c0, c1, y[5]-x[5], d, fo, att, opens, retrans,
                       100 * (y[7]-x[7]) / el, k1[1]-k0[1], k1[2]-k0[2], k1[3]-k0[3], k1[4]-k0[4] }')
        foreign=${row%%$'\t'*}
        row=${row#*$'\t'}
        if awk -v f="$foreign" -v m="$FOREIGN_MAX" 'BEGIN{exit !(f > m)}' && [ "$attempt" -le "$RETRIES" ]; then
            log "$tag: foreign CPU ${foreign}% of a core > ${FOREIGN_MAX}%: discarding attempt $attempt ($(cut -f4 <<<"$row") req/s)"
            continue
        fi
        break
    done
    cp "raw/$tag.try$attempt.txt" "raw/$tag.txt"
    printf '%s\n' "$row" >>load.tsv
    log "$tag: $("$PY" "$HERE/relay/report.py" line "$HZ" <<<"$row")"
}
read -r -a CELL_LIST <<<"$CELLS"
for rep in $(seq "$REPS"); do
    n=${#CELL_LIST[@]}
    for ((i=0; i<n; i++)); do bench "$rep" "${CELL_LIST[$(( (i + rep - 1) % n ))]}"; done
done

# --- after the load: errors, log rows in PostgreSQL, RPM scripts in Redis ------------------
CHECKS=()
# wrk's socket errors include "timeout": an answer slower than wrk's 2 s timeout (counted
# as an error, left out of the latency figures). Reported, with the others, not hidden.
TIMEOUTS=$(cat raw/*.warmup.txt raw/*.try*.txt | awk -F'timeout ' '/Socket errors:/ {n += $2} END {print n+0}')
if [ "$NON2XX" = 0 ]; then
    CHECKS+=("no non-2xx answer in any wrk run (warm-ups and discarded tries included)")
else
    CHECKS+=("FAILED: $NON2XX non-2xx answers in the wrk runs (see raw/)")
fi
if [ "$SOCKERR" != 0 ]; then
    CHECKS+=("WARNING: $SOCKERR wrk socket errors, $TIMEOUTS of them timeouts (no answer within 2 s), see raw/")
fi
if [[ " $CELLS " == *" relay "* || " $CELLS " == *" relay-b "* ]]; then
    # wrk counts completed answers only: requests still in flight when a run ends are
    # answered and logged by the relay too, so up to CONNS more rows per wrk run.
    # With a second relay, both write rows to the one PostgreSQL: counted together.
    relay_runs=$( (ls raw/*-relay.warmup.txt raw/*-relay.try*.txt raw/*-relay-b.warmup.txt raw/*-relay-b.try*.txt 2>/dev/null || true) | wc -l)
    sent=$(( ${SENT[relay]:-0} + ${SENT[relay-b]:-0} + CHECK_RELAY ))
    prev=-1; rows=0
    for i in $(seq 1 30); do   # the log batch flushes every second: wait until the count is stable
        sleep 1
        rows=$("${PSQL[@]}" -c "SELECT count(*) FROM logs WHERE model = '$MODEL'") || die "psql failed"
        [ "$rows" = "$prev" ] && break
        prev=$rows
    done
    ok200=$("${PSQL[@]}" -c "SELECT count(*) FROM logs WHERE model = '$MODEL' AND code = 200")
    codes=$("${PSQL[@]}" -c "SELECT string_agg(code || ':' || n, ' ') FROM (SELECT code, count(*) n FROM logs WHERE model = '$MODEL' GROUP BY code ORDER BY code) c")
    upstream_reqs=$(curl -s "http://$HOST:$MOCK_PORT/mock/stats" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['by_key'].get('$CHANNEL_KEY', 0))")
    rpm_scripts=$(redis-cli -h "$HOST" -p "$REDIS_PORT" info commandstats | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ {n += $3} END {print n+0}')
    extra=$(( rows - sent )); max_extra=$(( CONNS * relay_runs ))
    if [ "$rows" -ge "$sent" ] && [ "$extra" -le "$max_extra" ] && [ "$rows" = "$upstream_reqs" ] && [ "$rows" = "$ok200" ]; then
        CHECKS+=("PostgreSQL log rows for $MODEL: $rows (codes $codes) = requests the mock received from the relay ($upstream_reqs); wrk + curl completed $sent, the $extra more were in flight when a wrk run stopped (at most $CONNS per run, $relay_runs runs)")
    else
        CHECKS+=("FAILED: PostgreSQL log rows for $MODEL: $rows (codes $codes), requests completed by wrk + curl: $sent, in flight at most $max_extra, mock received from the relay: $upstream_reqs")
    fi
    # The relay's own timing of its slow requests (logs.latency_ms: handler start to log row;
    # logs.ttfb_ms: handler start to the upstream's answer), to see where they waited.
    SLOW_ROWS=$("${PSQL[@]}" -F ' ' -c "SELECT count(*), coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)), 0),
        coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ttfb_ms)), 0) FROM logs WHERE model = '$MODEL' AND latency_ms > 500")
    if [ "${SLOW_ROWS%% *}" != 0 ]; then
        read -r n l t <<<"$SLOW_ROWS"
        CHECKS+=("NOTE: $n log rows with latency_ms > 500; their median latency_ms $l, median ttfb_ms $t (from the handler's start to the upstream's answer)")
    fi
    # RPM alone is counted in leases (examples/aiproxy/lib/limits.lua): each script call
    # counts its request and leases up to 64 more to the worker, counted in Redis at once.
    if [ $(( rpm_scripts * 65 )) -ge "$rows" ]; then
        CHECKS+=("Redis ran $rpm_scripts EVAL/EVALSHA (the RPM script: a request and a lease of up to 64 more each) for $rows relayed requests")
    else
        CHECKS+=("FAILED: Redis ran only $rpm_scripts EVAL/EVALSHA for $rows relayed requests (at most 65 requests per call)")
    fi
fi
for c in "${CHECKS[@]}"; do log "$c"; done
# Did the log rows go through the disk spool? (file names: <queue>.<stamp>.<seq>.<owner>.open
# while written, then ...<owner>.<rows>.spool / ...<rows>.<claimer>.claimed while replayed)
SPOOL_FILES=$(awk '{split($2, f, "."); print f[2] "." f[3]}' logs/spool-files.txt | sort -u | wc -l)
SPOOL_ROWS=$(awk '$2 ~ /\.(spool|claimed)$/ {split($2, f, "."); if (!(f[2] "." f[3] in s)) {s[f[2] "." f[3]] = 1; n += f[5]}} END {print n+0}' logs/spool-files.txt)
if [ "$SPOOL_FILES" = 0 ]; then
    CHECKS+=("the log queue kept up in memory: no spool file appeared (AIPROXY_SPOOL_DIR=$RUN_DIR/spool)")
else
    CHECKS+=("NOTE: PostgreSQL fell behind the log queue: $SPOOL_FILES spool files ($SPOOL_ROWS rows) were written to disk and replayed during the load (logs/spool-files.txt); every row still landed (see above)")
fi
# Where slow answers happened: the relay's and the mock's own access logs (latency_ms), taken
# before the SSE phase (whose streams last a second each by design).
SLOW=$("$PY" "$HERE/relay/slow.py" relay=logs/relay.out mock=logs/mock.out)
log "$SLOW"

# --- SSE: the latency the relay adds per streamed chunk -----------------------------------
SSE_JSON=""
if [ "$SKIP_SSE" != 1 ]; then
    quiet_gate
    log "SSE: $SSE_STREAMS streams per path, $SSE_CHUNKS chunks, ${SSE_DELAY_MS} ms apart (+$SSE_WARMUP warm-up streams each)"
    sa=$(proc_ticks); times >tmp/times.a; a=$(cpu_snap)
    taskset -c "$CLIENT_CPU" "$PY" "$HERE/relay/sse_latency.py" --tap-port "$TAP_PORT" --mock-port "$MOCK_PORT" \
        --tap-cpu "$SERVER_CPU" --relay-port "$RELAY_PORT" --key "sk-$KEY" --direct-key "$CHANNEL_KEY" --model "$SSE_MODEL" \
        --chunks "$SSE_CHUNKS" --delay-ms "$SSE_DELAY_MS" --streams "$SSE_STREAMS" --warmup "$SSE_WARMUP" \
        --json raw/sse.json --events raw/sse-events.tsv >raw/sse.txt 2>logs/sse.err \
        || die "sse_latency.py failed: $(tail -n 20 logs/sse.err)"
    b=$(cpu_snap); times >tmp/times.b; sb=$(proc_ticks)
    wa=$(times_ticks tmp/times.a); wb=$(times_ticks tmp/times.b)
    SSE_FOREIGN=$(awk -v a="$a" -v b="$b" -v sa="$sa" -v sb="$sb" -v cl="$((wb-wa))" 'BEGIN {
        split(a, x, " "); split(b, y, " "); n = split(sa, s0, " "); split(sb, s1, " "); srv = 0;
        for (i = 1; i <= n; i++) srv += s1[i] - s0[i];
        fo = 100 * ((y[1]-x[1]) + (y[4]-x[4]) - srv - cl) / (y[3]-x[3]); if (fo < 0) fo = 0;
        printf "%.1f%% of a core, steal %.1f%%", fo, 100 * (y[7]-x[7]) / (y[3]-x[3]) }')
    # CPU of our servers during the SSE phase (a server busy with background work delays the tap too)
    SSE_CPU=$(awk -v sa="$sa" -v sb="$sb" -v names="$COMPONENTS" -v hz="$HZ" 'BEGIN {
        n = split(sa, s0, " "); split(sb, s1, " "); split(names, nm, " ");
        for (i = 1; i <= n; i++) printf "%s%s %.2f s", (i > 1 ? ", " : ""), nm[i], (s1[i] - s0[i]) / hz }')
    SSE_JSON=raw/sse.json
    log "SSE: $(tail -n 1 raw/sse.txt) (foreign CPU ${SSE_FOREIGN})"
fi

# --- report ---------------------------------------------------------------------------------
{
    echo "## AI proxy relay vs nginx S3 -- $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    dirty=$(git -C "$REPO" status --porcelain -- src lua examples 2>/dev/null | wc -l)
    echo "- moongate: work tree at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$([ "$dirty" = 0 ] || echo " + $dirty changed/untracked files under src/ lua/ examples/"); binary $BIN built $(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC') ($(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$(dirname "$BIN")/CMakeCache.txt" 2>/dev/null || echo '?')); the relay's access log: $RELAY_ACCESS_LOG (RELAY_ACCESS_LOG; nginx S3 has access_log off)"
    echo "- nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), lua-nginx-module $(dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null); PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'); Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
    echo "- $( (wrk -v 2>&1 || true) | head -1 | sed 's/ Copyright.*//'); wrk -t$THREADS -c$CONNS -d$DURATION --latency -s relay/chat.lua on cpu $CLIENT_CPU after a $WARMUP warm-up per cell; all servers on cpu $SERVER_CPU"
    for name in "${STARTED[@]}"; do [ -n "${PROCINFO[$name]:-}" ] && echo "- $name: ${PROCINFO[$name]} (at start)"; done
    echo "- raw output: $RUN_DIR/raw"
    [ "$NOT_QUIET" = 0 ] || echo "- WARNING: $NOT_QUIET time(s) the machine was not quiet within ${QUIET_TIMEOUT}s before a run"
    echo
    echo "Summary over $REPS interleaved repetitions (median, min–max). CPU columns: µs of CPU (user+sys) per request:"
    echo
    "$PY" "$HERE/relay/report.py" summary "$HZ" load.tsv
    echo
    echo "All repetitions:"
    echo
    "$PY" "$HERE/relay/report.py" all "$HZ" load.tsv
    echo
    echo "Checks after the load:"
    echo
    for c in "${CHECKS[@]}"; do echo "- $c"; done
    echo
    echo "Slow answers, from the servers' own access logs (all load runs, warm-ups included):"
    echo
    echo "$SLOW"
    if [ -n "$SSE_JSON" ]; then
        echo
        echo "SSE per-chunk latency (foreign CPU during the measurement: ${SSE_FOREIGN}; CPU of our servers meanwhile: $SSE_CPU):"
        echo
        cat raw/sse.txt
    fi
} | tee results.md
log "report saved to $RUN_DIR/results.md"
# The servers' access logs run to hundreds of MB (the mock logs every request it serves): keep them, compressed.
for f in logs/*.out; do if [ "$(stat -c %s "$f")" -gt 10000000 ]; then gzip -1 "$f"; fi; done
for c in "${CHECKS[@]}"; do [[ "$c" != FAILED* ]] || die "a check failed: $c"; done
