"""Upstream HTTP/2 and gRPC end to end: python3-grpcio client -> skiff (HCM
codec AUTO, h2c prior knowledge) -> HTTP/2 upstream cluster -> python3-grpcio
server; plus curl (HTTP/1.1 and h2c) against a python3-h2 upstream, and the
h2 client's handling of GOAWAY / REFUSED_STREAM (transparent re-issue)."""
import queue
import socket
import subprocess
import threading
import time

import grpc
import pytest

import helpers
from grpc_h2echo import H2Echo
from grpc_service import Client, serve
from helpers import bootstrap, cluster, curl, free_port, http_listener, route, vhost, wait_for

H2_OPTS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def h2_config(lp, ap, upstream_port, routes=None, cluster_extra=None, upstream_host="127.0.0.1"):
    routes = routes or [
        # the deadline test: without grpc-timeout the server has no deadline
        # of its own, only skiff's RST_STREAM can cancel the call
        route(path="/test.Echo/Sleep", cluster="grpc", timeout="0s",
              request_headers_to_remove=["grpc-timeout"]),
        route("/", "grpc", timeout="0s"),
    ]
    extra = {"typed_extension_protocol_options": H2_OPTS}
    extra.update(cluster_extra or {})
    return bootstrap(ap,
                     [http_listener("ingress", lp, [vhost("default", ["*"], routes)],
                                    hcm_extra={"codec_type": "AUTO"})],
                     [cluster("grpc", [upstream_port], host=upstream_host, **extra)])


@pytest.fixture
def grpc_upstream():
    server, port, svc = serve()
    svc.port = port
    yield svc
    server.stop(0)


@pytest.fixture
def grpc_proxy(skiff_factory, grpc_upstream):
    lp, ap = free_port(), free_port()
    s = skiff_factory(h2_config(lp, ap, grpc_upstream.port), port=lp, admin_port=ap)
    s.svc = grpc_upstream
    return s


@pytest.fixture
def client(grpc_proxy):
    c = Client("127.0.0.1:%d" % grpc_proxy.port)
    yield c
    c.close()


# ---- gRPC ---------------------------------------------------------------------------

def test_unary(grpc_proxy, client):
    assert client.unary(b"hello", timeout=10) == b"hello"
    assert client.unary(b"", timeout=10) == b""
    st = grpc_proxy.stats()
    assert st.get("upstream_cx_total", 0) >= 1
    assert st.get("upstream_rq_total", 0) >= 2
    assert st.get("upstream_cx_active", 0) >= 1


def test_server_streaming(client):
    got = list(client.server_stream(b"100", timeout=10))
    assert got == [b"msg-%d" % i for i in range(100)]


def test_client_streaming(client):
    msgs = [b"m" * (i + 1) for i in range(100)]
    assert client.client_stream(iter(msgs), timeout=10) == b"100:%d" % sum(len(m) for m in msgs)


def test_bidi_streaming_interleaved(client):
    q = queue.Queue()

    def gen():
        for i in range(100):
            yield b"ping-%d" % i
            # wait for the echo before sending the next one: a real ping-pong
            assert q.get(timeout=10) == b"ping-%d" % i

    call = client.bidi(gen(), timeout=20)
    n = 0
    for m in call:
        q.put(m)
        n += 1
    assert n == 100
    assert call.code() == grpc.StatusCode.OK


