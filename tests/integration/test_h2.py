"""Downstream HTTP/2 (h2c, prior knowledge) through skiff to HTTP/1.1 upstreams:
curl, nghttp, h2load and python3-h2 at the frame level."""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

import helpers
from helpers import RawConn, curl, free_port, route, simple_http, wait_for

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# ASan's quarantine keeps freed memory resident: RSS bounds mean nothing there
CHECK_RSS = not os.environ.get("SKIFF_SANITIZED")


def pattern(n):
    """Same bytes as upstream.py's pattern()."""
    block = hashlib.sha256(b"skiff").digest() * 2048
    return (block * (n // len(block) + 1))[:n]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


class H2Client:
    """A small blocking HTTP/2 client on python3-h2 (one connection)."""

    def __init__(self, port, settings=None, timeout=10.0, auto_ack=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.c = h2.connection.H2Connection(cfg)
        self.c.initiate_connection()
        if settings:
            self.c.update_settings(settings)
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.auto_ack = auto_ack
        self.on_data = None
        self.flush()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def flush(self):
        d = self.c.data_to_send()
        if d:
            self.sock.sendall(d)

    def request(self, path, method="GET", headers=(), body=None, end=True, authority="test"):
        sid = self.c.get_next_available_stream_id()
        hs = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)]
        hs += list(headers)
        self.streams[sid] = {"headers": None, "data": [], "trailers": None, "ended": False,
                             "reset": None}
        self.c.send_headers(sid, hs, end_stream=(body is None and end))
        self.flush()
        if body is not None:
            self.send_body(sid, body, end)
        return sid

    def send_body(self, sid, body, end=True):
        mv = memoryview(body)
        while len(mv):
            win = min(self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size)
            if win <= 0:
                self.step()
                if self.streams[sid]["reset"] is not None:
                    return
                continue
            n = min(win, len(mv))
            self.c.send_data(sid, mv[:n].tobytes())
            mv = mv[n:]
            self.flush()
        if end:
            self.c.end_stream(sid)
            self.flush()

    def step(self):
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise EOFError("connection closed")
        for ev in self.c.receive_data(data):
            self._event(ev)
        self.flush()

    def _event(self, ev):
        s = self.streams.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived):
            if s is not None:
                s["headers"] = ev.headers
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            pass
        elif isinstance(ev, h2.events.DataReceived):
            if s is not None:
                s["data"].append(ev.data)
            if self.on_data:
                self.on_data(ev)
            if self.auto_ack:
                self.ack(ev)
        elif isinstance(ev, h2.events.TrailersReceived):
            if s is not None:
                s["trailers"] = ev.headers
        elif isinstance(ev, h2.events.StreamEnded):
            if s is not None:
                s["ended"] = True
        elif isinstance(ev, h2.events.StreamReset):
            if s is not None:
                s["reset"] = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def ack(self, ev):
        if ev.flow_controlled_length:
            try:
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            except h2.exceptions.StreamClosedError:
                pass

    def wait(self, sid, timeout=20.0):
        deadline = time.monotonic() + timeout
        s = self.streams[sid]
        while not s["ended"] and s["reset"] is None:
            if time.monotonic() > deadline:
                raise TimeoutError("stream %d did not finish" % sid)
            self.step()
        return s

    def get(self, path, **kw):
        return self.wait(self.request(path, **kw))


def status(s):
    return int(dict(s["headers"])[":status"])


def hdr(s, name):
    return dict(s["headers"]).get(name)


def body(s):
    return b"".join(s["data"])


def h2curl(*args, timeout=30):
    return curl("--http2-prior-knowledge", *args, timeout=timeout)


@pytest.fixture
def h2proxy(make_proxy, upstream):
    s = make_proxy([upstream.port])
    s.upstream = upstream
    return s


# ---- curl --------------------------------------------------------------------------

