#!/usr/bin/env python3
"""Slow answers in moongate access logs (JSON lines with latency_ms), for bench/run-relay.sh.
Usage: slow.py NAME=LOG [NAME=LOG ...] -> one markdown line per log: answers logged,
median, p99, max latency_ms and how many took longer than 100 ms and 1 s. latency_ms
is the server's own time for the request (read to answer written), so a slow answer
here happened inside that process, not in the client or on the way."""
import json
import sys


def main(args):
    for a in args:
        name, _, path = a.partition("=")
        lat = []
        with open(path, errors="replace") as f:
            for line in f:
                if '"latency_ms"' not in line:
                    continue
                try:
                    lat.append(float(json.loads(line)["latency_ms"]))
                except (ValueError, KeyError, TypeError):
                    pass
        if not lat:
            print("- %s: no access-log lines" % name)
            continue
        lat.sort()
        print("- %s (its access log): %d answers, latency_ms median %.2f, p99 %.2f, max %.0f; %d took > 100 ms, %d > 1 s"
              % (name, len(lat), lat[len(lat) // 2], lat[int(0.99 * (len(lat) - 1))], lat[-1],
                 sum(1 for x in lat if x > 100), sum(1 for x in lat if x > 1000)))


if __name__ == "__main__":
    main(sys.argv[1:])