def test_large_messages(client):
    big = bytes(range(256)) * (5 * 1024 * 1024 // 256 + 7)  # ~5 MiB
    assert client.unary(big, timeout=30) == big
    # several at once on the same connection
    futs = [client.unary.future(big[:4 * 1024 * 1024 + i], timeout=60) for i in range(3)]
    for i, f in enumerate(futs):
        assert f.result() == big[:4 * 1024 * 1024 + i]


def test_metadata_both_ways(grpc_proxy, client):
    resp, call = client.unary.with_call(b"meta", metadata=(("x-client-meta", "from-client"),
                                                           ("x-bin-bin", b"\x00\x01\xff")),
                                        timeout=10)
    assert resp == b"meta"
    md = dict(grpc_proxy.svc.metadata[-1])
    assert md.get("x-client-meta") == "from-client"
    assert md.get("x-bin-bin") == b"\x00\x01\xff"
    assert ("x-initial", "init-value") in tuple(call.initial_metadata())
    assert ("x-trailing", "trail-value") in tuple(call.trailing_metadata())


def test_status_in_trailers_after_messages(client):
    call = client.server_stream(b"3:fail", timeout=10)
    got = []
    with pytest.raises(grpc.RpcError) as ei:
        for m in call:
            got.append(m)
    assert got == [b"msg-0", b"msg-1", b"msg-2"]
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    assert ei.value.details() == "gone after 3"


def test_trailers_only_response(client):
    with pytest.raises(grpc.RpcError) as ei:
        client.fail(b"x", timeout=10)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    assert ei.value.details() == "no such thing"
    # the connection is still good
    assert client.unary(b"after", timeout=10) == b"after"


def test_deadline_cancels_upstream(grpc_proxy, client):
    svc = grpc_proxy.svc
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        client.sleep(b"", timeout=0.2)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.5
    # the client's RST_STREAM went through skiff to the server (the server
    # had no deadline of its own: skiff's route strips grpc-timeout)
    assert svc.cancelled["Sleep"].wait(3), "server never saw the cancellation"
    assert not svc.sleep_finished.is_set()


def test_client_cancel_streaming_propagates(grpc_proxy, client):
    svc = grpc_proxy.svc
    call = client.forever(b"", timeout=30)
    it = iter(call)
    for _ in range(3):
        next(it)
    call.cancel()
    assert svc.cancelled["Forever"].wait(3), "server never saw the cancellation"
    # and the proxy keeps working
    assert client.unary(b"still", timeout=10) == b"still"


def test_bidi_client_cancel_propagates(grpc_proxy, client):
    svc = grpc_proxy.svc
    stop = threading.Event()

    def gen():
        yield b"one"
        stop.wait(10)

    call = client.bidi(gen(), timeout=30)
    assert next(iter(call)) == b"one"
    call.cancel()
    stop.set()
    assert svc.cancelled["Bidi"].wait(3), "server never saw the cancellation"


def test_200_concurrent_unary(grpc_proxy, client):
    futs = [client.unary.future(b"req-%d" % i, timeout=30) for i in range(200)]
    for i, f in enumerate(futs):
        assert f.result() == b"req-%d" % i
    # streams were multiplexed: far fewer upstream connections than calls
    assert grpc_proxy.stat("upstream_cx_total") <= 8


def test_upstream_connection_reused_and_idle_close(skiff_factory, grpc_upstream):
    lp, ap = free_port(), free_port()
    cfg = h2_config(lp, ap, grpc_upstream.port)
    cfg["static_resources"]["clusters"][0]["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["common_http_protocol_options"] = {
            "idle_timeout": "0.3s"}
    s = skiff_factory(cfg, port=lp, admin_port=ap, args=["--concurrency", "1"])
    c = Client("127.0.0.1:%d" % lp)
    try:
        for i in range(5):
            assert c.unary(b"%d" % i, timeout=10) == b"%d" % i
        assert s.stat("upstream_cx_total") == 1
        assert wait_for(lambda: s.stat("upstream_cx_active") == 0, timeout=5), s.stats()
        assert s.stat("upstream_cx_destroy") == 1
        assert c.unary(b"again", timeout=10) == b"again"
        assert s.stat("upstream_cx_total") == 2
    finally:
        c.close()


def test_max_connections_breaker_multiplexes(skiff_factory, grpc_upstream):
    """max_connections 1: every call shares the one h2 connection (the
    breaker limits connections, not streams)."""
    lp, ap = free_port(), free_port()
    cfg = h2_config(lp, ap, grpc_upstream.port,
                    cluster_extra={"circuit_breakers": {"thresholds": [{"max_connections": 1}]}})
    s = skiff_factory(cfg, port=lp, admin_port=ap, args=["--concurrency", "1"])
    c = Client("127.0.0.1:%d" % lp)
    try:
        futs = [c.unary.future(b"%d" % i, timeout=20) for i in range(50)]
        assert [f.result() for f in futs] == [b"%d" % i for i in range(50)]
    finally:
        c.close()
    assert s.stat("upstream_cx_total") == 1


# ---- proxy-generated errors on gRPC requests ---------------------------------------

def test_connect_failure_is_grpc_unavailable_with_cause(skiff_factory):
    lp, ap = free_port(), free_port()
    dead = free_port()  # nothing listens there
    s = skiff_factory(h2_config(lp, ap, dead), port=lp, admin_port=ap)
    c = Client("127.0.0.1:%d" % lp)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            c.unary(b"x", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        # the status must come from skiff (grpc-status 14), not from grpcio
        # mapping an HTTP 503, and it must say why
        assert "status: 503" not in (ei.value.details() or "")
        assert "connect" in (ei.value.details() or "").lower(), ei.value.details()
    finally:
        c.close()
    assert s.stat("upstream_cx_connect_fail") >= 1


def test_no_healthy_upstream_is_grpc_unavailable(skiff_factory):
    lp, ap = free_port(), free_port()
    cfg = h2_config(lp, ap, 1)
    cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"] = []
    skiff_factory(cfg, port=lp, admin_port=ap)
    c = Client("127.0.0.1:%d" % lp)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            c.unary(b"x", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "status: 503" not in (ei.value.details() or "")
        assert "healthy" in (ei.value.details() or "").lower(), ei.value.details()
    finally:
        c.close()


# ---- plain HTTP over an h2 upstream ---------------------------------------------------

@pytest.fixture
def h2echo():
    servers = []

    def make(mode="echo", delay=0.0):
        s = H2Echo(mode, delay)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def _hdr(out, name):
    for ln in out.decode(errors="replace").splitlines():
        k, sep, v = ln.partition(":")
        if sep and k.strip().lower() == name:
            return v.strip()
    return None


@pytest.mark.parametrize("proto", ["--http1.1", "--http2-prior-knowledge"])
def test_curl_to_h2_upstream_with_bodies(skiff_factory, h2echo, tmp_path, proto):
    up = h2echo()
    lp, ap = free_port(), free_port()
    skiff_factory(h2_config(lp, ap, up.port), port=lp, admin_port=ap)
    url = "http://127.0.0.1:%d" % lp
    # GET, no body
    r = curl(proto, "-D", "-", "-o", str(tmp_path / "get"), url + "/bytes/300000")
    assert r.returncode == 0, r.stderr
    assert _hdr(r.stdout, "x-got-method") == "GET"
    assert (tmp_path / "get").read_bytes() == b"x" * 300000
    # POST with content-length (1 MiB body both ways)
    body = bytes(range(256)) * 4096
    (tmp_path / "body").write_bytes(body)
    r = curl(proto, "-D", "-", "-o", str(tmp_path / "post"), "--data-binary",
             "@" + str(tmp_path / "body"), "-H", "content-type: application/octet-stream",
             url + "/echo")
    assert r.returncode == 0, r.stderr
    assert _hdr(r.stdout, "x-got-method") == "POST"
    assert _hdr(r.stdout, "x-got-cl") == str(len(body))
    assert (tmp_path / "post").read_bytes() == body
    # chunked upload over HTTP/1.1 (length unknown upstream)
    if proto == "--http1.1":
        r = curl(proto, "-o", "-", "-H", "transfer-encoding: chunked", "--data-binary",
                 "@" + str(tmp_path / "body"), url + "/chunked")
        assert r.returncode == 0, r.stderr
        assert r.stdout == body


def test_h2_upstream_response_field_count(skiff_factory, h2echo):
    """Response header blocks from an h2 upstream: every field arrives up to the
    per-block limit (128 fields; the list starts at 16 and grows), more is a 502."""
    up = h2echo()
    lp, ap = free_port(), free_port()
    skiff_factory(h2_config(lp, ap, up.port), port=lp, admin_port=ap)
    url = "http://127.0.0.1:%d" % lp
    for n in (0, 9, 10, 11, 40, 120):
        r = curl("-s", "-D", "-", "-o", "/dev/null", url + "/fields/%d" % n)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"HTTP/1.1 200"), r.stdout[:100]
        for i in range(n):
            assert _hdr(r.stdout, "x-f-%d" % i) == "v%d" % i, (n, i)
        assert _hdr(r.stdout, "x-got-path") == "/fields/%d" % n
    r = curl("-s", "-D", "-", "-o", "/dev/null", url + "/fields/200")
    assert r.stdout.startswith(b"HTTP/1.1 502"), r.stdout[:100]


def test_goaway_unprocessed_stream_is_reissued(skiff_factory, h2echo, tmp_path):
    """Two requests in flight on one upstream connection; the server sends
    GOAWAY(last_stream_id = the first) and never processes the second: skiff
    re-issues it on a new connection, the client never notices."""
    up = h2echo("goaway2")
    lp, ap = free_port(), free_port()
    s = skiff_factory(h2_config(lp, ap, up.port), port=lp, admin_port=ap,
                      args=["--concurrency", "1"])
    url = "http://127.0.0.1:%d" % lp
    procs = []
    for i in range(2):
        procs.append(subprocess.Popen(["curl", "-sS", "--max-time", "10", "--data-binary",
                                       "body-%d" % i, url + "/r%d" % i],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        time.sleep(0.1)
    outs = [p.communicate(timeout=20) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o[0] for o in outs) == [b"body-0", b"body-1"]
    assert up.goaways == 1
    # the second request was processed on a second connection
    conns = sorted({r[0] for r in up.requests})
    assert len(conns) == 2, up.requests
    assert s.stat("upstream_rq_reset") == 0


def test_refused_stream_is_reissued(skiff_factory, h2echo):
    up = h2echo("refuse1")
    lp, ap = free_port(), free_port()
    skiff_factory(h2_config(lp, ap, up.port), port=lp, admin_port=ap)
    r = curl("--data-binary", "hello", "http://127.0.0.1:%d/x" % lp)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello"
    assert up.refused == 1
    assert len(up.requests) == 1


def test_upstream_gone_mid_stream_is_reset(skiff_factory, grpc_upstream):
    """The upstream goes away while a streaming call is open: the client gets
    an error status, and skiff keeps serving once the upstream is back."""
    lp, ap = free_port(), free_port()
    # a dedicated server we can stop
    server, port, svc = serve()
    s = skiff_factory(h2_config(lp, ap, port), port=lp, admin_port=ap)
    c = Client("127.0.0.1:%d" % lp)
    try:
        call = c.forever(b"", timeout=30)
        it = iter(call)
        next(it)
        server.stop(0)
        with pytest.raises(grpc.RpcError) as ei:
            for _ in it:
                pass
        assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                   grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)
    finally:
        c.close()
    assert s.proc.poll() is None


def test_response_end_held_behind_a_paused_client(skiff_factory, h2echo):
    """An h2c client with a 16 KiB window that reads late: the upstream's whole
    response (body and END_STREAM) arrives while skiff holds it behind the
    paused client, and nghttp2 closes the upstream stream meanwhile. That must
    deliver the response, not reset it (it did: "stream closed before the
    response completed" -> RST_STREAM INTERNAL_ERROR to the client)."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings
    up = h2echo()
    lp, ap = free_port(), free_port()
    skiff_factory(h2_config(lp, ap, up.port), port=lp, admin_port=ap)
    size = 300000  # > what the router takes before pausing, < that + our 256 KiB window
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", lp), timeout=10)
        try:
            c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            c.initiate_connection()
            c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16384})
            sock.sendall(c.data_to_send())
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                                 (":path", "/bytes/%d" % size)], end_stream=True)
            sock.sendall(c.data_to_send())
            time.sleep(0.5)  # skiff fills our window and pauses; the upstream finishes
            got, ended, reset = 0, False, None
            deadline = time.monotonic() + 30
            while not ended and reset is None and time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        got += len(ev.data)
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        ended = True
                    elif isinstance(ev, h2.events.StreamReset):
                        reset = ev.error_code
                out = c.data_to_send()
                if out:
                    sock.sendall(out)
            assert reset is None, "stream reset: %r" % reset
            assert ended and got == size, (ended, got)
        finally:
            sock.close()


# ---- gRPC to a TLS upstream (h2 with ALPN h2, mTLS) ---------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tls_helpers import PKI
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def grpc_tls_upstream(pki):
    """grpcio server with TLS credentials that require a client certificate
    from the test CA; the handlers of grpc_service."""
    from concurrent import futures
    from grpc_service import GRPC_OPTIONS, SERVICE, Service, ident
    svc = Service()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(svc.unary, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(svc.fail, ident, ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(svc.server_stream, ident, ident),
        "ClientStream": grpc.stream_unary_rpc_method_handler(svc.client_stream, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(svc.bidi, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    creds = grpc.ssl_server_credentials(
        [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())],
        root_certificates=pki.ca.pem.read_bytes(), require_client_auth=True)
    svc.port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield svc
    server.stop(0)


def tls_cluster_extra(pki, cert=True, sans=None):
    from tls_helpers import SPIFFE, upstream_tls
    return {"transport_socket": upstream_tls(
        pki.ca.pem, cert=pki.client if cert else None,
        sans=sans or [("URI", SPIFFE % "server")], sni="localhost")}


def test_grpc_to_tls_upstream(skiff_factory, grpc_tls_upstream, pki):
    """grpcio (h2c) -> skiff -> h2 over mTLS -> grpcio TLS server: unary,
    metadata, every streaming kind, 5 MiB messages, error statuses, and 200
    concurrent calls multiplexed on the worker's TLS connection."""
    import concurrent.futures
    lp, ap = free_port(), free_port()
    s = skiff_factory(h2_config(lp, ap, grpc_tls_upstream.port,
                                cluster_extra=tls_cluster_extra(pki), upstream_host="127.0.0.1"),
                      port=lp, admin_port=ap, args=("--concurrency", "1"))
    c = Client("127.0.0.1:%d" % lp)
    try:
        assert c.unary(b"over-tls", timeout=10) == b"over-tls"
        resp, call = c.unary.with_call(b"meta", metadata=(("x-client", "v1"),), timeout=10)
        assert resp == b"meta"
        assert ("x-initial", "init-value") in call.initial_metadata()
        assert ("x-trailing", "trail-value") in call.trailing_metadata()
        assert ("x-client", "v1") in grpc_tls_upstream.metadata[-1]
        assert list(c.server_stream(b"100", timeout=10)) == [b"msg-%d" % i for i in range(100)]
        assert c.client_stream(iter([b"ab"] * 100), timeout=10) == b"100:200"
        msgs = [b"m-%d" % i for i in range(100)]
        assert list(c.bidi(iter(msgs), timeout=10)) == msgs
        big = bytes(range(256)) * (5 * 1024 * 1024 // 256 + 5)
        assert c.unary(big, timeout=30) == big
        assert list(c.bidi(iter([big, b"x", big]), timeout=60)) == [big, b"x", big]
        with pytest.raises(grpc.RpcError) as ei:
            c.fail(b"x", timeout=10)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND and ei.value.details() == "no such thing"
        with pytest.raises(grpc.RpcError) as ei:
            list(c.server_stream(b"2:fail", timeout=10))
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        with concurrent.futures.ThreadPoolExecutor(32) as ex:
            res = list(ex.map(lambda i: c.unary(b"c%d" % i, timeout=30), range(200)))
        assert res == [b"c%d" % i for i in range(200)]
    finally:
        c.close()
    st = s.stats()
    assert st["tls_handshake_client_ok"] == 1, st  # one worker, one multiplexed TLS connection
    assert st.get("upstream_cx_total") == 1, st


def test_grpc_to_tls_upstream_without_client_cert_is_unavailable(skiff_factory, grpc_tls_upstream,
                                                                 pki):
    """The TLS server requires a client certificate skiff does not present:
    the call fails as a gRPC error (never hangs, never succeeds)."""
    lp, ap = free_port(), free_port()
    skiff_factory(h2_config(lp, ap, grpc_tls_upstream.port,
                            cluster_extra=tls_cluster_extra(pki, cert=False)),
                  port=lp, admin_port=ap)
    c = Client("127.0.0.1:%d" % lp)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            c.unary(b"x", timeout=10)
        assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                   grpc.StatusCode.UNKNOWN), ei.value
    finally:
        c.close()
    assert grpc_tls_upstream.metadata == []


def test_grpc_to_tls_upstream_wrong_san_is_unavailable(skiff_factory, grpc_tls_upstream, pki):
    """Server identity not the expected SPIFFE id: UNAVAILABLE with the reason."""
    from tls_helpers import SPIFFE
    lp, ap = free_port(), free_port()
    s = skiff_factory(h2_config(lp, ap, grpc_tls_upstream.port, cluster_extra=tls_cluster_extra(
        pki, sans=[("URI", SPIFFE % "intruder")])), port=lp, admin_port=ap)
    c = Client("127.0.0.1:%d" % lp)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            c.unary(b"x", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "SAN mismatch" in (ei.value.details() or ""), ei.value.details()
    finally:
        c.close()
    assert s.stat("tls_handshake_fail.san_mismatch") == 1
    assert grpc_tls_upstream.metadata == []
