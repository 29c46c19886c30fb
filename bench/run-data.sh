#!/usr/bin/env bash
# run-data.sh -- the gateway's overhead over the raw database (issue 4):
# a route doing one primary-key SELECT and one doing one Redis INCR, driven by
# wrk at 64 connections, side by side with pgbench -S and redis-benchmark INCR
# against the same servers in the same run. Servers and moongate (one worker)
# run on core $SERVER_CPU, the load generators on core $CLIENT_CPU. Everything
# started here is stopped here, by PID. Needs root (PostgreSQL runs as postgres).
#   bench/run-data.sh            DURATION=10 CONNS=64 overridable
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BIN="$REPO/build/moongate"
DURATION=${DURATION:-10}; CONNS=${CONNS:-64}; SERVER_CPU=${SERVER_CPU:-1}; CLIENT_CPU=${CLIENT_CPU:-0}
PGBIN=/usr/lib/postgresql/15/bin
[ -x "$BIN" ] || { echo "build moongate first (scripts/setup.sh)" >&2; exit 1; }
for p in wrk redis-server postgresql-15 postgresql-contrib; do
  dpkg -s "$p" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq "$p" >/dev/null
done
PGBENCH=$(command -v pgbench || echo $PGBIN/pgbench)
RUN=$(mktemp -d /tmp/moongate-data-bench.XXXXXX); chmod 755 "$RUN"
PGPORT=$((20000 + RANDOM % 10000)); RPORT=$((PGPORT + 1))
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -d "$RUN/pg" ] && (cd / && runuser -u postgres -- $PGBIN/pg_ctl -D "$RUN/pg" -m fast -w stop >/dev/null 2>&1 || true)
  rm -rf "$RUN"
}
trap cleanup EXIT
install -d -o postgres -g postgres -m 700 "$RUN/pg"
(cd / && runuser -u postgres -- $PGBIN/initdb -D "$RUN/pg" -U postgres --auth=trust --no-sync >/dev/null)
(cd / && runuser -u postgres -- taskset -c $SERVER_CPU $PGBIN/pg_ctl -D "$RUN/pg" -l "$RUN/pg/server.log" -w -o \
  "-c listen_addresses=127.0.0.1 -p $PGPORT -k $RUN/pg -c fsync=off -c synchronous_commit=off -c max_connections=200" start >/dev/null)
"$PGBENCH" -h 127.0.0.1 -p $PGPORT -U postgres -i -s 1 -q postgres >/dev/null 2>&1
taskset -c $SERVER_CPU redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!)
until redis-cli -p $RPORT ping 2>/dev/null | grep -q PONG; do sleep 0.05; done
BENCH_PG_DSN="host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres sslmode=disable gssencmode=disable" \
BENCH_REDIS_URL="redis://127.0.0.1:$RPORT" taskset -c $SERVER_CPU "$BIN" "$HERE/data/gateway.lua" 2>"$RUN/gw.err" &
PIDS+=($!)
until curl -sf http://127.0.0.1:9401/health >/dev/null; do sleep 0.05; done
curl -sf http://127.0.0.1:9401/pg >/dev/null && curl -sf http://127.0.0.1:9401/redis >/dev/null

wrk_run() {  # url -> "req/s p99"
  taskset -c $CLIENT_CPU wrk -t1 -c$CONNS -d${DURATION}s --latency "$1" |
    awk '/Requests\/sec/ {r=$2} / 99%/ {p=$2} /Non-2xx/ {e=$5} END {print r, p, (e?e:0)}'
}
taskset -c $CLIENT_CPU wrk -t1 -c$CONNS -d2s http://127.0.0.1:9401/pg >/dev/null     # warm-up
read -r GPG GPG99 GPGE < <(wrk_run http://127.0.0.1:9401/pg)
read -r GR GR99 GRE < <(wrk_run http://127.0.0.1:9401/redis)
PGB=$(taskset -c $CLIENT_CPU "$PGBENCH" -h 127.0.0.1 -p $PGPORT -U postgres -S -c $CONNS -j 1 -T $DURATION -n postgres 2>/dev/null |
  awk '/^tps/ {printf "%.0f", $3; exit}')
RB=$(taskset -c $CLIENT_CPU redis-benchmark -p $RPORT -c $CONNS -n 400000 -t incr --csv 2>/dev/null |
  awk -F'","' '/^"INCR/ {print $2; exit}')
echo "| what | req/s | p99 | errors |"
echo "|---|--:|--:|--:|"
echo "| pgbench -S (raw, $CONNS clients) | $PGB | | |"
echo "| moongate GET /pg (one PK SELECT, $CONNS conns) | $GPG | $GPG99 | $GPGE |"
echo "| redis-benchmark INCR (raw, $CONNS clients) | $RB | | |"
echo "| moongate GET /redis (one INCR, $CONNS conns) | $GR | $GR99 | $GRE |"
