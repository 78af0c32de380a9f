"""L4 toxics (skiff.toxics.v1.Toxics): on a tcp_proxy listener's client
connection and on a cluster's upstream connections (tcp_proxy, HTTP/1, HTTP/2),
observed with real sockets."""
import math
import os
import socket
import statistics
import subprocess
import threading
import time

import pytest

from helpers import (RawConn, admin_get, bootstrap, cluster, dump, free_port, http_listener, route,
                     tcp_listener, vhost)

TOX_TYPE = "type.googleapis.com/skiff.toxics.v1.Toxics"
TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
H2_OPTS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def toxic(kind, stream="DOWNSTREAM", toxicity=None, name=None, **params):
    t = {"name": name or kind, "stream": stream, kind: params}
    if toxicity is not None:
        t["toxicity"] = toxicity
    return t


def tox_filter(*toxics):
    return {"name": "skiff.filters.network.toxics",
            "typed_config": {"@type": TOX_TYPE, "toxics": list(toxics)}}


def tcp_cfg(lp, ap, up_port, listener_toxics=(), cluster_toxics=()):
    lst = tcp_listener("tcp", lp, "echo")
    if listener_toxics:
        lst["filter_chains"][0]["filters"].insert(0, tox_filter(*listener_toxics))
    cl = cluster("echo", [up_port])
    if cluster_toxics:
        cl["filters"] = [tox_filter(*cluster_toxics)]
    return bootstrap(ap, [lst], [cl])


def start_tcp(skiff_factory, up_port, listener_toxics=(), cluster_toxics=(), args=()):
    lp, ap = free_port(), free_port()
    return skiff_factory(tcp_cfg(lp, ap, up_port, listener_toxics, cluster_toxics), args=args,
                         port=lp, admin_port=ap)


@pytest.fixture
def echo(upstreams):
    return upstreams("echo", mode="tcpecho")


def recv_exact(s, n):
    out = bytearray()
    while len(out) < n:
        d = s.recv(min(65536, n - len(out)))
        if not d:
            break
        out += d
    return bytes(out)


def recv_all(s):
    out = bytearray()
    while True:
        d = s.recv(65536)
        if not d:
            return bytes(out)
        out += d


def echo_rtt(port, msg=b"ping", timeout=10):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        t0 = time.monotonic()
        c.sendall(msg)
        assert recv_exact(c, len(msg)) == msg
        return time.monotonic() - t0