def test_curl_get(h2proxy):
    r = h2curl("-D", "-", h2proxy.url + "/hello?x=1", "-H", "x-custom: abc")
    assert r.returncode == 0, r.stderr
    head, _, b = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200")
    rec = json.loads(b)
    assert rec["method"] == "GET" and rec["path"] == "/hello?x=1"
    assert rec["version"] == "HTTP/1.1"
    hs = {k.lower(): v for k, v in rec["headers"]}
    assert hs["host"] == "127.0.0.1:%d" % h2proxy.port
    assert hs["x-custom"] == "abc"
    assert hs["x-forwarded-proto"] == "http"
    assert "transfer-encoding" not in hs and rec["body_len"] == 0
    st = h2proxy.stats()
    assert st.get("downstream_cx_http2_total", 0) >= 1
    assert st.get("downstream_rq_2xx", 0) >= 1


def test_curl_post_1mb_both_ways(h2proxy, tmp_path):
    data = os.urandom(1 << 20)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    for q in ("echo_body=1", "echo_body=1&chunked=1"):
        out = tmp_path / "out.bin"
        r = h2curl("-sS", "-o", str(out), "-D", "-", "--data-binary", "@%s" % f,
                   h2proxy.url + "/up?" + q)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"HTTP/2 200"), r.stdout
        assert ("x-body-sha256: %s" % want).encode() in r.stdout
        assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    # the upstream got a Content-Length framed body (curl sends content-length)
    reqs = [q for q in h2proxy.upstream.requests() if q["method"] == "POST"]
    assert reqs and all(any(k.lower() == "content-length" and v == str(1 << 20)
                            for k, v in q["headers"]) for q in reqs)


def test_curl_download_big(h2proxy, tmp_path):
    out = tmp_path / "big.bin"
    r = h2curl("-o", str(out), "-D", "-", h2proxy.url + "/big?size=%d" % (5 << 20))
    assert r.returncode == 0, r.stderr
    m = re.search(rb"x-body-sha256: ([0-9a-f]+)", r.stdout)
    assert m and hashlib.sha256(out.read_bytes()).hexdigest() == m.group(1).decode()
    assert out.stat().st_size == 5 << 20


def test_curl_head(h2proxy):
    r = h2curl("-I", h2proxy.url + "/head")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/2 200")
    assert b"content-length: 11" in r.stdout.lower()


def test_local_reply_404_over_h2(make_proxy, upstream):
    s = make_proxy([upstream.port], routes=[route("/api", "up")])
    r = h2curl("-D", "-", s.url + "/nope")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/2 404")
    assert b"x-skiff-flags: NR" in r.stdout
    assert b"no route" in r.stdout
    # and a routed one on the same listener works
    r = h2curl("-o", "/dev/null", "-w", "%{http_code}", s.url + "/api/x")
    assert r.stdout == b"200"


def test_direct_response_and_head_local_reply(make_proxy, upstream):
    s = make_proxy([upstream.port], routes=[
        route("/direct", direct_response={"status": 201, "body": {"inline_string": "made"}}),
        route("/api", "up")])
    with_client = H2Client(s.port)
    try:
        a = with_client.get("/direct")
        assert status(a) == 201 and body(a) == b"made"
        b = with_client.get("/nothing", method="HEAD")
        assert status(b) == 404 and body(b) == b""
        assert hdr(b, "x-skiff-flags") == "NR"
    finally:
        with_client.close()


# ---- nghttp / h2load ---------------------------------------------------------------

def test_nghttp_concurrent_streams(h2proxy):
    urls = [h2proxy.url + p for p in ("/a", "/b", "/sleep?s=0.3", "/chunked?n=5&size=100",
                                      "/status?code=503", "/204")]
    r = subprocess.run(["nghttp", "-nv", "-t", "20"] + urls, capture_output=True, timeout=40)
    out = r.stdout.decode("latin-1")
    assert r.returncode == 0, out + r.stderr.decode()
    statuses = re.findall(r"recv \(stream_id=\d+\) :status: (\d+)", out)
    assert sorted(statuses) == sorted(["200", "200", "200", "200", "503", "204"]), out
    # all on one connection, concurrently: 6 HEADERS sent before the first response
    assert out.count("send HEADERS frame") == 6


