#!/usr/bin/env python3
"""Tables for bench/run-relay.sh from its load.tsv (one line per measured wrk run).
Usage: report.py summary HZ load.tsv | report.py all HZ load.tsv | report.py line HZ < one-row
Columns of load.tsv: rep cell port rps p50 p99 total non2xx sockerr cpu0 cpu1 cpu1_ticks
relay mock redis postgres nginx-s3 upstream foreign tries opens retrans steal relay_sys nginx-s3_sys; the six
process columns are
CPU ticks (utime+stime, USER_HZ) of that process tree during the run; opens = TCP connections
opened on the machine during the run, wrk's own excluded; retrans = TCP segments retransmitted
on the machine during the run; steal = steal time on both cores, % of one core; relay_sys and
nginx-s3_sys: the kernel's share (stime ticks) of the two gateways; relay-b and relay-b_sys: the
second relay's ticks and their kernel share (0 without one; older files lack both)."""
import statistics
import sys

COLS = ["rep", "cell", "port", "rps", "p50", "p99", "total", "non2xx", "sockerr", "cpu0", "cpu1",
        "cpu1_ticks", "relay", "mock", "redis", "postgres", "nginx-s3", "upstream", "foreign", "tries", "opens", "retrans", "steal",
        "relay_sys", "nginx-s3_sys", "relay-b", "relay-b_sys"]
PROCS = ["relay", "relay-b", "mock", "redis", "postgres", "nginx-s3", "upstream"]
# cell -> (what it is, its gateway process, its upstream process)
CELLS = {
    "relay": ("moongate AI proxy relay -> mock", "relay", "mock"),
    "relay-b": ("the second relay (RELAY_B_BIN / RELAY_B_CONFIG) -> mock", "relay-b", "mock"),
    "nginx-s3": ("nginx S3 policy-proxy -> upstream nginx", "nginx-s3", "upstream"),
    "mock": ("mock provider alone (reference)", None, "mock"),
    "upstream": ("upstream nginx alone, S0 (reference)", None, "upstream"),
}


def parse(line, hz):
    r = dict(zip(COLS, line.rstrip("\n").split("\t")))
    r.update({k: "0" for k in COLS if k not in r})
    for k in COLS[3:]:
        r[k] = float(r.get(k, 0))
    r["rep"] = int(r["rep"])
    n = r["total"] if r["total"] > 0 else 1.0
    us = lambda ticks: ticks / hz * 1e6 / n
    _, gw, up = CELLS[r["cell"]]
    r["gw_us"] = us(r[gw]) if gw else None
    r["gw_sys_us"] = us(r.get(gw + "_sys", 0.0)) if gw else None
    r["up_us"] = us(r[up])
    r["redis_us"] = us(r["redis"])
    r["pg_us"] = us(r["postgres"])
    r["all_us"] = us(sum(r[p] for p in PROCS))
    r["cpu1_us"] = us(r["cpu1_ticks"])
    r["conn_per_1k"] = max(0.0, r["opens"]) * 1000.0 / n
    return r


def load(path, hz):
    with open(path) as f:
        return [parse(line, hz) for line in f if line.strip()]