class Banner:
    """TCP server that greets each connection at once with b"hello\\n" and
    records when the client's first bytes arrive (echoing them)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.arrivals = []
        self.stopped = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self.conn, args=(c,), daemon=True).start()

    def conn(self, c):
        try:
            c.settimeout(10)
            c.sendall(b"hello\n")
            d = c.recv(65536)
            self.arrivals.append(time.monotonic())
            while d:
                c.sendall(d)
                d = c.recv(65536)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopped = True
        self.t.join(2)
        self.sock.close()


@pytest.fixture
def banner():
    b = Banner()
    yield b
    b.stop()


# ---- latency ------------------------------------------------------------------------------

def test_latency_adds_200ms_to_tcp_echo(skiff_factory, echo):
    plain = start_tcp(skiff_factory, echo.port)
    base = min(echo_rtt(plain.port) for _ in range(3))
    s = start_tcp(skiff_factory, echo.port,
                  listener_toxics=[toxic("latency", "DOWNSTREAM", latency_ms=200)])
    rtts = [echo_rtt(s.port) for _ in range(3)]
    print("latency 200 ms: baseline %.4f s, with toxic %s" % (base, ["%.4f" % r for r in rtts]))
    assert base < 0.1
    assert all(0.2 <= r < 1.5 for r in rtts), rtts
    # every message on one connection is delayed, not only the first
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        for i in range(3):
            t0 = time.monotonic()
            c.sendall(b"m%d" % i)
            assert recv_exact(c, 2) == b"m%d" % i
            assert time.monotonic() - t0 >= 0.2
    st = s.stats()
    assert st["toxics.latency_injected"] == 4
    assert "toxics: tcp downstream conn" in s.log()


def test_latency_jitter_bounds(skiff_factory, echo):
    """latency 200 +- 50 ms on both streams: a round trip is 300..500 ms, spread out."""
    s = start_tcp(skiff_factory, echo.port, listener_toxics=[
        toxic("latency", "UPSTREAM", name="up", latency_ms=200, jitter_ms=50),
        toxic("latency", "DOWNSTREAM", name="down", latency_ms=200, jitter_ms=50)])
    rtts = []
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        for i in range(10):
            t0 = time.monotonic()
            c.sendall(b"j%02d" % i)
            assert recv_exact(c, 3) == b"j%02d" % i
            rtts.append(time.monotonic() - t0)
    print("jitter rtts:", ["%.3f" % r for r in rtts])
    assert min(rtts) >= 0.299, rtts
    assert max(rtts) < 0.5 + 0.3, rtts  # + scheduling slack
    assert max(rtts) - min(rtts) > 0.01, rtts  # jitter really varies


def test_direction_respected(skiff_factory, banner):
    """latency on the UPSTREAM stream delays what the client sends, not the
    server's greeting; on DOWNSTREAM the reverse."""
    for stream in ("UPSTREAM", "DOWNSTREAM"):
        banner.arrivals.clear()
        s = start_tcp(skiff_factory, banner.port,
                      listener_toxics=[toxic("latency", stream, latency_ms=600)])
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            t0 = time.monotonic()
            assert recv_exact(c, 6) == b"hello\n"
            greet = time.monotonic() - t0
            t1 = time.monotonic()
            c.sendall(b"data")
            assert recv_exact(c, 4) == b"data"
            assert banner.arrivals
            arrive = banner.arrivals[0] - t1
        print("%s: greeting after %.3f s, client bytes at the server after %.3f s"
              % (stream, greet, arrive))
        # 600 ms on one direction; the other is not delayed (0.3 s of slack for
        # a loaded machine)
        if stream == "UPSTREAM":
            assert greet < 0.3 and arrive >= 0.6
        else:
            assert greet >= 0.6 and arrive < 0.3
        s.stop()


# ---- bandwidth ----------------------------------------------------------------------------

def test_bandwidth_64kib_per_s(skiff_factory, echo):
    s = start_tcp(skiff_factory, echo.port,
                  listener_toxics=[toxic("bandwidth", "DOWNSTREAM", rate_kbps=64)])
    n = 160 * 1024
    data = os.urandom(n)
    with socket.create_connection(("127.0.0.1", s.port), timeout=20) as c:
        threading.Thread(target=c.sendall, args=(data,), daemon=True).start()
        got = bytearray()
        t_first = None
        first_len = 0
        while len(got) < n:
            d = c.recv(65536)
            if not d:
                break
            if t_first is None:
                t_first, first_len = time.monotonic(), len(d)
            got += d
        t_end = time.monotonic()
    assert bytes(got) == data
    rate = (n - first_len) / (t_end - t_first)
    print("bandwidth 64 KiB/s: measured %.0f B/s (%.1f%%)" % (rate, 100.0 * rate / 65536))
    assert abs(rate - 65536) <= 0.10 * 65536, rate


# ---- reset_peer, timeout ------------------------------------------------------------------

def test_reset_peer_is_econnreset(skiff_factory, echo):
    s = start_tcp(skiff_factory, echo.port, listener_toxics=[toxic("reset_peer", timeout_ms=0)])
    with pytest.raises(ConnectionResetError):
        # the RST may even beat the connect's completion check
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
            c.sendall(b"x")
            time.sleep(0.1)
            c.sendall(b"y")
            c.recv(10)
    # after a timeout: works first, then reset
    s2 = start_tcp(skiff_factory, echo.port, listener_toxics=[toxic("reset_peer", timeout_ms=400)])
    with socket.create_connection(("127.0.0.1", s2.port), timeout=5) as c:
        t0 = time.monotonic()
        c.sendall(b"early")
        assert recv_exact(c, 5) == b"early"
        with pytest.raises(ConnectionResetError):
            c.recv(10)
        assert time.monotonic() - t0 >= 0.39
    assert s.stat("toxics.reset_peer_injected") == 1
    assert s2.stat("toxics.reset_peer_injected") == 1


