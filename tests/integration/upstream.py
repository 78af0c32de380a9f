#!/usr/bin/python3
"""Test upstream for skiff's integration tests: a small threaded HTTP/1.1
server (raw sockets, so it can misbehave on purpose) or a TCP echo server.

    upstream.py --port P [--name N] [--log FILE] [--mode http|tcpecho]
                [--fail-status N [--fail-every K]] [--delay-ms MS] [--hc-status N]

HTTP behaviour is chosen per request by the path (query string for knobs):
    /...                 default: echo the request as JSON
    ?sleep=S             (any path) sleep S seconds before answering
    ?close_after=1       answer with "Connection: close", then close
    ?drop_after=1        answer as keep-alive, then close the connection anyway
    /cl-te, /bad-chunk   responses with ambiguous / broken framing
    /head-chunked        chunked response (no body for HEAD)
    /304-cl              304 with a Content-Length and no body
    /eof-body?size=&v10= body delimited by connection close
    /many-headers?n=     n extra response headers
    /chunked?n=&size=&trailers=1   chunked response, optional trailers
    /big?size=N          Content-Length body, x-body-sha256 header
    /slow?chunks=N&delay=S         chunked response, one chunk every S seconds
    /sleep?s=S           sleep S seconds, then a 200 "slept"
    /status?code=N       that status, small body
    /reset               head + part of the body, then RST (SO_LINGER 0)
    /reset-now           RST without responding
    /close               close (FIN) without responding
    /malformed           garbage status line
    /head                (HEAD or GET) Content-Length 11, body only for GET
    /204, /304           no body
    ?sleep_attempt=N     with ?sleep: sleep only when x-envoy-attempt-count == N
    ?fail_attempts=N     answer 503 (or ?fail_code=) while x-envoy-attempt-count <= N
                         (after reading the body)
Per-instance behaviour (command line, or at runtime with the control endpoint):
    --fail-status N      answer N to every K-th (--fail-every, default 1) request
    --delay-ms MS        delay every answer by MS milliseconds
    --hc-status N        status of GET /healthz (default 200)
    POST /__control      JSON body {"fail_status", "fail_every", "delay_ms",
                         "hc_status", "reset_stats": true}; answers the state
    GET /__stats         JSON counters: requests, inflight, max_inflight,
                         max_inflight_retry (x-envoy-attempt-count > 1),
                         conns_open, max_conns_open
/healthz and /__* requests are not counted in /__stats, never delayed or
failed, and /__* requests are not logged.
Any request with "Upgrade: websocket" gets a 101 and then a raw byte echo.
"Expect: 100-continue" gets an interim 100 before the body is read.
Every request seen is appended to --log as one JSON line (method, path,
headers) before it is answered, so tests can check what reached the upstream.
"""
import argparse
import base64
import hashlib
import itertools
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse

ARGS = None
LOG_LOCK = threading.Lock()
CONN_IDS = itertools.count(1)

# per-instance behaviour and counters (guarded by STATE_LOCK)
STATE_LOCK = threading.Lock()
STATE = {"fail_status": 0, "fail_every": 1, "delay_ms": 0, "hc_status": 200}
COUNTERS = {"requests": 0, "inflight": 0, "max_inflight": 0, "inflight_retry": 0,
            "max_inflight_retry": 0, "conns_open": 0, "max_conns_open": 0}


def _count(key, delta):
    """Adjust a gauge and its max_ twin (caller does not hold the lock)."""
    with STATE_LOCK:
        COUNTERS[key] += delta
        mk = "max_" + key
        if mk in COUNTERS and COUNTERS[key] > COUNTERS[mk]:
            COUNTERS[mk] = COUNTERS[key]


def reset_counters():
    with STATE_LOCK:
        for k in COUNTERS:
            if k.startswith("max_") or k == "requests":
                COUNTERS[k] = 0
        COUNTERS["max_inflight"] = COUNTERS["inflight"]
        COUNTERS["max_inflight_retry"] = COUNTERS["inflight_retry"]
        COUNTERS["max_conns_open"] = COUNTERS["conns_open"]


class BadRequest(Exception):
    pass


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError
        self.buf += d

    def line(self, limit=65536):
        while b"\r\n" not in self.buf:
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        out = []
        while n > 0:
            if not self.buf:
                self._fill()
            take = self.buf[:n]
            self.buf = self.buf[len(take):]
            n -= len(take)
            out.append(take)
        return b"".join(out)