def test_nghttp_trailers(h2proxy):
    r = subprocess.run(["nghttp", "-v", h2proxy.url + "/chunked?n=4&size=50&trailers=1"],
                       capture_output=True, timeout=30)
    out = r.stdout.decode("latin-1")
    assert r.returncode == 0, out
    total = pattern(200)
    assert "x-checksum: %s" % hashlib.sha256(total).hexdigest() in out
    assert "x-extra: yes" in out


def test_h2load(h2proxy):
    r = subprocess.run(["h2load", "-n", "20000", "-c", "10", "-m", "10",
                        h2proxy.url + "/status?code=200"], capture_output=True, timeout=180)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    assert m, out
    assert m.group(4) == "20000" and m.group(5) == "0" and m.group(6) == "0", out
    assert "20000 2xx" in out
    assert wait_for(lambda: h2proxy.stat("downstream_rq_active") == 0, 5)


# ---- python3-h2, frame level ----------------------------------------------------------

def test_request_trailers_and_cookies(h2proxy):
    c = H2Client(h2proxy.port)
    try:
        sid = c.request("/t", method="POST", headers=[("cookie", "a=1"), ("cookie", "b=2")],
                        body=b"hello", end=False)
        c.c.send_headers(sid, [("x-trail", "yes")], end_stream=True)
        c.flush()
        s = c.wait(sid)
        assert status(s) == 200
        rec = json.loads(body(s))
        assert rec["body"] == "hello"
        hs = {k.lower(): v for k, v in rec["headers"]}
        assert hs["cookie"] == "a=1; b=2"
        assert hs.get("transfer-encoding") == "chunked"  # unknown length upstream
        assert ["x-trail", "yes"] in [[k.lower(), v] for k, v in rec["trailers"]]
    finally:
        c.close()


def test_rst_stream_mid_body_leaves_others_working(h2proxy):
    c = H2Client(h2proxy.port)
    try:
        slow = c.request("/slow?chunks=4&delay=0.2")
        up = c.request("/upload", method="POST", headers=[("content-length", "100000")],
                       body=b"x" * 30000, end=False)
        time.sleep(0.2)
        c.c.reset_stream(up)
        c.flush()
        # a download reset mid-body
        big = c.request("/big?size=%d" % (4 << 20))
        while not c.streams[big]["data"]:
            c.step()
        c.c.reset_stream(big)
        c.flush()
        s = c.wait(slow)
        assert status(s) == 200 and body(s) == b"".join(b"chunk%d\n" % i for i in range(4))
        again = c.get("/after")
        assert status(again) == 200
        assert json.loads(body(again))["path"] == "/after"
        assert c.goaway is None
    finally:
        c.close()
    assert wait_for(lambda: h2proxy.stat("downstream_rq_active") == 0, 5)


def test_flow_control_slow_reader_bounded(h2proxy):
    size = 32 << 20
    warm = H2Client(h2proxy.port)
    warm.get("/warm")
    warm.close()
    base = rss_kib(h2proxy.proc.pid)
    peak = [base]
    n = [0]

    def slow(ev):
        n[0] += 1
        if n[0] % 8 == 0:
            time.sleep(0.003)
            peak[0] = max(peak[0], rss_kib(h2proxy.proc.pid))

    # small windows on the client side: skiff must not read the upstream faster
    # than this client takes the data
    c = H2Client(h2proxy.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16384},
                 timeout=60)
    c.on_data = slow
    try:
        s = c.wait(c.request("/big?size=%d" % size), timeout=120)
    finally:
        c.close()
    assert status(s) == 200
    data = body(s)
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == hdr(s, "x-body-sha256")
    grew = peak[0] - base
    assert grew < 16 * 1024 or not CHECK_RSS, "skiff RSS grew by %d KiB while relaying %d MiB" % (grew, size >> 20)


