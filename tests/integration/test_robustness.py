"""Edge cases: upstream connection churn, ambiguous upstream framing, bodies
sent to local replies, idle timeouts, malformed request lines, admin extras."""
import socket
import time

import pytest

from helpers import (RawConn, admin_get, admin_post, bootstrap, cluster, free_port, get, http_listener, route,
                     simple_http, vhost, wait_for)


def test_upstream_connection_close_then_next_request(proxy):
    with RawConn(proxy.port, timeout=5) as c:
        r1 = c.request("GET", "/a?close_after=1")
        assert r1.status == 200
        r2 = c.request("GET", "/b")
        assert r2.status == 200
        assert r1.json()["conn"] != r2.json()["conn"]
    # the upstream's Connection: close is hop-by-hop: the client connection stays usable
    assert proxy.stat("downstream_cx_destroy") >= 0


def test_stale_pooled_upstream_connection(proxy):
    """The upstream drops a keep-alive connection right after a response
    (no Connection: close). The next request must still succeed."""
    with RawConn(proxy.port, timeout=5) as c:
        assert c.request("GET", "/a?drop_after=1").status == 200
        time.sleep(0.2)
        r = c.request("GET", "/b")
        assert r.status == 200, r
        # and immediately, without a pause
        assert c.request("GET", "/c?drop_after=1").status == 200
        assert c.request("GET", "/d").status == 200


def test_upstream_response_cl_and_te_rejected(proxy):
    r = get(proxy.port, "/cl-te")
    assert r.status == 502, r
    assert r.header("x-skiff-flags") == "UPE"


def test_upstream_bad_chunk_size(proxy):
    with RawConn(proxy.port, timeout=5) as c:
        try:
            r = c.request("GET", "/bad-chunk")
        except (EOFError, ConnectionResetError):
            return  # head already relayed: the connection is cut, never a clean body
        assert r.status == 502 and r.header("x-skiff-flags") == "UPE", r


