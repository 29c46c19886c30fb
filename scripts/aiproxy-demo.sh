#!/bin/bash
# The AI proxy demo (what scripts/run.sh starts without a config): a throwaway
# PostgreSQL 15 and Redis on loopback, the mock OpenAI provider
# (examples/mock-openai), the AI proxy (examples/aiproxy) with a demo group,
# token and channel created through its admin API. It then stays in the
# foreground; Ctrl-C / SIGTERM stops everything it started.
#
#   scripts/aiproxy-demo.sh [--data-dir DIR] [--port N] [--mock-port N] [--pg-port N] [--redis-port N]
#
#   --data-dir    where the databases and logs go (default ./.demo-data; wiped at start)
#   --port        the AI proxy (default 8080)       --mock-port   the mock provider (default 8090)
#   --pg-port     PostgreSQL (default 15432)        --redis-port  Redis (default 16379)
#   A port given explicitly must be free; a default one that is taken is
#   replaced by the next free port.
#
# Environment: ADMIN_KEY (default aiproxy-admin); MOONGATE_BIN (default
# build/moongate). With SQL_DSN or
# REDIS_CONN_STRING set, that server is used and none is started.
# Needs build/moongate, curl, and (unless given servers) postgresql-15 and
# redis-server: scripts/setup.sh --demo installs them. As root, PostgreSQL runs
# as the postgres user (initdb refuses root).
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)

data=./.demo-data
port=8080; mock_port=8090; pg_port=15432; redis_port=16379
fixed=" "
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data=$2; shift 2 ;;
    --port) port=$2; fixed="$fixed port "; shift 2 ;;
    --mock-port) mock_port=$2; fixed="$fixed mock_port "; shift 2 ;;
    --pg-port) pg_port=$2; fixed="$fixed pg_port "; shift 2 ;;
    --redis-port) redis_port=$2; fixed="$fixed redis_port "; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "aiproxy-demo: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
export ADMIN_KEY=${ADMIN_KEY:-aiproxy-admin}
BIN=${MOONGATE_BIN:-$repo/build/moongate}     # the tests' sanitizer run sets MOONGATE_BIN