def test_response_end_after_congestion_with_last_body_bytes(make_proxy, upstream):
    """The h1 upstream's last body bytes congest the h2 stream (the client has
    not returned its window): skiff stops reading the upstream with the body
    complete in its buffer but its end not yet stepped over. When the client
    returns the window, the end must follow the data (END_STREAM), though the
    upstream socket has nothing more to make it readable."""
    s = make_proxy([upstream.port])
    # stream window 65535 sent, then 128 KiB + 1 pending: only the read
    # holding the last byte goes over the 128 KiB high mark
    size = 65535 + 128 * 1024 + 1
    for _ in range(3):
        c = H2Client(s.port, auto_ack=False, timeout=10)
        try:
            c.c.increment_flow_control_window(1 << 30)  # only the stream window limits
            c.flush()
            sid = c.request("/big?size=%d" % size)
            deadline = time.monotonic() + 10
            while sum(len(d) for d in c.streams[sid]["data"]) < 65535:
                assert time.monotonic() < deadline, "the first window of data did not arrive"
                c.step()
            time.sleep(0.3)  # skiff reads the rest of the upstream response and pauses
            got = sum(len(d) for d in c.streams[sid]["data"])
            c.c.acknowledge_received_data(got, sid)
            c.flush()
            c.auto_ack = True
            r = c.wait(sid, timeout=10)
        finally:
            c.close()
        assert status(r) == 200
        data = body(r)
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == hdr(r, "x-body-sha256")


def test_flow_control_slow_upstream_upload(h2proxy):
    """The upstream reads the body only after 1 s: skiff stops granting window
    instead of buffering the upload."""
    size = 16 << 20
    data = pattern(size)
    base = rss_kib(h2proxy.proc.pid)
    c = H2Client(h2proxy.port, timeout=60)
    try:
        s = c.wait(c.request("/x?sleep=1", method="POST",
                             headers=[("content-length", str(size))], body=data), timeout=120)
    finally:
        c.close()
    assert status(s) == 200
    rec = json.loads(body(s))
    assert rec["body_len"] == size
    assert rec["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert rss_kib(h2proxy.proc.pid) - base < 16 * 1024 or not CHECK_RSS


def test_max_concurrent_streams_and_stats(make_proxy, upstream):
    s = make_proxy([upstream.port],
                   hcm_extra={"http2_protocol_options": {"max_concurrent_streams": 3}})
    c = H2Client(s.port)
    try:
        # learn the server's SETTINGS first
        sid0 = c.request("/first")
        c.wait(sid0)
        assert c.c.remote_settings.max_concurrent_streams == 3
        ids = [c.request("/sleep?s=0.3") for _ in range(3)]
        for i in ids:
            st = c.wait(i)
            assert status(st) == 200 and body(st) == b"slept"
    finally:
        c.close()
    st = s.stats()
    assert st["downstream_cx_http2_total"] >= 1
    assert st["downstream_rq_2xx"] >= 4


def test_request_headers_too_large_431(make_proxy, upstream):
    s = make_proxy([upstream.port], hcm_extra={"max_request_headers_kb": 2})
    c = H2Client(s.port)
    try:
        big = c.get("/x", headers=[("x-big", "a" * 3000)])
        assert status(big) == 431
        assert hdr(big, "x-skiff-flags") == "DPE"
        ok = c.get("/y")
        assert status(ok) == 200
    finally:
        c.close()


def test_rapid_reset_goaway(make_proxy, upstream):
    s = make_proxy([upstream.port], routes=[
        route("/", direct_response={"status": 200, "body": {"inline_string": "ok"}})])
    c = H2Client(s.port, timeout=10)
    try:
        for i in range(3000):
            sid = c.c.get_next_available_stream_id()
            c.c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                   (":authority", "t")], end_stream=True)
            c.c.reset_stream(sid)
            if i % 50 == 0:
                try:
                    c.flush()
                except OSError:
                    break
        try:
            c.flush()
            while c.goaway is None:
                c.step()
        except (EOFError, OSError, h2.exceptions.ProtocolError):
            pass
        assert c.goaway is not None or c.closed, "no GOAWAY after 3000 rapid resets"
    finally:
        c.close()
    # skiff itself is fine
    r = h2curl("-o", "/dev/null", "-w", "%{http_code}", s.url + "/")
    assert r.stdout == b"200"