def log_request(rec):
    if not ARGS.log:
        return
    with LOG_LOCK:
        with open(ARGS.log, "a") as f:
            f.write(json.dumps(rec) + "\n")


def read_headers(r):
    hdrs = []
    while True:
        ln = r.line()
        if ln == b"":
            return hdrs
        k, _, v = ln.partition(b":")
        hdrs.append((k.decode("latin-1"), v.strip().decode("latin-1")))


def hget(hdrs, name):
    for k, v in hdrs:
        if k.lower() == name:
            return v
    return None


def read_body(r, hdrs):
    """Returns (body, trailers)."""
    te = hget(hdrs, "transfer-encoding")
    if te and "chunked" in te.lower():
        parts = []
        while True:
            szl = r.line().split(b";")[0].strip()
            sz = int(szl, 16)
            if sz == 0:
                break
            parts.append(r.exact(sz))
            if r.exact(2) != b"\r\n":
                raise BadRequest("bad chunk end")
        trailers = read_headers(r)
        return b"".join(parts), trailers
    cl = hget(hdrs, "content-length")
    if cl:
        return r.exact(int(cl)), []
    return b"", []


def send(sock, data):
    sock.sendall(data)


def response(status, reason, headers, body=b"", head_only=False):
    out = ["HTTP/1.1 %d %s" % (status, reason)]
    have_len = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers)
    if not have_len and status not in (204, 304) and status >= 200:
        headers = headers + [("Content-Length", str(len(body)))]
    for k, v in headers:
        out.append("%s: %s" % (k, v))
    data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
    if not head_only:
        data += body
    return data


def pattern(n):
    """Deterministic bytes of length n."""
    block = hashlib.sha256(b"skiff").digest() * 2048  # 64 KiB
    reps = n // len(block) + 1
    return (block * reps)[:n]