say() { echo "demo: $*"; }
die() { echo "demo: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "$BIN is missing (scripts/setup.sh builds it)"
command -v curl >/dev/null || die "curl is missing (scripts/setup.sh --demo installs it)"

# ---------------------------------------------------------------- processes and cleanup
pids=""          # our children: moongate x2, redis
pg_data=""       # set once we started PostgreSQL
sleeper=""
stopping=0

as_pg() {        # runs a PostgreSQL tool as the postgres user when we are root
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

cleanup() {
  [ "$stopping" = 1 ] && return
  stopping=1
  trap '' INT TERM
  if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null || true; fi
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $pids; do
    for _ in $(seq 1 100); do alive "$p" || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ -n "$pg_data" ] && [ -f "$pg_data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  fi
  say "stopped"
}
on_signal() { echo; cleanup; exit 0; }
trap on_signal INT TERM
on_exit() { local rc=$?; cleanup >/dev/null; exit "$rc"; }
trap on_exit EXIT

# A process that exists and is not a zombie (kill -0 succeeds on zombies).
alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [ "${st%% *}" != Z ]
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick VAR: keeps the port if free; a default port that is taken moves on.
pick() {
  local name=$1 p
  eval "p=\$$name"
  if port_busy "$p"; then
    case "$fixed" in *" $name "*) die "port $p (--${name//_/-}) is in use" ;; esac
    local q=$p
    while port_busy "$q"; do
      q=$((q + 1))
      [ "$q" -gt $((p + 100)) ] && die "no free port near $p"
    done
    say "port $p is in use, using $q"
    eval "$name=$q"
  fi
}

wait_started() {   # pid, stderr file, what
  for _ in $(seq 1 300); do
    grep -q "server started" "$2" 2>/dev/null && return 0
    alive "$1" || die "$3 exited: $(tail -n 5 "$2")"
    sleep 0.05
  done
  die "$3 did not start: $(tail -n 5 "$2")"
}

# ---------------------------------------------------------------- data directory
pick port; pick mock_port
mkdir -p "$data"
data=$(cd "$data" && pwd)
chmod 755 "$data"
logs=$data/logs
rm -rf "$logs"
mkdir -p "$logs"

# ---------------------------------------------------------------- PostgreSQL
if [ -z "${SQL_DSN:-}" ]; then
  PGBIN=$(pg_config --bindir 2>/dev/null || true)
  [ -x "${PGBIN:-/nonexistent}/initdb" ] || PGBIN=/usr/lib/postgresql/15/bin
  [ -x "$PGBIN/initdb" ] || die "PostgreSQL 15 is not installed (scripts/setup.sh --demo), or set SQL_DSN"
  pick pg_port
  pgd=$data/pgdata
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$data" 2>/dev/null; then
    # the postgres user cannot reach the data directory (e.g. under /root)
    pgd=${TMPDIR:-/tmp}/moongate-demo-pgdata-$(printf %s "$data" | md5sum | cut -c1-12)
    say "the postgres user cannot reach $data; PostgreSQL data goes to $pgd"
  fi
  if [ -f "$pgd/postmaster.pid" ]; then      # left running by a killed demo
    as_pg "$PGBIN/pg_ctl" -D "$pgd" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$pgd"
  if [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres -m 700 "$pgd"
    install -o postgres -g postgres -m 644 /dev/null "$logs/postgres.log"
  else
    install -d -m 700 "$pgd"
  fi
  as_pg "$PGBIN/initdb" -D "$pgd" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 --no-sync \
    >"$logs/initdb.log" 2>&1 || die "initdb failed: $(tail -n 5 "$logs/initdb.log")"
  as_pg sh -c "cat >> '$pgd/postgresql.conf'" <<'EOF'
# moongate demo: loopback only, no unix socket, no durability (throwaway data)
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  pg_data=$pgd
  as_pg "$PGBIN/pg_ctl" -D "$pgd" -l "$logs/postgres.log" -w -t 30 -o "-p $pg_port" start >/dev/null \
    || die "PostgreSQL did not start: $(tail -n 5 "$logs/postgres.log")"
  export SQL_DSN="postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable"
  say "PostgreSQL 15 on 127.0.0.1:$pg_port (pid $(head -n 1 "$pgd/postmaster.pid"), data $pgd)"
else
  say "PostgreSQL: using SQL_DSN"
fi

# ---------------------------------------------------------------- Redis
if [ -z "${REDIS_CONN_STRING:-}" ]; then
  command -v redis-server >/dev/null || die "redis-server is not installed (scripts/setup.sh --demo), or set REDIS_CONN_STRING"
  pick redis_port
  rm -rf "$data/redis"
  mkdir -p "$data/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$data/redis" \
    >"$logs/redis.log" 2>&1 </dev/null &
  redis_pid=$!
  pids="$pids $redis_pid"
  for _ in $(seq 1 200); do
    port_busy "$redis_port" && break
    alive "$redis_pid" || die "redis-server exited: $(tail -n 5 "$logs/redis.log")"
    sleep 0.05
  done
  port_busy "$redis_port" || die "redis-server did not start"
  export REDIS_CONN_STRING="redis://127.0.0.1:$redis_port/0"
  say "Redis on 127.0.0.1:$redis_port (pid $redis_pid)"
else
  say "Redis: using REDIS_CONN_STRING"
fi

# ---------------------------------------------------------------- the mock provider and the proxy
LISTEN_ADDR=127.0.0.1:$mock_port "$BIN" examples/mock-openai/gateway.lua \
  >"$logs/mock-openai.access.log" 2>"$logs/mock-openai.log" </dev/null &
mock_pid=$!
pids="$pids $mock_pid"
wait_started "$mock_pid" "$logs/mock-openai.log" "the mock provider"
say "mock OpenAI provider on http://127.0.0.1:$mock_port (pid $mock_pid)"

# log rows PostgreSQL did not take yet (moongate.batch spool) stay with the demo's data
AIPROXY_SPOOL_DIR=${AIPROXY_SPOOL_DIR:-$data/spool} "$BIN" --port "$port" examples/aiproxy/gateway.lua \
  >"$logs/aiproxy.access.log" 2>"$logs/aiproxy.log" </dev/null &
proxy_pid=$!
pids="$pids $proxy_pid"
wait_started "$proxy_pid" "$logs/aiproxy.log" "the AI proxy"
say "AI proxy on http://127.0.0.1:$port (pid $proxy_pid), admin key: $ADMIN_KEY"

# ---------------------------------------------------------------- demo group, token, channel
admin() {   # METHOD PATH [JSON] -> the answer on stdout; fails unless "success":true
  local out
  out=$(curl -sS -X "$1" "http://127.0.0.1:$port$2" -H "Authorization: $ADMIN_KEY" \
             -H 'Content-Type: application/json' ${3:+--data "$3"}) || return 1
  case "$out" in *'"success":true'*) printf '%s\n' "$out" ;; *) printf '%s\n' "$out" >&2; return 1 ;; esac
}