def test_timeout_drops_then_closes(skiff_factory, echo):
    s = start_tcp(skiff_factory, echo.port,
                  listener_toxics=[toxic("timeout", "UPSTREAM", timeout_ms=500)])
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        t0 = time.monotonic()
        c.sendall(b"lost")
        assert c.recv(10) == b""  # no data, then closed
        dt = time.monotonic() - t0
    print("timeout 500 ms: closed after %.3f s" % dt)
    assert 0.45 <= dt < 3.0


def test_timeout_zero_is_a_blackhole(skiff_factory, echo):
    s = start_tcp(skiff_factory, echo.port,
                  listener_toxics=[toxic("timeout", "UPSTREAM", timeout_ms=0)])
    with socket.create_connection(("127.0.0.1", s.port), timeout=1.5) as c:
        c.sendall(b"into the void")
        with pytest.raises(socket.timeout):
            c.recv(10)
    assert s.stat("toxics.timeout_injected") == 1


# ---- slicer, limit_data, slow_close ---------------------------------------------------------

def test_slicer_many_small_reads(skiff_factory, echo):
    s = start_tcp(skiff_factory, echo.port, listener_toxics=[
        toxic("slicer", "DOWNSTREAM", average_size=100, size_variation=20, delay_us=2000)])
    data = os.urandom(6000)
    sizes = []
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(data)
        got = bytearray()
        while len(got) < len(data):
            d = c.recv(65536)
            if not d:
                break
            sizes.append(len(d))
            got += d
    assert bytes(got) == data
    print("slicer: %d reads, median %d, max %d" % (len(sizes), statistics.median(sizes), max(sizes)))
    assert len(sizes) >= 30, sizes
    assert statistics.median(sizes) <= 120, sizes


@pytest.mark.parametrize("stream", ["UPSTREAM", "DOWNSTREAM"])
def test_limit_data_exact(skiff_factory, echo, stream):
    s = start_tcp(skiff_factory, echo.port,
                  listener_toxics=[toxic("limit_data", stream, bytes=1000)])
    data = os.urandom(5000)
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(data)
        got = recv_all(c)
    assert got == data[:1000], len(got)


def test_slow_close_delays_the_fin(skiff_factory, echo):
    def close_time(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"bye")
            assert recv_exact(c, 3) == b"bye"
            t0 = time.monotonic()
            c.shutdown(socket.SHUT_WR)
            assert c.recv(10) == b""
            return time.monotonic() - t0

    plain = start_tcp(skiff_factory, echo.port)
    base = close_time(plain.port)
    s = start_tcp(skiff_factory, echo.port,
                  listener_toxics=[toxic("slow_close", "DOWNSTREAM", delay_ms=500)])
    dt = close_time(s.port)
    print("slow_close 500 ms: FIN after %.3f s (baseline %.3f s)" % (dt, base))
    assert base < 0.2
    assert 0.5 <= dt < 3.0


# ---- toxicity, seed -------------------------------------------------------------------------

def reset_pattern(port, n):
    out = []
    for _ in range(n):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"a")
                out.append(0 if recv_exact(c, 1) == b"a" else 1)
        except ConnectionError:
            out.append(1)
    return out


def test_toxicity_half_over_200_connections(skiff_factory, echo):
    s = start_tcp(skiff_factory, echo.port,
                  listener_toxics=[toxic("reset_peer", toxicity=0.5, timeout_ms=0)])
    pat = reset_pattern(s.port, 200)
    resets = sum(pat)
    sigma = math.sqrt(200 * 0.25)
    print("toxicity 0.5: %d of 200 connections reset (3 sigma = %.1f)" % (resets, 3 * sigma))
    assert abs(resets - 100) <= 3 * sigma, resets
    assert s.stat("toxics.reset_peer_injected") == resets


def test_seed_makes_selection_reproducible(skiff_factory, echo, monkeypatch):
    monkeypatch.setenv("SKIFF_FAULT_SEED", "4242")
    pats = []
    for _ in range(2):
        s = start_tcp(skiff_factory, echo.port, args=["--concurrency", 1],
                      listener_toxics=[toxic("reset_peer", toxicity=0.5, timeout_ms=0)])
        pats.append(reset_pattern(s.port, 40))
        s.stop()
    print("seeded patterns:", "".join(map(str, pats[0])), "".join(map(str, pats[1])))
    assert pats[0] == pats[1]
    assert 0 < sum(pats[0]) < 40


