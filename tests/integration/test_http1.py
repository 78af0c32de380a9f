"""HTTP/1.1 behaviour through the proxy: keep-alive, pipelining, bodies,
trailers, 100-continue, bodiless responses, upgrades, forwarded headers."""
import base64
import hashlib
import os
import re

import pytest

from helpers import UUID4_RE, RawConn, curl, get
from upstream import pattern

def sha(b):
    return hashlib.sha256(b).hexdigest()


# ---- keep-alive / pipelining -----------------------------------------------------------

def test_second_request_on_keepalive_connection(proxy):
    """Minimal repro of the keep-alive hang: two GETs on one connection."""
    with RawConn(proxy.port, timeout=5) as c:
        assert c.request("GET", "/one").status == 200
        r = c.request("GET", "/two")
        assert r.status == 200
        assert r.json()["path"] == "/two"


def test_keepalive_reuses_upstream_connection(proxy):
    before = proxy.stats()
    n = 6
    with RawConn(proxy.port) as c:
        rs = [c.request("GET", "/ka/%d" % i) for i in range(n)]
    assert all(r.status == 200 for r in rs)
    js = [r.json() for r in rs]
    assert [j["path"] for j in js] == ["/ka/%d" % i for i in range(n)]
    # all served over one upstream connection
    assert len({j["conn"] for j in js}) == 1, [j["conn"] for j in js]
    assert [j["req_on_conn"] for j in js] == list(range(1, n + 1))
    after = proxy.stats()
    assert after["upstream_cx_reused"] - before["upstream_cx_reused"] >= n - 1
    assert after["upstream_cx_total"] - before["upstream_cx_total"] == 1


def test_pipelining_three_requests_one_write(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\n"
               b"GET /p2 HTTP/1.1\r\nHost: t\r\n\r\n"
               b"GET /p3 HTTP/1.1\r\nHost: t\r\n\r\n")
        paths = [c.read_response().json()["path"] for _ in range(3)]
    assert paths == ["/p1", "/p2", "/p3"]


def test_pipelining_with_bodies(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"POST /b1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
               b"POST /b2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
               b"GET /b3 HTTP/1.1\r\nHost: t\r\n\r\n")
        js = [c.read_response().json() for _ in range(3)]
    assert [(j["path"], j["body"]) for j in js] == [("/b1", "hello"), ("/b2", "abc"), ("/b3", "")]


def test_connection_close_honoured(proxy):
    with RawConn(proxy.port) as c:
        r = c.request("GET", "/close-me", headers=[("Connection", "close")])
        assert r.status == 200
        assert r.header("connection") == "close"
        assert c.is_closed(5)


def test_http10_request(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /ten HTTP/1.0\r\nHost: t\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.json()["path"] == "/ten"
        assert c.is_closed(5)


# ---- bodies ----------------------------------------------------------------------------------

def test_content_length_request_body(proxy):
    r = get(proxy.port, "/post", method="POST", body=b"x" * 1000)
    assert r.status == 200
    j = r.json()
    assert j["body_len"] == 1000
    assert j["method"] == "POST"


def test_chunked_request_body(proxy):
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"hello ", b"chunked ", b"world"))
    with RawConn(proxy.port) as c:
        c.send(b"POST /chunked-req HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body"] == "hello chunked world"


def test_chunked_response_body(proxy):
    r = get(proxy.port, "/chunked?n=5&size=100")
    assert r.status == 200
    assert r.body == pattern(500)


def test_chunked_response_then_next_request(proxy):
    with RawConn(proxy.port, timeout=5) as c:
        assert c.request("GET", "/chunked?n=2&size=10").body == pattern(20)
        assert c.request("GET", "/after-chunked").json()["path"] == "/after-chunked"


def test_5mb_content_length_both_ways(proxy):
    data = os.urandom(5 * 1024 * 1024)
    with RawConn(proxy.port, timeout=30) as c:
        r = c.request("POST", "/?echo_body=1", body=data)
    assert r.status == 200
    assert r.header("x-body-sha256") == sha(data)
    assert sha(r.body) == sha(data)


def test_5mb_chunked_both_ways(proxy, tmp_path):
    data = os.urandom(5 * 1024 * 1024)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    out = tmp_path / "out.bin"
    r = curl("-o", out, "-D", "-", "-H", "Expect:", "-H", "Transfer-Encoding: chunked", "--data-binary", "@%s" % f,
             "%s/?echo_body=1&chunked=1" % proxy.url, timeout=60)
    assert r.returncode == 0, r.stderr
    head = r.stdout.decode().lower()
    assert " 200" in head.splitlines()[0]
    assert "transfer-encoding: chunked" in head
    assert "x-body-sha256: %s" % sha(data) in head
    assert sha(out.read_bytes()) == sha(data)


