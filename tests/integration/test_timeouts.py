"""HCM stream timeouts, Envoy semantics, on HTTP/1.1 and HTTP/2:

  stream_idle_timeout (route idle_timeout overrides it, 0 disables)  -> 408 SI
  request_timeout (whole request received)                           -> 408 RQT
  request_headers_timeout (first byte of a head to its end)          -> 408 RQT / GOAWAY
  max_stream_duration (HCM common_http_protocol_options, route
  max_stream_duration.max_stream_duration overrides it)              -> 408 DT

Each fires a local reply while no response head went out, and resets the
stream (h1: closes the connection) once one has. Every one is counted.
"""
import socket
import struct
import subprocess
import time

import hpack

from helpers import (RawConn, bootstrap, cluster, dump, free_port, get, http_listener, route,
                     vhost, wait_for)


def start(skiff_factory, upstream, hcm_extra=None, routes=None):
    lp, ap = free_port(), free_port()
    routes = routes or [route("/", "up")]
    cfg = bootstrap(ap, [http_listener("ingress", lp, [vhost("v", ["*"], routes)], hcm_extra=hcm_extra)],
                    [cluster("up", [upstream.port])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    s.lp = lp
    return s


def stat(s, name):
    return s.stat(name)


# ---- stream_idle_timeout ---------------------------------------------------------------

def test_stream_idle_timeout_before_response_is_408_si(skiff_factory, upstream):
    s = start(skiff_factory, upstream, {"stream_idle_timeout": "0.3s"})
    t0 = time.monotonic()
    r = get(s.lp, "/sleep?s=2")
    dt = time.monotonic() - t0
    assert r.status == 408, r
    assert r.header("x-skiff-flags") == "SI"
    assert b"stream idle timeout" in r.body
    assert 0.25 <= dt < 1.5, dt
    assert wait_for(lambda: stat(s, "downstream_rq_idle_timeout") == 1)


def test_stream_idle_timeout_is_reset_by_activity(skiff_factory, upstream):
    # 6 chunks 0.15 s apart: 0.9 s in all, never 0.4 s without a byte
    s = start(skiff_factory, upstream, {"stream_idle_timeout": "0.4s"})
    r = get(s.lp, "/slow?chunks=6&delay=0.15")
    assert r.status == 200, r
    assert r.body == b"".join(b"chunk%d\n" % i for i in range(6)), r.body
    assert stat(s, "downstream_rq_idle_timeout") == 0


def test_stream_idle_timeout_after_response_head_resets(skiff_factory, upstream):
    s = start(skiff_factory, upstream, {"stream_idle_timeout": "0.3s"})
    with RawConn(s.lp) as c:
        c.send(b"GET /slow?chunks=3&delay=1.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        data = c.read_all_until_close(timeout=5.0)
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    assert not data.endswith(b"0\r\n\r\n"), "the chunked body must not be terminated"
    assert wait_for(lambda: stat(s, "downstream_rq_idle_timeout") == 1)


def test_route_idle_timeout_overrides_and_zero_disables(skiff_factory, upstream):
    routes = [route("/long", "up", idle_timeout="5s"),
              route("/off", "up", idle_timeout="0s"),
              route("/", "up")]
    s = start(skiff_factory, upstream, {"stream_idle_timeout": "0.3s"}, routes=routes)
    assert get(s.lp, "/long/sleep?s=0.8").status == 200
    assert get(s.lp, "/off/sleep?s=0.8").status == 200
    assert get(s.lp, "/sleep?s=0.8").status == 408
    assert stat(s, "downstream_rq_idle_timeout") == 1


def test_stream_idle_timeout_on_h2_and_grpc_shape(skiff_factory, upstream):
    s = start(skiff_factory, upstream, {"stream_idle_timeout": "0.3s"})
    out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", "--max-time", "5",
                          "http://127.0.0.1:%d/sleep?s=2" % s.lp],
                         capture_output=True, timeout=10).stdout
    assert out.startswith(b"HTTP/2 408"), out[:200]
    assert b"x-skiff-flags: SI" in out
    out = subprocess.run(["curl", "-s", "-i", "--http2-prior-knowledge", "--max-time", "5",
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          "-X", "POST", "--data-binary", "@-",
                          "http://127.0.0.1:%d/pkg.Svc/M?sleep=2" % s.lp],
                         input=b"\x00" * 5, capture_output=True, timeout=10).stdout
    assert out.startswith(b"HTTP/2 200"), out[:200]
    assert b"grpc-status: 4" in out, out  # DEADLINE_EXCEEDED
    assert wait_for(lambda: stat(s, "downstream_rq_idle_timeout") == 2)


# ---- request_timeout -------------------------------------------------------------------

def test_request_timeout_incomplete_body_is_408(skiff_factory, upstream):
    s = start(skiff_factory, upstream, {"request_timeout": "0.4s"})
    with RawConn(s.lp) as c:
        t0 = time.monotonic()
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        r = c.read_response()
        dt = time.monotonic() - t0
    assert r.status == 408, r
    assert r.header("x-skiff-flags") == "RQT"
    assert 0.35 <= dt < 2.0, dt
    assert wait_for(lambda: stat(s, "downstream_rq_timeout") == 1)


def test_request_timeout_ignores_slow_upstream_after_full_request(skiff_factory, upstream):
    s = start(skiff_factory, upstream, {"request_timeout": "0.3s"})
    r = get(s.lp, "/sleep?s=0.7", method="POST", body=b"x" * 100)
    assert r.status == 200, r
    assert stat(s, "downstream_rq_timeout") == 0


# ---- request_headers_timeout ---------------------------------------------------------------

def test_request_headers_timeout_h1(skiff_factory, upstream):
    s = start(skiff_factory, upstream, {"request_headers_timeout": "0.3s"})
    # an idle keep-alive connection is not a partial head: stays open
    with RawConn(s.lp) as idle:
        assert not idle.is_closed(timeout=0.8)
        # a head trickled in pieces must complete within the timeout
        t0 = time.monotonic()
        idle.send(b"GET / HTTP/1.1\r\n")
        time.sleep(0.1)
        idle.send(b"Host: t\r\n")
        data = idle.read_all_until_close(timeout=5.0)
        dt = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"x-skiff-flags: RQT" in data
    assert 0.25 <= dt < 2.0, dt
    assert wait_for(lambda: stat(s, "downstream_rq_header_timeout") == 1)
    # complete requests on keep-alive connections are unaffected
    with RawConn(s.lp) as c:
        for _ in range(3):
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert c.read_response().status == 200
            time.sleep(0.2)
    assert stat(s, "downstream_rq_header_timeout") == 1
    assert upstream.requests()


def _frame(ftype, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def test_request_headers_timeout_h2_incomplete_header_block(skiff_factory, upstream):
    s = start(skiff_factory, upstream, {"request_headers_timeout": "0.3s"})
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                    (":authority", "t"), ("x-pad", "y" * 50)])
    sock = socket.create_connection(("127.0.0.1", s.lp), timeout=5)
    try:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b""))
        # HEADERS without END_HEADERS, then nothing: the CONTINUATION never comes
        sock.sendall(_frame(1, 0x1, 1, block[:10]))
        t0 = time.monotonic()
        got = b""
        while True:
            try:
                d = sock.recv(65536)
            except socket.timeout:
                break
            if not d:
                break
            got += d
        dt = time.monotonic() - t0
    finally:
        sock.close()
    # a GOAWAY frame (type 7) came before the close
    types, i = [], 0
    while i + 9 <= len(got):
        ln = int.from_bytes(got[i:i + 3], "big")
        types.append(got[i + 3])
        i += 9 + ln
    assert 7 in types, types
    assert 0.25 <= dt < 4.0, dt
    assert wait_for(lambda: stat(s, "downstream_rq_header_timeout") == 1)