def rng(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt % med
    return (fmt + " (" + fmt + "–" + fmt + ")") % (med, min(vals), max(vals))


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def groups(rows):
    order, g = [], {}
    for r in rows:
        if r["cell"] not in g:
            order.append(r["cell"])
            g[r["cell"]] = []
        g[r["cell"]].append(r)
    order.sort(key=lambda c: list(CELLS).index(c))
    return order, g


def summary(rows):
    order, g = groups(rows)
    out = ["| cell | what | n | req/s | p50 ms | p99 ms | errors | **gateway µs/req** | upstream µs/req "
           "| Redis µs/req | PostgreSQL µs/req | all servers µs/req | cpu1 busy | new upstream conns / 1k req | max foreign | max steal |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    f1 = lambda v: "–" if v is None else "%.1f" % v
    for c in order:
        rs = g[c]
        col = lambda k: [r[k] for r in rs]
        errs = int(sum(col("non2xx")) + sum(col("sockerr")))
        gw = rng(col("gw_us"), "%.1f")
        out.append("| %s | %s | %d | %s | %s | %s | %d | %s | %s | %s | %s | %s | %.0f%% | %.0f | %.0f%% | %.1f%% |" % (
            c, CELLS[c][0], len(rs), rng(col("rps"), "%.0f"), rng(col("p50"), "%.2f"), rng(col("p99"), "%.2f"),
            errs, ("**%s**" % gw) if gw != "–" else gw, rng(col("up_us"), "%.1f"), f1(med(col("redis_us"))),
            f1(med(col("pg_us"))), rng(col("all_us"), "%.1f"), med(col("cpu1")), med(col("conn_per_1k")),
            max(col("foreign")), max(col("steal"))))
    out.append("")
    out.append("- gateway µs/req: CPU (user+sys, all threads) of the gateway process tree alone per request: the "
               "relay's one moongate process; nginx's master + its one worker. upstream: the mock / the upstream "
               "nginx alone. Redis, PostgreSQL: those servers (all PostgreSQL backends). all servers: every "
               "process this script started. Medians; (min–max) over the repetitions.")
    out.append("- new upstream conns / 1k req: TCP connections opened on the machine during the run (/proc/net/snmp "
               "ActiveOpens) minus wrk's own, per 1000 requests: the gateway's new connections to its upstream "
               "(0 = every request reused a kept-alive connection).")
    if "relay" in g and "nginx-s3" in g:
        rg, ng = med([r["gw_us"] for r in g["relay"]]), med([r["gw_us"] for r in g["nginx-s3"]])
        by_rep = {}
        for r in g["relay"] + g["nginx-s3"]:
            by_rep.setdefault(r["rep"], {})[r["cell"]] = r["gw_us"]
        pairs = [d for _, d in sorted(by_rep.items()) if len(d) == 2]
        diffs = [d["relay"] - d["nginx-s3"] for d in pairs]
        verdict = "met" if rg - ng <= 5.0 else "NOT met"
        out.append("- **relay gateway − nginx S3 gateway: %.1f − %.1f = %+.1f µs/req** (per repetition: %s). "
                   "Target ≤ +5 µs: %s." % (rg, ng, rg - ng, ", ".join("%+.1f" % d for d in diffs), verdict))
        # The two cells of a repetition run back to back: their ratio survives the machine's
        # speed drifting between repetitions better than the difference of medians does.
        # Where the difference is: user space or the kernel (stime).
        split = lambda rs: (med([r["gw_us"] - r["gw_sys_us"] for r in rs]), med([r["gw_sys_us"] for r in rs]))
        (ru, rk), (nu, nk) = split(g["relay"]), split(g["nginx-s3"])
        out.append("- gateway user / kernel µs/req (medians): relay %.1f / %.1f, nginx S3 %.1f / %.1f "
                   "(difference %+.1f in user space, %+.1f in the kernel)" % (ru, rk, nu, nk, ru - nu, rk - nk))
        ratios = [d["relay"] / d["nginx-s3"] for d in pairs if d["nginx-s3"]]
        if ratios:
            out.append("- relay / nginx S3 per repetition: %s (median %.2f)" % (
                ", ".join("%.2f" % x for x in ratios), statistics.median(ratios)))
    if "relay" in g and "relay-b" in g:
        by_rep = {}
        for r in g["relay"] + g["relay-b"]:
            by_rep.setdefault(r["rep"], {})[r["cell"]] = r
        pairs = [d for _, d in sorted(by_rep.items()) if len(d) == 2]
        diffs = [d["relay"]["gw_us"] - d["relay-b"]["gw_us"] for d in pairs]
        user = [(d["relay"]["gw_us"] - d["relay"]["gw_sys_us"]) - (d["relay-b"]["gw_us"] - d["relay-b"]["gw_sys_us"])
                for d in pairs]
        if diffs:
            out.append("- **relay − relay-b gateway, per repetition: %s; median %+.1f µs/req** (user space %+.1f), "
                       "relay lower in %d of %d" % (", ".join("%+.1f" % x for x in diffs), statistics.median(diffs),
                                                    statistics.median(user), sum(1 for x in diffs if x < 0), len(diffs)))
    return "\n".join(out)


def full(rows):
    out = ["| rep | cell | req/s | p50 ms | p99 ms | non-2xx | sock err | cpu0 busy | cpu1 busy | cpu1 µs/req "
           "| gateway µs/req | upstream µs/req | Redis µs/req | PostgreSQL µs/req | all µs/req | new conns / 1k req | TCP retransmits | foreign | steal | tries |",
           "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    f1 = lambda v: "–" if v is None else "%.1f" % v
    for r in rows:
        out.append("| %d | %s | %.0f | %.3f | %.3f | %d | %d | %.0f%% | %.0f%% | %.1f | %s | %.1f | %.1f | %.1f | %.1f | %.0f | %d | %.1f%% | %.1f%% | %d |" % (
            r["rep"], r["cell"], r["rps"], r["p50"], r["p99"], r["non2xx"], r["sockerr"], r["cpu0"], r["cpu1"],
            r["cpu1_us"], f1(r["gw_us"]), r["up_us"], r["redis_us"], r["pg_us"], r["all_us"], r["conn_per_1k"],
            r["retrans"], r["foreign"], r["steal"], r["tries"]))
    return "\n".join(out)


def line(r):
    gw = "" if r["gw_us"] is None else "gateway %.1f us/req  " % r["gw_us"]
    return ("%.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d  %supstream %.1f  redis %.1f  pg %.1f  all %.1f us/req  "
            "cpu1 %.0f%%  new conns %.0f/1k req  retransmits %d  foreign %.1f%%  steal %.1f%%  tries %d" % (
                r["rps"], r["p50"], r["p99"], r["non2xx"] + r["sockerr"], gw, r["up_us"], r["redis_us"], r["pg_us"],
                r["all_us"], r["cpu1"], r["conn_per_1k"], r["retrans"], r["foreign"], r["steal"], r["tries"]))


if __name__ == "__main__":
    what, hz = sys.argv[1], float(sys.argv[2])
    if what == "line":
        print(line(parse(sys.stdin.readline(), hz)))
    else:
        rows = load(sys.argv[3], hz)
        print(summary(rows) if what == "summary" else full(rows))
