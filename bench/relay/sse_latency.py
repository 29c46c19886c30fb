#!/usr/bin/env python3
"""The latency the AI proxy relay adds to each streamed (SSE) chunk.

Method. A timestamping TCP tap (a separate process, started here, pinned with
--tap-cpu to the core of the mock and the relay) sits in front of the mock
provider: TAP_PORT -> MOCK_PORT. For every SSE event the mock writes, the tap
notes the time its bytes came out of recv() (CLOCK_MONOTONIC, ns) and passes
them on at once (it parses them only at the end). The same stream request
(chat, "stream": true, mock chunks=N, delay_ms=D) is then made
  direct:  client -> tap -> mock
  relay:   client -> relay -> tap -> mock   (the relay's channel for MODEL points
                                            at the tap)
and the client (on the other core) notes when each event arrives (same clock).
For every event i of every stream, latency[i] = arrival_at_client[i] -
left_the_mock[i], the events matched by content (role chunk, word wK, finish
chunk, [DONE]). Direct, that is the tap's send, one loopback hop and the
client's wake-up on the other core; through the relay, the same plus the
relay's wake-up (on the server core), its work on the chunk and one more
loopback hop. The relay's added latency per chunk = (relay figure) - (direct
figure), for the median and the p99 over all chunks of all measured streams.
The mock's own timing (when it writes a chunk, how steady its D ms are) is
outside the measurement: each chunk is timed from the moment it left the mock.

Streams alternate direct/relay; the first --warmup of each are not counted.
Prints a markdown table; --json and --events save the figures and every event.
Standard library only."""
import argparse
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time

now = time.monotonic_ns


class HttpStream:
    """Incremental HTTP/1.1 response parser (keep-alive: several responses in a
    row): de-chunks the body, splits it into SSE events and returns the new
    events' keys."""

    def __init__(self):
        self.buf = b""
        self.state = "head"
        self.left = 0          # bytes left in the current chunk / content-length body
        self.chunked = False
        self.body = b""        # de-chunked body not yet split into events
        self.done = False      # a full response ended

    def feed(self, data):
        self.buf += data
        events = []
        while True:
            if self.state == "head":
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    break
                head = self.buf[:i].decode("latin-1").lower()
                self.buf = self.buf[i + 4:]
                self.chunked = "transfer-encoding: chunked" in head
                self.left = 0
                for line in head.split("\r\n"):
                    if line.startswith("content-length:"):
                        self.left = int(line.split(":", 1)[1])
                self.state = "size" if self.chunked else "data"
                if not self.chunked and self.left == 0:
                    self.state, self.done = "head", True
            elif self.state == "size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                self.left = int(self.buf[:i].split(b";")[0], 16)
                self.buf = self.buf[i + 2:]
                self.state = "data" if self.left else "trailer"
            elif self.state == "data":
                if not self.buf:
                    break
                take = self.buf[:self.left]
                self.buf = self.buf[len(take):]
                self.left -= len(take)
                self.body += take
                events += self.split()
                if self.left == 0:
                    if self.chunked:
                        self.state = "crlf"
                    else:
                        self.state, self.done = "head", True
            elif self.state == "crlf":
                if len(self.buf) < 2:
                    break
                self.buf = self.buf[2:]
                self.state = "size"
            elif self.state == "trailer":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                line = self.buf[:i]
                self.buf = self.buf[i + 2:]
                if not line:
                    self.state, self.done = "head", True
        return events

    def split(self):
        out = []
        while True:
            i = self.body.find(b"\n\n")
            if i < 0:
                return out
            ev, self.body = self.body[:i], self.body[i + 2:]
            out.append(event_key(ev))


def event_key(ev):
    if not ev.startswith(b"data:"):
        return "other"
    payload = ev[5:].strip()
    if payload == b"[DONE]":
        return "done"
    try:
        obj = json.loads(payload)
    except ValueError:
        return "bad-json"
    choices = obj.get("choices")
    if not choices:
        return "usage" if obj.get("usage") else "other"
    c = choices[0]
    if c.get("finish_reason"):
        return "finish"
    delta = c.get("delta") or {}
    if "role" in delta:
        return "role"
    piece = delta.get("content", c.get("text"))
    return piece.strip() if isinstance(piece, str) and piece.strip() else "other"


