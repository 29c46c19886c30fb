#!/usr/bin/python3
"""A real, deliberately misbehaving upstream HTTP/1.1 server for the proxy
tests (Python stdlib only). Run as its own process:

    /usr/bin/python3 upstream_server.py [--port N]

It prints "READY <port>" on stdout once it listens (port 0 / no --port picks
a free one) and serves until killed. The behaviour is chosen per request by
the path; the first path segment that names a behaviour selects it, so a
proxied "/v1/status/500" works like "/status/500". Anything else echoes.

  /ok (and any unknown path)  200 JSON echo: method, path, query, args,
                              headers, header_list, body, port, conn, request
  /status/<n>[?detail=..]     status n; with detail, a FastAPI-style
                              {"detail": ...} JSON body
  /stall/<seconds>            reads the request, then says nothing; closes
  /slow/<seconds>             waits before the head, then echoes like /ok
  /reset-mid-body             head with Content-Length: 1000, 10 bytes, close
  /garbage                    200 text/plain that is not JSON
  /sse?n=10&interval=0.1      chunked text/event-stream, one event per interval
  /hop                        a 200 carrying hop-by-hop response headers
  /_stats                     {"connections", "requests", "in_flight",
                              "sse_started", "sse_completed", "sse_aborted",
                              "seen": ["METHOD /path?query", ...]}

"connections" counts accepted TCP connections, minus those opened only to ask
for /_stats; "requests" counts every request except /_stats.
"""
import argparse
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
STATS = {
    "connections": 0, "stats_connections": 0, "requests": 0, "in_flight": 0,
    "sse_started": 0, "sse_completed": 0, "sse_aborted": 0, "seen": [],
}


def bump(key, n=1):
    with LOCK:
        STATS[key] += n


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def process_request(self, request, client_address):
        with LOCK:
            STATS["connections"] += 1
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().process_request(request, client_address)


BEHAVIOURS = {"ok", "status", "stall", "slow", "reset-mid-body", "garbage",
              "sse", "hop", "_stats"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "upstream-test/1"

    def setup(self):
        super().setup()
        with LOCK:
            STATS.setdefault("conn_serial", 0)
            STATS["conn_serial"] += 1
            self.conn_id = STATS["conn_serial"]
        self.requests_on_conn = 0

    def log_message(self, fmt, *args):
        pass

    # -- helpers -------------------------------------------------------------
    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body=b"", ctype="application/json", extra=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        if status not in (204, 304):
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        # Head and body in one write: no Nagle/delayed-ACK stall between them.
        self._headers_buffer.append(b"\r\n")
        if status not in (204, 304) and self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def echo(self, body):
        u = urlsplit(self.path)
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        return {
            "method": self.command, "path": u.path, "query": u.query,
            "args": {k: v if len(v) > 1 else v[0]
                     for k, v in parse_qs(u.query, keep_blank_values=True).items()},
            "headers": headers, "header_list": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"), "port": self.server.server_address[1],
            "conn": self.conn_id, "request": self.requests_on_conn,
        }

    # -- dispatch ------------------------------------------------------------
    def handle_any(self):
        self.requests_on_conn += 1
        u = urlsplit(self.path)
        segs = [s for s in u.path.split("/") if s]
        what, rest = "ok", []
        for i, s in enumerate(segs):
            if s in BEHAVIOURS:
                what, rest = s, segs[i + 1:]
                break
        args = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        if what == "_stats":
            self.read_body()
            with LOCK:
                if self.requests_on_conn == 1:
                    STATS["stats_connections"] += 1
                out = dict(STATS)
                out["seen"] = list(STATS["seen"])
                out["connections"] = STATS["connections"] - STATS["stats_connections"]
            return self.send(200, out)
        with LOCK:
            STATS["requests"] += 1
            STATS["in_flight"] += 1
            if len(STATS["seen"]) < 5000:
                STATS["seen"].append("%s %s" % (self.command, self.path))
        try:
            body = self.read_body()
            getattr(self, "do_" + what.replace("-", "_"))(rest, args, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            bump("in_flight", -1)

    def do_ok(self, rest, args, body):
        self.send(200, self.echo(body))

    def do_status(self, rest, args, body):
        code = int(rest[0]) if rest else 200
        if "detail" in args:
            self.send(code, {"detail": args["detail"]})
        else:
            self.send(code, b"")

    def do_stall(self, rest, args, body):
        time.sleep(float(rest[0]) if rest else 30)
        self.close_connection = True

    def do_slow(self, rest, args, body):
        time.sleep(float(rest[0]) if rest else 1)
        self.send(200, self.echo(body))

    def do_reset_mid_body(self, rest, args, body):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        self.wfile.flush()
        time.sleep(0.05)
        self.close_connection = True

    def do_garbage(self, rest, args, body):
        self.send(200, "<html>this is {not json", ctype="application/json")

    def do_hop(self, rest, args, body):
        self.send(200, {"hop": True}, extra=(
            ("Connection", "X-Up-Hop"), ("X-Up-Hop", "secret"),
            ("Keep-Alive", "timeout=5, max=100"), ("Upgrade", "h2c"),
            ("Trailer", "X-Trailer"), ("X-Normal", "yes"), ("X-Request-ID", "upstream-id"),
            ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")))

    def do_sse(self, rest, args, body):
        n = int(args.get("n", 10))
        interval = float(args.get("interval", 0.1))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        bump("sse_started")
        try:
            for i in range(n):
                ev = ("id: %d\ndata: {\"i\": %d, \"t\": %.3f}\n\n" % (i, i, time.time())).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                self.wfile.flush()
                if i < n - 1:
                    time.sleep(interval)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            bump("sse_aborted")
            self.close_connection = True
            return
        bump("sse_completed")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--key", help="the certificate's private key (PEM)")
    a = ap.parse_args()
    srv = Server((a.host, a.port), Handler)
    if a.cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("READY %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