# the schema is created at start: retry the first call a little while
for i in $(seq 1 50); do
  if out=$(admin POST /api/group/demo 2>&1); then break; fi
  case "$out" in *"already exists"*) break ;; esac     # a given SQL_DSN may have it
  [ "$i" = 50 ] && die "creating the demo group failed: $out"
  sleep 0.1
done
say "group demo"

tok=$(admin POST /api/token/demo "{\"name\":\"demo-$(date +%s)-$$\"}") || die "creating the demo token failed"
key=$(printf '%s' "$tok" | sed -n 's/.*"key":"\([A-Za-z0-9]*\)".*/\1/p')
[ -n "$key" ] || die "no key in the token answer: $tok"
say "token sk-$key"

chan=$(admin POST /api/channel/ "{\"type\":\"openai\",\"name\":\"mock\",\"key\":\"sk-mock\",\"base_url\":\"http://127.0.0.1:$mock_port\",\"models\":[\"gpt-4o-mini\",\"gpt-4o\",\"text-embedding-3-small\"],\"model_mapping\":{},\"priority\":10,\"status\":1}") \
  || die "creating the channel failed"
chan_id=$(printf '%s' "$chan" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
say "channel ${chan_id:-?} -> http://127.0.0.1:$mock_port (models gpt-4o-mini, gpt-4o, text-embedding-3-small)"

pg_pid=""
[ -n "$pg_data" ] && pg_pid=$(head -n 1 "$pg_data/postmaster.pid" 2>/dev/null || true)
say "pids aiproxy=$proxy_pid mock=$mock_pid redis=${redis_pid:-} postgres=$pg_pid"
cat <<EOF

The AI proxy demo is running (logs in $logs). Try:

curl -s http://127.0.0.1:$port/v1/chat/completions -H 'Authorization: Bearer sk-$key' -H 'Content-Type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'

Admin API: curl -s http://127.0.0.1:$port/api/channels/ -H 'Authorization: $ADMIN_KEY'
What the provider received: curl -s http://127.0.0.1:$mock_port/mock/stats
Ctrl-C stops everything.
EOF

# ---------------------------------------------------------------- foreground
while :; do
  sleep 1 &
  sleeper=$!
  wait "$sleeper" 2>/dev/null || true
  sleeper=""
  for p in $pids; do
    alive "$p" || { echo "demo: process $p exited; stopping" >&2; exit 1; }
  done
  if [ -n "$pg_pid" ] && ! alive "$pg_pid"; then
    echo "demo: PostgreSQL exited; stopping" >&2; exit 1
  fi
done