def test_bad_frames_close_connection_only(h2proxy):
    with socket.create_connection(("127.0.0.1", h2proxy.port), timeout=5) as sk:
        sk.sendall(PREFACE + b"\x00\x00\x04\x09\x00\x00\x00\x00\x01garb")  # CONTINUATION w/o HEADERS
        got = b""
        try:
            while True:
                d = sk.recv(65536)
                if not d:
                    break
                got += d
        except (ConnectionResetError, socket.timeout):
            pass
        assert b"\x07" in got  # a GOAWAY frame type somewhere in the answer
    r = h2curl("-o", "/dev/null", "-w", "%{http_code}", h2proxy.url + "/ok")
    assert r.stdout == b"200"


# ---- drain -----------------------------------------------------------------------------

def test_goaway_on_sigterm_inflight_stream_completes(h2proxy):
    p = subprocess.Popen(["nghttp", "-v", "-t", "20", h2proxy.url + "/sleep?s=1"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: len(h2proxy.upstream.requests()) >= 1, 5)
        h2proxy.signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = out.decode("latin-1")
    assert "recv GOAWAY frame" in out, out
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", out), out
    assert "slept" in out or "DATA frame <length=5" in out, out
    assert h2proxy.proc.wait(timeout=10) == 0


# ---- codec selection -----------------------------------------------------------------------

def test_codec_http1_rejects_preface(make_proxy, upstream):
    s = make_proxy([upstream.port], hcm_extra={"codec_type": "HTTP1"})
    with RawConn(s.port) as c:
        c.send(PREFACE)
        r = c.read_response()
        # an HTTP/1 parse error ("PRI * HTTP/2.0": version 2.0 -> 505), not HTTP/2
        assert r.status in (400, 505)
        assert r.header("x-skiff-flags") == "DPE"
    r = h2curl("-sS", s.url + "/x")
    assert r.returncode != 0 or not r.stdout.startswith(b"{")
    # plain HTTP/1.1 still works there
    assert helpers.get(s.port, "/x").status == 200


def test_codec_http2_listener(make_proxy, upstream):
    s = make_proxy([upstream.port], hcm_extra={"codec_type": "HTTP2"})
    r = h2curl("-o", "/dev/null", "-w", "%{http_code} %{http_version}", s.url + "/x")
    assert r.stdout == b"200 2", r.stderr
    # an HTTP/1.1 request is not HTTP/2: the connection closes without an h1 answer
    with RawConn(s.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_all_until_close(timeout=5)[:5] != b"HTTP/"
    assert s.stat("downstream_cx_http2_total") >= 1


def test_auto_preface_split_across_reads(h2proxy):
    """The preface arriving in pieces is still HTTP/2 (sniffing waits)."""
    with socket.create_connection(("127.0.0.1", h2proxy.port), timeout=5) as sk:
        sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(cfg)
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", "/split"), (":scheme", "http"),
                              (":authority", "t")], end_stream=True)
        data = conn.data_to_send()
        for piece in (data[:3], data[3:10], data[10:]):
            sk.sendall(piece)
            time.sleep(0.1)
        done = False
        got_status = None
        while not done:
            d = sk.recv(65536)
            assert d
            for ev in conn.receive_data(d):
                if isinstance(ev, h2.events.ResponseReceived):
                    got_status = dict(ev.headers)[":status"]
                if isinstance(ev, h2.events.StreamEnded):
                    done = True
            sk.sendall(conn.data_to_send())
        assert got_status == "200"
    # HTTP/1.1 on the same AUTO listener
    assert helpers.get(h2proxy.port, "/h1").status == 200


# ---- more behaviour ----------------------------------------------------------------------