# ---- cluster upstream connections ---------------------------------------------------------------

def test_cluster_toxics_on_tcp_proxy_upstream(skiff_factory, banner):
    """Cluster.filters on a tcp_proxy cluster: UPSTREAM there is the bytes
    written to the upstream host."""
    s = start_tcp(skiff_factory, banner.port,
                  cluster_toxics=[toxic("latency", "UPSTREAM", latency_ms=300)])
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        t0 = time.monotonic()
        assert recv_exact(c, 6) == b"hello\n"
        greet = time.monotonic() - t0
        t1 = time.monotonic()
        c.sendall(b"data")
        assert recv_exact(c, 4) == b"data"
        arrive = banner.arrivals[0] - t1
    assert greet < 0.15 and arrive >= 0.3, (greet, arrive)
    assert "toxics: tcp upstream conn" in s.log()


def http_cfg(lp, ap, up_port, toxics, route_kw=None, cluster_kw=None):
    cl = cluster("up", [up_port], **(cluster_kw or {}))
    cl["filters"] = [tox_filter(*toxics)]
    return bootstrap(ap, [http_listener("ingress", lp, [vhost("v", ["*"], [route("/", "up", **(route_kw or {}))])])],
                     [cl])


def timed_get(port, path="/", n=5):
    out = []
    with RawConn(port, timeout=10) as c:
        for _ in range(n):
            t0 = time.monotonic()
            r = c.request("GET", path)
            out.append((r.status, time.monotonic() - t0))
    return out