def test_5mb_download(proxy):
    r = get(proxy.port, "/big?size=%d" % (5 * 1024 * 1024), timeout=30)
    assert r.status == 200
    assert len(r.body) == 5 * 1024 * 1024
    assert sha(r.body) == r.header("x-body-sha256")


# ---- trailers -------------------------------------------------------------------------------------

def test_response_trailers_forwarded(proxy):
    r = get(proxy.port, "/chunked?n=3&size=10&trailers=1")
    assert r.status == 200
    assert r.body == pattern(30)
    t = dict(r.trailers)
    assert t.get("x-checksum") == sha(pattern(30)), r.trailers
    assert t.get("x-extra") == "yes"


def test_request_trailers_forwarded(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"POST /trail HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTrailer: x-req-trailer\r\n\r\n"
               b"4\r\nbody\r\n0\r\nx-req-trailer: tv\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    j = r.json()
    assert j["body"] == "body"
    assert ["x-req-trailer", "tv"] in [[k.lower(), v] for k, v in j["trailers"]], j


# ---- 100-continue -------------------------------------------------------------------------------

def test_expect_100_continue_curl(proxy, tmp_path):
    data = os.urandom(300 * 1024)
    f = tmp_path / "b.bin"
    f.write_bytes(data)
    r = curl("-i", "-H", "Expect: 100-continue", "--expect100-timeout", "10", "--data-binary", "@%s" % f,
             "%s/expect" % proxy.url, timeout=20)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    body = out.split(b"\r\n\r\n")[-1]
    assert b"HTTP/1.1 200" in out
    import json
    j = json.loads(body)
    assert j["body_len"] == len(data)
    assert j["body_sha256"] == sha(data)


def test_expect_100_continue_raw(proxy):
    with RawConn(proxy.port, timeout=10) as c:
        c.send(b"POST /expect HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        line = c._line()
        assert line.startswith(b"HTTP/1.1 100"), line
        assert c._line() == b""
        c.send(b"hello")
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body"] == "hello"


# ---- HEAD / 204 / 304 ----------------------------------------------------------------------------

def test_head_no_body(proxy):
    with RawConn(proxy.port) as c:
        r = c.request("HEAD", "/head")
        assert r.status == 200
        assert r.header("content-length") == "11"
        assert r.body == b""
        # nothing else follows on the wire
        assert not c.is_closed(0.5)
        assert c.buf == b""


@pytest.mark.parametrize("path,status", [("/204", 204), ("/304", 304)])
def test_bodiless_statuses(proxy, path, status):
    with RawConn(proxy.port) as c:
        r = c.request("GET", path)
        assert r.status == status
        assert r.header("transfer-encoding") is None
        assert not c.is_closed(0.5)
        assert c.buf == b""


def test_head_then_get_same_connection(proxy):
    with RawConn(proxy.port, timeout=5) as c:
        assert c.request("HEAD", "/head").body == b""
        r = c.request("GET", "/head")
        assert r.body == b"hello world"


# ---- upgrades ----------------------------------------------------------------------------------------

def ws_handshake(port, path="/ws"):
    key = base64.b64encode(os.urandom(16)).decode()
    c = RawConn(port, timeout=10)
    c.send(("GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key)).encode())
    return c, key


def test_websocket_upgrade_tunnelled(make_proxy, upstream):
    s = make_proxy([upstream.port], hcm_extra={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    c, key = ws_handshake(s.port)
    with c:
        r = c.read_response()
        assert r.status == 101
        assert r.header("upgrade", "").lower() == "websocket"
        exp = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        assert r.header("sec-websocket-accept") == exp
        # raw bytes echo both ways, several round trips, then a big one
        for msg in (b"\x81\x05hello", b"\x82\x03abc", bytes(range(256))):
            c.send(msg)
            got = b""
            while len(got) < len(msg):
                got += c.buf or c.sock.recv(65536)
                c.buf = b""
            assert got == msg
        big = os.urandom(512 * 1024)
        c.send(big)
        got = bytearray()
        while len(got) < len(big):
            d = c.sock.recv(65536)
            assert d
            got += d
        assert bytes(got) == big
    reqs = upstream.requests()
    assert reqs and reqs[-1]["path"] == "/ws"
    hs = {k.lower(): v for k, v in reqs[-1]["headers"]}
    assert hs.get("upgrade", "").lower() == "websocket"


def test_websocket_not_enabled_403(proxy):
    c, _ = ws_handshake(proxy.port)
    with c:
        r = c.read_response()
    assert r.status == 403
    assert r.header("x-skiff-flags") == "UPG"
    assert proxy.upstream.requests() == []


def test_connect_rejected_403(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        r = c.read_response()
    assert r.status == 403
    assert r.header("x-skiff-flags") == "UPG"
    assert r.body
    assert proxy.upstream.requests() == []


# ---- forwarded headers, request id, hop-by-hop -----------------------------------------------

def upstream_headers(r):
    assert r.status == 200, r
    out = {}
    for k, v in r.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_xff_xfp_request_id_generated(proxy):
    hs = upstream_headers(get(proxy.port, "/fwd"))
    assert hs["x-forwarded-for"] == ["127.0.0.1"]
    assert hs["x-forwarded-proto"] == ["http"]
    assert len(hs["x-request-id"]) == 1
    assert re.match(UUID4_RE, hs["x-request-id"][0]), hs["x-request-id"]


def test_request_ids_unique(proxy):
    ids = {upstream_headers(get(proxy.port, "/id"))["x-request-id"][0] for _ in range(20)}
    assert len(ids) == 20


def test_xff_appended_xfp_kept_request_id_kept(proxy):
    hs = upstream_headers(get(proxy.port, "/fwd", headers=[
        ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"), ("X-Request-Id", "client-id-1")]))
    xff = [p.strip() for p in ",".join(hs["x-forwarded-for"]).split(",")]
    assert xff == ["203.0.113.7", "127.0.0.1"], hs["x-forwarded-for"]
    assert hs["x-forwarded-proto"] == ["https"]
    assert hs["x-request-id"] == ["client-id-1"]


def test_hop_by_hop_removed(proxy):
    hs = upstream_headers(get(proxy.port, "/hop", headers=[
        ("Connection", "keep-alive, X-Custom-Hop"), ("Keep-Alive", "timeout=5"), ("TE", "gzip"),
        ("Proxy-Connection", "keep-alive"), ("X-Custom-Hop", "secret"), ("X-End-To-End", "kept")]))
    for n in ("keep-alive", "te", "proxy-connection", "x-custom-hop", "transfer-encoding", "upgrade"):
        assert n not in hs, (n, hs)
    for v in hs.get("connection", []):
        assert "x-custom-hop" not in v.lower()
    assert hs["x-end-to-end"] == ["kept"]


def test_response_hop_by_hop_not_leaked(proxy):
    r = get(proxy.port, "/chunked?n=2&size=5")
    assert r.status == 200
    assert r.header("keep-alive") is None
    # the proxy re-frames; exactly one framing header
    assert not (r.header("content-length") and r.header("transfer-encoding"))


def test_slow_reader_large_download(proxy):
    """Backpressure: a client that stops reading for a while (socket buffers
    fill up on every hop) still gets every byte, in order."""
    import time
    size = 16 * 1024 * 1024
    with RawConn(proxy.port, timeout=30) as c:
        c.send(b"GET /big?size=%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
        time.sleep(1.0)
        r = c.read_response()
        assert r.status == 200
        assert len(r.body) == size
        assert sha(r.body) == r.header("x-body-sha256")
        # and the connection is still usable afterwards
        assert c.request("GET", "/after-big").status == 200


def test_slow_writer_large_upload(proxy):
    """The client sends a large body in bursts with pauses."""
    import time
    data = os.urandom(4 * 1024 * 1024)
    with RawConn(proxy.port, timeout=30) as c:
        c.send(b"POST /up?echo_body=1 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(data))
        step = len(data) // 8
        for i in range(8):
            c.send(data[i * step:(i + 1) * step])
            time.sleep(0.05)
        r = c.read_response()
    assert r.status == 200
    assert r.header("x-body-sha256") == sha(data)
    assert sha(r.body) == sha(data)


def test_absolute_form_request_target(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET http://abs.example/abs?q=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r
    j = r.json()
    assert j["path"] == "/abs?q=1"
    assert dict((k.lower(), v) for k, v in j["headers"])["host"] == "abs.example"


def test_websocket_early_bytes_after_handshake(make_proxy, upstream):
    """Bytes the client sends right behind the upgrade request (same write)
    belong to the tunnel."""
    s = make_proxy([upstream.port], hcm_extra={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    with RawConn(s.port, timeout=5) as c:
        c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly-bytes")
        r = c.read_response()
        assert r.status == 101
        got = c.buf
        while len(got) < len(b"early-bytes"):
            d = c.sock.recv(100)
            assert d
            got += d
        assert got == b"early-bytes"


def test_header_value_details_forwarded(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /obs HTTP/1.1\r\nHOST: t\r\nX-Obs: caf\xe9\r\nX-Empty:\r\nX-Pad:   v   \r\n\r\n")
        r = c.read_response()
    hs = {k.lower(): v for k, v in r.json()["headers"]}
    assert hs["host"] == "t"
    assert hs["x-obs"] == "caf\xe9"
    assert hs["x-empty"] == ""
    assert hs["x-pad"] == "v"


def test_bare_lf_line_endings_rejected(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /lf-only HTTP/1.1\nHost: t\n\n")
        assert c.read_response().status == 400
    assert proxy.upstream.requests() == []