def test_expect_100_continue_relayed(h2proxy):
    c = H2Client(h2proxy.port)
    got_100 = []
    orig = c._event

    def ev(e):
        if isinstance(e, h2.events.InformationalResponseReceived):
            got_100.append(dict(e.headers)[":status"])
        orig(e)

    c._event = ev
    try:
        sid = c.request("/e", method="POST", headers=[("expect", "100-continue"),
                                                      ("content-length", "5")], end=False)
        deadline = time.monotonic() + 5
        while not got_100 and time.monotonic() < deadline:
            c.step()
        assert got_100 == ["100"]
        c.send_body(sid, b"hello")
        s = c.wait(sid)
        assert status(s) == 200
        rec = json.loads(body(s))
        assert rec["saw_expect"] and rec["body"] == "hello"
    finally:
        c.close()


def test_upstream_failures_over_h2(h2proxy):
    c = H2Client(h2proxy.port)
    try:
        # reset before any response: a readable local reply
        a = c.get("/reset-now")
        assert status(a) == 502 and hdr(a, "x-skiff-flags") == "UC"
        # reset after the head: the h2 stream is reset, the connection lives on
        b = c.wait(c.request("/reset"))
        assert b["reset"] is not None and not b["ended"]
        ok = c.get("/fine")
        assert status(ok) == 200
    finally:
        c.close()


def test_idle_timeout_goaway(make_proxy, upstream):
    s = make_proxy([upstream.port],
                   hcm_extra={"common_http_protocol_options": {"idle_timeout": "1s"}})
    c = H2Client(s.port, timeout=5)
    try:
        assert status(c.get("/x")) == 200
        t0 = time.monotonic()
        with pytest.raises(EOFError):
            while True:
                c.step()
        assert c.goaway is not None and c.goaway.error_code == 0
        assert 0.5 < time.monotonic() - t0 < 4
    finally:
        c.close()
    assert s.stat("downstream_cx_idle_timeout") >= 1


def test_reload_applies_to_new_streams_on_open_connection(skiff_factory, upstream):
    lp, ap = free_port(), free_port()

    def cfg(text):
        return simple_http(lp, ap, [upstream.port], routes=[
            route("/d", direct_response={"status": 200, "body": {"inline_string": text}}),
            route("/", "up")])

    s = skiff_factory(cfg("one"), port=lp, admin_port=ap)
    c = H2Client(lp)
    try:
        assert body(c.get("/d")) == b"one"
        s.reload(cfg("two"))
        time.sleep(0.2)
        assert body(c.get("/d")) == b"two"
        assert status(c.get("/up")) == 200
        assert c.goaway is None
    finally:
        c.close()


# ---- WebSocket over HTTP/2 (RFC 8441 extended CONNECT) to an HTTP/1.1 upstream ----------

def _settings_seen(cl, timeout=5.0):
    """Wait for the server's SETTINGS (skiff always sends MAX_CONCURRENT_STREAMS);
    return its ENABLE_CONNECT_PROTOCOL value."""
    codes = h2.settings.SettingCodes
    deadline = time.monotonic() + timeout
    cl.sock.settimeout(0.5)
    while codes.MAX_CONCURRENT_STREAMS not in cl.c.remote_settings:
        assert time.monotonic() < deadline, "no SETTINGS from the server"
        try:
            cl.step()
        except socket.timeout:
            pass
    cl.sock.settimeout(10.0)
    return cl.c.remote_settings.get(codes.ENABLE_CONNECT_PROTOCOL, 0)


def _read_until(cl, sid, n, timeout=20.0):
    deadline = time.monotonic() + timeout
    while sum(len(d) for d in cl.streams[sid]["data"]) < n:
        assert time.monotonic() < deadline, "echo did not come back"
        assert cl.streams[sid]["reset"] is None
        cl.step()
    got = b"".join(cl.streams[sid]["data"])
    cl.streams[sid]["data"] = []
    return got