# --- the tap (its own process) ------------------------------------------------------
def tap_main(port, mock_port, out_path, cpu):
    """TAP_PORT -> MOCK_PORT; writes "t_ns key" for each event the mock sends.
    While running it only stamps and forwards (the bytes are parsed at the end),
    so it takes as little CPU as possible from the core it shares with the mock
    and the relay."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    raw = []               # (connection number, t_ns, bytes from the mock)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    sel.register(ls, selectors.EVENT_READ, ("accept", None, 0))
    print("tap ready", flush=True)
    conns = 0
    while not stop:
        ready = sel.select(0.2)
        for key, _ in ready:
            kind, other, n = key.data
            if kind == "accept":
                c, _ = ls.accept()
                u = socket.create_connection(("127.0.0.1", mock_port))
                for s in (c, u):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns += 1
                sel.register(c, selectors.EVENT_READ, ("down", u, conns))
                sel.register(u, selectors.EVENT_READ, ("up", c, conns))
                continue
            s = key.fileobj
            if s.fileno() < 0:     # closed above, with its peer, in this same round
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            t = now()
            if not data:
                for x in (s, other):
                    try:
                        sel.unregister(x)
                    except (KeyError, ValueError):
                        pass
                    x.close()
                continue
            try:
                other.sendall(data)
            except OSError:        # the other side went away: the next recv() sees it
                pass
            if kind == "up":
                raw.append((n, t, data))
    parsers = {}
    with open(out_path, "w") as f:
        for n, t, data in raw:
            for k in parsers.setdefault(n, HttpStream()).feed(data):
                f.write("%d\t%s\n" % (t, k))


# --- the client ----------------------------------------------------------------------
def stream_once(port, key, model, chunks, delay_ms):
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": "hello there"}],
                       "mock": {"chunks": chunks, "delay_ms": delay_ms}}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
           b"\r\n\r\n" + body)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    parser = HttpStream()
    events = []
    t0 = now()
    s.sendall(req)
    status = None
    while True:
        data = s.recv(65536)
        t = now()
        if not data:
            break
        if status is None:
            status = data.split(b" ", 2)[1].decode()
        for k in parser.feed(data):
            events.append((t, k))
        if events and events[-1][1] == "done":
            break
    s.close()
    return {"t_send": t0, "t_end": now(), "status": status, "events": events}


def pct(vals, p):
    v = sorted(vals)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tap-port", type=int, required=True)
    ap.add_argument("--mock-port", type=int, required=True)
    ap.add_argument("--relay-port", type=int)
    ap.add_argument("--key", help="the relay token, sk-...")
    ap.add_argument("--direct-key", default="sk-direct")
    ap.add_argument("--model", default="gpt-4o-mini", help="the model whose relay channel is the tap")
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--delay-ms", type=int, default=5)
    ap.add_argument("--streams", type=int, default=10, help="measured streams per path")
    ap.add_argument("--warmup", type=int, default=3, help="uncounted streams per path first")
    ap.add_argument("--json")
    ap.add_argument("--events")
    ap.add_argument("--tap-cpu", type=int, help="pin the tap to this CPU (the mock's and the relay's)")
    ap.add_argument("--serve-tap", metavar="RECORDS_FILE", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_tap:
        return tap_main(a.tap_port, a.mock_port, a.serve_tap, a.tap_cpu)

    rec_path = "%s.tap.%d" % (a.json or "/tmp/sse_latency", os.getpid())
    tap = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-tap", rec_path,
                            "--tap-port", str(a.tap_port), "--mock-port", str(a.mock_port)] +
                           (["--tap-cpu", str(a.tap_cpu)] if a.tap_cpu is not None else []),
                           stdout=subprocess.PIPE, text=True)
    try:
        if tap.stdout.readline().strip() != "tap ready":
            sys.exit("the tap did not start")
        paths = [("direct", a.tap_port, a.direct_key)]
        if a.relay_port:
            paths.append(("relay", a.relay_port, a.key))
        runs = []
        for i in range(a.warmup + a.streams):
            order = paths if i % 2 == 0 else paths[::-1]
            for name, port, key in order:
                r = stream_once(port, key, a.model, a.chunks, a.delay_ms)
                r["path"], r["warmup"] = name, i < a.warmup
                if r["status"] != "200":
                    sys.exit("%s stream answered %s" % (name, r["status"]))
                runs.append(r)
                time.sleep(0.05)
    finally:
        tap.send_signal(signal.SIGTERM)
        tap.wait(10)
    tap_recs = []
    with open(rec_path) as f:
        for line in f:
            t, k = line.rstrip("\n").split("\t")
            tap_recs.append((int(t), k))
    os.unlink(rec_path)

    want = ["role"] + ["w%d" % i for i in range(1, a.chunks + 1)] + ["finish", "done"]
    lat = {name: [] for name, _, _ in paths}
    per_stream = {name: [] for name, _, _ in paths}   # each measured stream's median, in order
    ttfb = {name: [] for name, _, _ in paths}
    gaps = []
    rows = []
    for n, r in enumerate(runs):
        left = {}
        for t, k in tap_recs:
            if r["t_send"] <= t <= r["t_end"]:
                left.setdefault(k, t)
        got = {}
        for t, k in r["events"]:
            got.setdefault(k, t)
        missing = [k for k in want if k not in got or k not in left]
        if missing:
            sys.exit("stream %d (%s): events missing at the client or the tap: %s" % (n, r["path"], missing[:5]))
        ts = [left[k] for k in want]
        if not r["warmup"]:
            gaps += [(b - a2) / 1e3 for a2, b in zip(ts, ts[1:])]
            ttfb[r["path"]].append((got["role"] - r["t_send"]) / 1e3)
        ds = []
        for k in want:
            d = (got[k] - left[k]) / 1e3
            ds.append(d)
            rows.append((n, r["path"], int(r["warmup"]), k, left[k], got[k], d))
        if not r["warmup"]:
            lat[r["path"]] += ds
            per_stream[r["path"]].append(statistics.median(ds))

    res = {"chunks": a.chunks, "delay_ms": a.delay_ms, "streams": a.streams, "warmup": a.warmup,
           "events_per_stream": len(want), "mock_gap_us_median": statistics.median(gaps)}
    for name in lat:
        v = lat[name]
        res[name] = {"n": len(v), "median": statistics.median(v), "p90": pct(v, 90), "p99": pct(v, 99),
                     "max": max(v), "mean": statistics.mean(v), "ttfb_median": statistics.median(ttfb[name]),
                     "stream_medians": per_stream[name]}
    if "relay" in res:
        res["added_median"] = res["relay"]["median"] - res["direct"]["median"]
        res["added_p99"] = res["relay"]["p99"] - res["direct"]["p99"]

    print("| path | chunks timed | median µs | p90 µs | p99 µs | max µs | first event after the request (median) |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name in lat:
        x = res[name]
        print("| %s | %d | %.0f | %.0f | %.0f | %.0f | %.2f ms |" % (
            "client ← tap ← mock (direct)" if name == "direct" else "client ← relay ← tap ← mock",
            x["n"], x["median"], x["p90"], x["p99"], x["max"], x["ttfb_median"] / 1e3))
    print()
    print("- per chunk: arrival at the client − the moment the chunk left the mock (recv() in the tap), same clock; "
          "%d streams per path (after %d warm-up streams each), %d events each (role, %d words, finish, [DONE]), "
          "the mock's events %.2f ms apart (median)." % (a.streams, a.warmup, len(want), a.chunks,
                                                         res["mock_gap_us_median"] / 1e3))
    for name in lat:
        print("- each %s stream's median, in order (µs): %s" % (
            name, " ".join("%.0f" % m for m in per_stream[name])))
    if "relay" in res:
        print("- **added by the relay per chunk: median %+.0f µs, p99 %+.0f µs** (relay − direct). Target < 100 µs: %s." % (
            res["added_median"], res["added_p99"], "met" if res["added_median"] < 100 else "NOT met"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.events:
        with open(a.events, "w") as f:
            f.write("stream\tpath\twarmup\tevent\tleft_mock_ns\tat_client_ns\tlatency_us\n")
            for row in rows:
                f.write("%d\t%s\t%d\t%s\t%d\t%d\t%.1f\n" % row)


if __name__ == "__main__":
    main()