def test_body_to_direct_response_not_parsed_as_request(skiff_factory, upstream):
    """A request with a body answered locally (direct_response / no route):
    the body bytes must never be taken for a next request."""
    lp, ap = free_port(), free_port()
    routes = [route("/direct", direct_response={"status": 200, "body": {"inline_string": "direct"}}),
              route("/up", "up")]
    cfg = bootstrap(ap, [http_listener("l", lp, [vhost("v", ["*"], routes)])], [cluster("up", [upstream.port])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    inner = b"GET /up/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    for path in (b"/direct", b"/nothing-here"):
        with RawConn(s.port, timeout=5) as c:
            c.send(b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
            r = c.read_response()
            assert r.status in (200, 404)
            # either the connection goes on (body skipped) or is closed; never a 2nd response
            if not c.is_closed(1):
                assert c.buf == b""
                r2 = c.request("GET", "/up/next")
                assert r2.status == 200
    time.sleep(0.3)
    assert not any("smuggled" in x["path"] for x in upstream.requests())


def test_chunked_body_to_direct_response_not_parsed_as_request(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    routes = [route("/direct", direct_response={"status": 200, "body": {"inline_string": "direct"}}),
              route("/up", "up")]
    cfg = bootstrap(ap, [http_listener("l", lp, [vhost("v", ["*"], routes)])], [cluster("up", [upstream.port])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    inner = b"GET /up/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    with RawConn(s.port, timeout=5) as c:
        c.send(b"POST /direct HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n")
        assert c.read_response().status == 200
        if not c.is_closed(1):
            assert c.buf == b""
    time.sleep(0.3)
    assert not any("smuggled" in x["path"] for x in upstream.requests())


def test_client_aborts_mid_body_then_proxy_still_serves(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"POST /partial HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.2)
    for _ in range(3):
        assert get(proxy.port, "/ok").status == 200
    assert proxy.proc.poll() is None


def test_client_aborts_while_waiting_for_upstream(proxy):
    for _ in range(3):
        c = RawConn(proxy.port)
        c.send(b"GET /sleep?s=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        c.close()
    assert get(proxy.port, "/ok").status == 200
    assert proxy.proc.poll() is None


def test_pipelined_slow_first_response_order(proxy):
    with RawConn(proxy.port, timeout=10) as c:
        c.send(b"GET /x?sleep=0.5&n=1 HTTP/1.1\r\nHost: t\r\n\r\n"
               b"GET /x?n=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().json()["path"] == "/x?sleep=0.5&n=1"
        assert c.read_response().json()["path"] == "/x?n=2"


def test_downstream_idle_timeout(make_proxy, upstream):
    s = make_proxy([upstream.port], hcm_extra={"common_http_protocol_options": {"idle_timeout": "1s"}})
    with RawConn(s.port, timeout=10) as c:
        assert c.request("GET", "/a").status == 200
        assert c.is_closed(8)
    assert s.stat("downstream_cx_idle_timeout") >= 1


@pytest.mark.parametrize("raw,status", [
    (b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
    (b"GET /\r\nHost: t\r\n\r\n", 400),
    (b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
])
def test_malformed_request_lines(proxy, raw, status):
    with RawConn(proxy.port, timeout=5) as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == status, r
        assert c.is_closed(5)
    time.sleep(0.2)
    assert proxy.upstream.requests() == []


def test_admin_healthcheck_fail_ok(proxy):
    assert proxy.ready_status() == 200
    assert admin_post(proxy.admin_port, "/healthcheck/fail")[0] == 200
    assert proxy.ready_status() == 503
    # traffic is still served
    assert get(proxy.port, "/x").status == 200
    assert admin_post(proxy.admin_port, "/healthcheck/ok")[0] == 200
    assert proxy.ready_status() == 200


def test_admin_server_info_and_unknown(proxy):
    st, body = admin_get(proxy.admin_port, "/server_info")
    assert st == 200
    assert "LIVE" in body
    assert admin_get(proxy.admin_port, "/no/such/admin/path")[0] == 404


def test_admin_quitquitquit_requires_post(proxy):
    st, _ = admin_get(proxy.admin_port, "/quitquitquit")
    assert st in (404, 405)
    time.sleep(0.3)
    assert proxy.proc.poll() is None
    assert proxy.ready_status() == 200


def test_reload_moves_listener_port(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    s = skiff_factory(simple_http(lp, ap, [upstream.port]), port=lp, admin_port=ap)
    assert get(lp, "/old").status == 200
    lp2 = free_port()
    st = s.reload(simple_http(lp2, ap, [upstream.port]))
    assert st["config_reload_ok"] == 1, s.log()
    assert wait_for(lambda: get(lp2, "/new").status == 200, timeout=5)

    def old_gone():
        try:
            with socket.create_connection(("127.0.0.1", lp), timeout=1) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                c.settimeout(2)
                return c.recv(10) == b""
        except (ConnectionRefusedError, ConnectionResetError):
            return True
    assert wait_for(old_gone, timeout=5)


def test_reload_adds_cluster_and_route(skiff_factory, upstreams):
    a, b = upstreams("a"), upstreams("b")
    lp, ap = free_port(), free_port()
    v1 = bootstrap(ap, [http_listener("l", lp, [vhost("v", ["*"], [route("/", "a")])])], [cluster("a", [a.port])])
    s = skiff_factory(v1, port=lp, admin_port=ap)
    assert get(lp, "/b/x").json()["server"] == "a"
    v2 = bootstrap(ap, [http_listener("l", lp, [vhost("v", ["*"], [route("/b/", "b"), route("/", "a")])])],
                   [cluster("a", [a.port]), cluster("b", [b.port])])
    assert s.reload(v2)["config_reload_ok"] == 1
    assert get(lp, "/b/x").json()["server"] == "b"
    assert get(lp, "/a/x").json()["server"] == "a"


def test_head_of_chunked_resource(proxy):
    with RawConn(proxy.port, timeout=5) as c:
        r = c.request("HEAD", "/head-chunked")
        assert r.status == 200
        assert r.body == b""
        r2 = c.request("GET", "/head-chunked")
        assert r2.body == b"hello"


def test_304_with_content_length_has_no_body(proxy):
    with RawConn(proxy.port, timeout=5) as c:
        r = c.request("GET", "/304-cl")
        assert r.status == 304
        assert c.request("GET", "/after304").json()["path"] == "/after304"


@pytest.mark.parametrize("v10", [False, True])
def test_close_delimited_upstream_body(proxy, v10):
    path = "/eof-body?size=200000" + ("&v10=1" if v10 else "")
    with RawConn(proxy.port, timeout=10) as c:
        c.send(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
        r = c.read_response()
        assert r.status == 200
        from upstream import pattern
        assert r.body == pattern(200000)
        # re-framed (chunked) keeps the connection, or close-delimited closes it
        if r.header("transfer-encoding"):
            assert c.request("GET", "/next").status == 200


def test_many_response_headers(proxy):
    r = get(proxy.port, "/many-headers?n=90")
    assert r.status == 200
    assert r.header("x-h89") == "v89"


def test_chunk_extensions_and_pipelined_trailers(proxy):
    with RawConn(proxy.port, timeout=5) as c:
        c.send(b"POST /ext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n0\r\nx-t: 1\r\n\r\n"
               b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        r1 = c.read_response()
        assert r1.json()["body"] == "hello"
        assert c.read_response().json()["path"] == "/after"


def test_xff_multiple_existing(proxy):
    r = get(proxy.port, "/x", headers=[("X-Forwarded-For", "198.51.100.1, 198.51.100.2")])
    xff = [v for k, v in r.json()["headers"] if k.lower() == "x-forwarded-for"]
    parts = [p.strip() for p in ",".join(xff).split(",")]
    assert parts == ["198.51.100.1", "198.51.100.2", "127.0.0.1"], xff


def test_websocket_client_close_propagates(make_proxy, upstream):
    import base64, os
    s = make_proxy([upstream.port], hcm_extra={"upgrade_configs": [{"upgrade_type": "websocket"}]})
    c = RawConn(s.port, timeout=10)
    c.send(("GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % base64.b64encode(os.urandom(16)).decode()).encode())
    assert c.read_response().status == 101
    c.send(b"last words")
    c.sock.shutdown(socket.SHUT_WR)
    got = c.read_all_until_close(10)
    c.close()
    assert got == b"last words"
    assert wait_for(lambda: s.stat("downstream_cx_active") == 0, timeout=5), s.stats()


def test_tcp_upstream_closes_first(skiff_factory, upstream):
    # the HTTP upstream closes after answering one request with Connection: close
    from helpers import tcp_listener
    lp, ap = free_port(), free_port()
    cfg = bootstrap(ap, [tcp_listener("t", lp, "up")], [cluster("up", [upstream.port])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    with RawConn(s.port, timeout=5) as c:
        c.send(b"GET /tcp HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert c.is_closed(5)


def test_many_concurrent_connections(proxy):
    import threading
    errs, oks = [], []

    def one(i):
        try:
            r = get(proxy.port, "/cc/%d?sleep=0.2" % i, timeout=20)
            oks.append(r.status)
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(150)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errs, errs[:3]
    assert oks == [200] * 150