def test_cluster_latency_on_http1_pool(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    s = skiff_factory(http_cfg(lp, ap, upstream.port, [toxic("latency", "DOWNSTREAM", latency_ms=200)]),
                      port=lp, admin_port=ap)
    res = timed_get(s.port)
    print("h1 cluster latency:", ["%.3f" % t for _, t in res])
    assert all(st == 200 for st, _ in res)
    assert all(t >= 0.2 for _, t in res), res
    assert all(t < 2.0 for _, t in res), res
    # one pooled connection carried all five (the toxic stays with it)
    assert s.stat("toxics.latency_injected") == 1
    assert "toxics: upstream h1 conn" in s.log()


def test_cluster_latency_on_http2_cluster(skiff_factory):
    from grpc_h2echo import H2Echo
    srv = H2Echo("echo")
    try:
        lp, ap = free_port(), free_port()
        s = skiff_factory(http_cfg(lp, ap, srv.port, [toxic("latency", "UPSTREAM", latency_ms=200)],
                                   cluster_kw={"typed_extension_protocol_options": H2_OPTS}),
                          port=lp, admin_port=ap)
        res = timed_get(s.port, "/x", n=3)
        print("h2 cluster latency:", ["%.3f" % t for _, t in res])
        assert all(st == 200 for st, _ in res), res
        assert all(0.2 <= t < 2.0 for _, t in res), res
        assert s.stat("toxics.latency_injected") >= 1
        assert "toxics: upstream h2 conn" in s.log()
        assert srv.requests, "the h2 upstream saw nothing"
    finally:
        srv.stop()


def retry_run(skiff_factory, upstream, num_retries, n=100):
    lp, ap = free_port(), free_port()
    rp = {"retry_on": "reset,connect-failure", "num_retries": num_retries}
    s = skiff_factory(http_cfg(lp, ap, upstream.port,
                               [toxic("reset_peer", "UPSTREAM", toxicity=0.5, timeout_ms=0)],
                               route_kw={"retry_policy": rp},
                               cluster_kw={"max_requests_per_connection": 1,
                                           "circuit_breakers": {"thresholds": [{"max_retries": 1000}]}}),
                      port=lp, admin_port=ap)
    errors = 0
    with RawConn(s.port, timeout=10) as c:
        for _ in range(n):
            r = c.request("GET", "/")
            errors += r.status != 200
    return s, errors


def test_retries_hide_reset_peer_half(skiff_factory, upstream):
    s, errors = retry_run(skiff_factory, upstream, 5)
    st = s.stats()
    print("reset_peer 0.5 + num_retries 5: %d/100 errors, resets injected %d, retries %d"
          % (errors, st["toxics.reset_peer_injected"], st["cluster.up.upstream_rq_retry"]))
    assert errors <= 6, errors
    assert st["toxics.reset_peer_injected"] >= 20
    assert st["cluster.up.upstream_rq_retry"] >= 20
    s0, errors0 = retry_run(skiff_factory, upstream, 0)
    print("reset_peer 0.5 without retries: %d/100 errors" % errors0)
    assert 25 <= errors0 <= 75, errors0


# ---- stats, validation ---------------------------------------------------------------------------

def test_prometheus_family(skiff_factory, echo):
    s = start_tcp(skiff_factory, echo.port,
                  listener_toxics=[toxic("latency", "DOWNSTREAM", latency_ms=10)])
    echo_rtt(s.port)
    st, body = admin_get(s.admin_port, "/stats/prometheus")
    assert st == 200
    assert 'skiff_toxics_injected_total{kind="latency"} 1' in body, body[-2000:]
    assert "# TYPE skiff_toxics_injected_total counter" in body


def validate(skiff_bin, tmp_path, cfg):
    p = tmp_path / "bad.yaml"
    p.write_text(dump(cfg))
    return subprocess.run([skiff_bin, "--validate", "-c", str(p)], capture_output=True, text=True,
                          timeout=20)


@pytest.mark.parametrize("case,toxics,msg", [
    ("toxicity", [toxic("latency", toxicity=1.5, latency_ms=10)], "toxicity must be between 0 and 1"),
    ("unknown_type", [{"name": "x", "explode": {}}], "explode"),
    ("no_type", [{"name": "x", "stream": "UPSTREAM"}], "a toxic needs a type"),
    ("zero_rate", [toxic("bandwidth", rate_kbps=0)], "rate_kbps must be greater than 0"),
    ("slicer", [toxic("slicer", average_size=10, size_variation=10)], "size_variation"),
    ("dup", [toxic("latency", name="a", latency_ms=1), toxic("latency", name="b", latency_ms=2)],
     "two latency toxics"),
    ("stream", [toxic("latency", stream="SIDEWAYS", latency_ms=1)], "SIDEWAYS"),
])
def test_validation_errors(skiff_bin, tmp_path, case, toxics, msg):
    cfg = tcp_cfg(free_port(), free_port(), free_port(), listener_toxics=toxics)
    r = validate(skiff_bin, tmp_path, cfg)
    assert r.returncode != 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert msg in out, out
    assert "toxics[0]" in out or "toxics[1]" in out or case in ("unknown_type", "stream"), out
    # the same on a cluster
    cfg = tcp_cfg(free_port(), free_port(), free_port(), cluster_toxics=toxics)
    r = validate(skiff_bin, tmp_path, cfg)
    assert r.returncode != 0 and msg in r.stdout + r.stderr, r.stdout + r.stderr


def test_toxics_before_hcm_rejected(skiff_bin, tmp_path):
    lp = free_port()
    lst = http_listener("ingress", lp, [vhost("v", ["*"], [route("/", "up")])])
    lst["filter_chains"][0]["filters"].insert(0, tox_filter(toxic("latency", latency_ms=1)))
    cfg = bootstrap(free_port(), [lst], [cluster("up", [free_port()])])
    r = validate(skiff_bin, tmp_path, cfg)
    assert r.returncode != 0
    assert "in front of envoy.filters.network.tcp_proxy" in r.stdout + r.stderr, r.stdout + r.stderr


def test_http_access_log_flags_requests_on_toxic_connections(skiff_factory, upstream, tmp_path):
    """HTTP requests whose upstream connection carries an L4 toxic are flagged TX."""
    log = tmp_path / "al.log"
    lp, ap = free_port(), free_port()
    cfg = http_cfg(lp, ap, upstream.port, [toxic("latency", "DOWNSTREAM", latency_ms=5)])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(log), "log_format": {"text_format_source": {
            "inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS%\n"}}}}]
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    assert all(st == 200 for st, _ in timed_get(s.port, n=3))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    assert log.read_text().splitlines() == ["200 TX"] * 3