def rst(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def ws_accept(key):
    return base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()


def handle_conn(sock, addr):
    conn_id = next(CONN_IDS)
    r = Reader(sock)
    nreq = 0
    counted = False  # conns_open counts connections that carried traffic (not /healthz, /__*)
    try:
        while True:
            try:
                line = r.line()
            except EOFError:
                return
            if line == b"":
                continue
            parts = line.decode("latin-1").split(" ")
            if len(parts) != 3:
                send(sock, response(400, "Bad Request", [("Connection", "close")], b"bad line"))
                return
            method, target, version = parts
            hdrs = read_headers(r)
            nreq += 1
            u = urllib.parse.urlsplit(target)
            q = dict(urllib.parse.parse_qsl(u.query))
            path = u.path
            if path.startswith("/__"):
                body, _ = read_body(r, hdrs)
                if path == "/__control" and method == "POST":
                    req = json.loads(body or b"{}")
                    with STATE_LOCK:
                        for k in ("fail_status", "fail_every", "delay_ms", "hc_status"):
                            if k in req:
                                STATE[k] = int(req[k])
                    if req.get("reset_stats"):
                        reset_counters()
                    with STATE_LOCK:
                        out = dict(STATE)
                elif path == "/__stats":
                    with STATE_LOCK:
                        out = dict(COUNTERS)
                else:
                    send(sock, response(404, "Not Found", [], b"no such control"))
                    continue
                send(sock, response(200, "OK", [("Content-Type", "application/json")],
                                    json.dumps(out).encode()))
                continue
            log_request({"method": method, "path": target, "version": version,
                         "headers": hdrs, "server": ARGS.name, "conn": conn_id})
            if path == "/healthz":
                read_body(r, hdrs)
                with STATE_LOCK:
                    hcs = STATE["hc_status"]
                send(sock, response(hcs, "Health", [("x-served-by", ARGS.name)], b"health %d" % hcs,
                                    method == "HEAD"))
                continue
            try:
                attempt = int(hget(hdrs, "x-envoy-attempt-count") or "1")
            except ValueError:
                attempt = 1
            retry_attempt = attempt > 1
            if not counted:
                counted = True
                _count("conns_open", 1)
            with STATE_LOCK:
                COUNTERS["requests"] += 1
                nth = COUNTERS["requests"]
                fail_status, fail_every = STATE["fail_status"], max(1, STATE["fail_every"])
                delay_ms = STATE["delay_ms"]
            _count("inflight", 1)
            if retry_attempt:
                _count("inflight_retry", 1)
            try:
                if handle_request(sock, r, method, target, version, hdrs, q, path, conn_id, nreq,
                                  addr, attempt, fail_status if nth % fail_every == 0 else 0,
                                  delay_ms):
                    return
            finally:
                _count("inflight", -1)
                if retry_attempt:
                    _count("inflight_retry", -1)
    except (EOFError, ConnectionError, BrokenPipeError, BadRequest, OSError, ValueError):
        return
    finally:
        if counted:
            _count("conns_open", -1)
        try:
            sock.close()
        except OSError:
            pass


def handle_request(sock, r, method, target, version, hdrs, q, path, conn_id, nreq, addr, attempt,
                   fail_status, delay_ms):
    """Answer one request. Returns True when the connection must be closed."""
    if (hget(hdrs, "upgrade") or "").lower() == "websocket":
        key = hget(hdrs, "sec-websocket-key") or ""
        send(sock, response(101, "Switching Protocols", [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", ws_accept(key)), ("x-served-by", ARGS.name)]))
        if r.buf:
            send(sock, r.buf)
            r.buf = b""
        while True:
            d = sock.recv(65536)
            if not d:
                break
            send(sock, d)
        sock.shutdown(socket.SHUT_WR)
        return True

    if "sleep" in q and ("sleep_attempt" not in q or int(q["sleep_attempt"]) == attempt):
        time.sleep(float(q["sleep"]))
    if delay_ms:
        time.sleep(delay_ms / 1000.0)
    if path == "/reset-now":
        rst(sock)
        return True
    if path == "/close":
        sock.close()
        return True

    expect = (hget(hdrs, "expect") or "").lower()
    saw_expect = expect == "100-continue"
    if saw_expect:
        send(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
    body, trailers = read_body(r, hdrs)
    keep = not ((hget(hdrs, "connection") or "").lower() == "close" or version == "HTTP/1.0"
                or q.get("close_after"))
    common = [("x-served-by", ARGS.name), ("x-conn-id", str(conn_id))]
    if not keep:
        common.append(("Connection", "close"))
    head_only = method == "HEAD"

    if "fail_attempts" in q and attempt <= int(q["fail_attempts"]):
        fail_status = int(q.get("fail_code", "503"))
    if fail_status:
        send(sock, response(fail_status, "Injected", common + [("x-injected-failure", "1")],
                            b"injected %d" % fail_status, head_only))
    elif path == "/chunked":
        n = int(q.get("n", "3"))
        size = int(q.get("size", "10"))
        total = pattern(n * size)
        out = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"]
        if q.get("trailers"):
            out.append(b"Trailer: x-checksum, x-extra\r\n")
        for k, v in common:
            out.append(("%s: %s\r\n" % (k, v)).encode())
        out.append(b"\r\n")
        for i in range(n):
            c = total[i * size:(i + 1) * size]
            out.append(b"%x\r\n%s\r\n" % (len(c), c))
        out.append(b"0\r\n")
        if q.get("trailers"):
            out.append(("x-checksum: %s\r\nx-extra: yes\r\n" % hashlib.sha256(total).hexdigest()).encode())
        out.append(b"\r\n")
        send(sock, b"".join(out))
    elif path == "/big":
        size = int(q.get("size", "1048576"))
        data = pattern(size)
        send(sock, response(200, "OK", common + [("x-body-sha256", hashlib.sha256(data).hexdigest())], data, head_only))
    elif path == "/slow":
        n = int(q.get("chunks", "3"))
        delay = float(q.get("delay", "0.3"))
        hdr = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
        for k, v in common:
            hdr += ("%s: %s\r\n" % (k, v)).encode()
        send(sock, hdr + b"\r\n")
        for i in range(n):
            time.sleep(delay)
            c = b"chunk%d\n" % i
            send(sock, b"%x\r\n%s\r\n" % (len(c), c))
        send(sock, b"0\r\n\r\n")
    elif path == "/sleep":
        time.sleep(float(q.get("s", "1")))
        send(sock, response(200, "OK", common, b"slept", head_only))
    elif path == "/status":
        code = int(q.get("code", "500"))
        send(sock, response(code, "Status", common, b"status %d" % code, head_only))
    elif path == "/reset":
        send(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        time.sleep(0.05)
        rst(sock)
        return True
    elif path == "/malformed":
        send(sock, b"HTTP/1.1 abc\r\nthis is not : a valid\r\n response\r\n\r\n")
        time.sleep(0.05)
        sock.close()
        return True
    elif path == "/cl-te":
        send(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        time.sleep(0.05)
        return True
    elif path == "/bad-chunk":
        send(sock, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        time.sleep(0.05)
        return True
    elif path == "/head-chunked":
        hdr = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-served-by: %s\r\n\r\n" % ARGS.name.encode()
        send(sock, hdr if head_only else hdr + b"5\r\nhello\r\n0\r\n\r\n")
    elif path == "/304-cl":
        send(sock, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: \"x\"\r\n\r\n")
    elif path == "/eof-body":
        ver = b"HTTP/1.0" if q.get("v10") else b"HTTP/1.1"
        send(sock, ver + b" 200 OK\r\nx-served-by: %s\r\n\r\n" % ARGS.name.encode() + pattern(int(q.get("size", "1000"))))
        sock.shutdown(socket.SHUT_WR)
        return True
    elif path == "/many-headers":
        n = int(q.get("n", "50"))
        hs = [("x-h%d" % i, "v%d" % i) for i in range(n)]
        send(sock, response(200, "OK", common + hs, b"ok", head_only))
    elif path == "/head":
        send(sock, response(200, "OK", common + [("Content-Length", "11")], b"hello world", head_only))
    elif path == "/204":
        send(sock, response(204, "No Content", common))
    elif path == "/304":
        send(sock, response(304, "Not Modified", common + [("ETag", '"abc"')]))
    else:
        rec = {
            "server": ARGS.name,
            "conn": conn_id,
            "req_on_conn": nreq,
            "method": method,
            "path": target,
            "version": version,
            "headers": hdrs,
            "trailers": trailers,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body[:4096].decode("latin-1"),
            "saw_expect": saw_expect,
            "peer": "%s:%d" % addr[:2],
        }
        data = json.dumps(rec).encode()
        extra = [("Content-Type", "application/json")]
        if q.get("echo_body"):
            data = body
            extra = [("Content-Type", "application/octet-stream"),
                     ("x-body-sha256", hashlib.sha256(body).hexdigest())]
            if q.get("chunked"):
                out = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"]
                for k, v in common + extra:
                    out.append(("%s: %s\r\n" % (k, v)).encode())
                out.append(b"\r\n")
                for i in range(0, len(data), 65536):
                    c = data[i:i + 65536]
                    out.append(b"%x\r\n%s\r\n" % (len(c), c))
                out.append(b"0\r\n\r\n")
                send(sock, b"".join(out))
                if not keep:
                    return True
                return False
        send(sock, response(200, "OK", common + extra, data, head_only))
    if not keep or q.get("drop_after"):
        return True
    return False


def handle_tcp_echo(sock, addr):
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                break
            sock.sendall(d)
        sock.shutdown(socket.SHUT_WR)
        # wait for the peer to close
        sock.settimeout(30)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="up")
    p.add_argument("--log", default=None)
    p.add_argument("--mode", default="http", choices=["http", "tcpecho"])
    p.add_argument("--fail-status", type=int, default=0)
    p.add_argument("--fail-every", type=int, default=1)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--hc-status", type=int, default=200)
    ARGS = p.parse_args()
    STATE.update(fail_status=ARGS.fail_status, fail_every=ARGS.fail_every, delay_ms=ARGS.delay_ms,
                 hc_status=ARGS.hc_status)
    ls = socket.socket(socket.AF_INET6 if ":" in ARGS.host else socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ARGS.host, ARGS.port))
    ls.listen(512)
    handler = handle_conn if ARGS.mode == "http" else handle_tcp_echo
    sys.stdout.write("listening %s:%d\n" % (ARGS.host, ARGS.port))
    sys.stdout.flush()
    while True:
        s, a = ls.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handler, args=(s, a), daemon=True).start()


if __name__ == "__main__":
    main()