def test_websocket_over_h2_extended_connect(make_proxy, upstream):
    s = make_proxy([upstream.port], hcm_extra={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    cl = H2Client(s.port)
    try:
        assert _settings_seen(cl) == 1, "SETTINGS_ENABLE_CONNECT_PROTOCOL not advertised"
        sid = cl.request("/ws", method="CONNECT", end=False,
                         headers=[(":protocol", "websocket"), ("sec-websocket-version", "13"),
                                  ("origin", "http://test")])
        deadline = time.monotonic() + 10
        while cl.streams[sid]["headers"] is None:
            assert time.monotonic() < deadline
            assert cl.streams[sid]["reset"] is None, cl.streams[sid]
            cl.step()
        hs = dict(cl.streams[sid]["headers"])
        assert hs[":status"] == "200", hs
        assert "sec-websocket-accept" not in hs and "upgrade" not in hs and "connection" not in hs
        # frames echo through the tunnel, several round trips, then 512 KiB (flow control)
        for msg in (b"\x81\x05hello", b"\x82\x03abc", bytes(range(256))):
            cl.send_body(sid, msg, end=False)
            assert _read_until(cl, sid, len(msg)) == msg
        big = os.urandom(512 * 1024)
        cl.send_body(sid, big, end=False)
        assert _read_until(cl, sid, len(big)) == big
        # client half-close -> upstream sees EOF, closes -> END_STREAM back
        cl.c.end_stream(sid)
        cl.flush()
        deadline = time.monotonic() + 10
        while not cl.streams[sid]["ended"]:
            assert time.monotonic() < deadline
            assert cl.streams[sid]["reset"] is None
            cl.step()
        # the connection still serves ordinary requests
        r = cl.get("/after")
        assert status(r) == 200
    finally:
        cl.close()
    reqs = [r for r in upstream.requests() if r["path"] == "/ws"]
    assert len(reqs) == 1
    r = reqs[0]
    assert r["method"] == "GET"
    uh = {k.lower(): v for k, v in r["headers"]}
    assert uh.get("upgrade", "").lower() == "websocket"
    assert "upgrade" in uh.get("connection", "").lower()
    import base64
    key = uh.get("sec-websocket-key", "")
    assert len(key) == 24 and len(base64.b64decode(key)) == 16, key
    assert uh.get("sec-websocket-version") == "13"
    assert uh.get("origin") == "http://test"


def test_websocket_over_h2_not_advertised_without_upgrade_config(h2proxy):
    cl = H2Client(h2proxy.port)
    try:
        assert _settings_seen(cl, timeout=1.5) == 0
        # plain CONNECT over h2 stays refused
        r = cl.get("example.com:443", method="CONNECT")
        assert r["reset"] is not None or status(r) == 403
    finally:
        cl.close()


def _ws_cluster_opts(kind):
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        kind: {"http2_protocol_options": {}} if kind == "explicit_http_config" else {}}}


def test_websocket_over_h2_with_use_downstream_cluster_goes_h1(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    cfg = helpers.simple_http(lp, ap, [upstream.port],
                              hcm_extra={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    cfg["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = \
        _ws_cluster_opts("use_downstream_protocol_config")
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    cl = H2Client(lp)
    try:
        assert _settings_seen(cl) == 1
        sid = cl.request("/ws", method="CONNECT", end=False, headers=[(":protocol", "websocket")])
        cl.send_body(sid, b"early", end=False)  # before the 200: held, then tunnelled
        assert _read_until(cl, sid, 5) == b"early"
        assert dict(cl.streams[sid]["headers"])[":status"] == "200"
    finally:
        cl.close()
    assert s.stat("downstream_rq_2xx") >= 1


def test_websocket_to_h2_only_cluster_refused(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    cfg = helpers.simple_http(lp, ap, [upstream.port],
                              hcm_extra={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    cfg["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = \
        _ws_cluster_opts("explicit_http_config")
    skiff_factory(cfg, port=lp, admin_port=ap)
    with RawConn(lp) as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        r = c.read_response()
    assert r.status == 403 and r.header("x-skiff-flags") == "UPG", r
    assert b"HTTP/2-only cluster" in r.body