# ---- max_stream_duration -------------------------------------------------------------------

def test_max_stream_duration_before_head_is_408_dt(skiff_factory, upstream):
    s = start(skiff_factory, upstream,
              {"common_http_protocol_options": {"max_stream_duration": "0.4s"}})
    t0 = time.monotonic()
    r = get(s.lp, "/sleep?s=2")
    dt = time.monotonic() - t0
    assert r.status == 408, r
    assert r.header("x-skiff-flags") == "DT"
    assert 0.35 <= dt < 1.5, dt
    assert wait_for(lambda: stat(s, "downstream_rq_max_duration_reached") == 1)


def test_max_stream_duration_cuts_a_busy_stream(skiff_factory, upstream):
    # data flows every 0.1 s (no idle timeout), but the stream lives too long
    s = start(skiff_factory, upstream,
              {"common_http_protocol_options": {"max_stream_duration": "0.5s"}})
    with RawConn(s.lp) as c:
        c.send(b"GET /slow?chunks=20&delay=0.1 HTTP/1.1\r\nHost: t\r\n\r\n")
        t0 = time.monotonic()
        data = c.read_all_until_close(timeout=5.0)
        dt = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    assert not data.endswith(b"0\r\n\r\n")
    assert dt < 1.5, dt
    assert wait_for(lambda: stat(s, "downstream_rq_max_duration_reached") == 1)


def test_route_max_stream_duration_overrides(skiff_factory, upstream):
    routes = [route("/long", "up", max_stream_duration={"max_stream_duration": "5s"}),
              route("/", "up")]
    s = start(skiff_factory, upstream,
              {"common_http_protocol_options": {"max_stream_duration": "0.3s"}}, routes=routes)
    assert get(s.lp, "/long/sleep?s=0.7").status == 200
    assert get(s.lp, "/sleep?s=0.7").status == 408
    assert stat(s, "downstream_rq_max_duration_reached") == 1


def test_bad_timeout_values_rejected(skiff_bin, tmp_path):
    lp, ap = free_port(), free_port()
    cfg = bootstrap(ap, [http_listener("ingress", lp, [vhost("v", ["*"], [route("/", "up")])],
                                       hcm_extra={"stream_idle_timeout": "-1s"})],
                    [cluster("up", [1])])
    p = tmp_path / "bad.yaml"
    p.write_text(dump(cfg))
    out = subprocess.run([skiff_bin, "--validate", "-c", str(p)], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 1
    assert "stream_idle_timeout" in (out.stdout + out.stderr)
