"""HTTP fault injection (envoy.extensions.filters.http.fault.v3.HTTPFault): aborts,
delays, header control, max_active_faults, gRPC aborts, per-route overrides, the
response rate limit, and how faults meet retries.

Faults are downstream-side: an abort answers before the router picks a host (so
it is never retried, and the upstream never sees the request); a delay holds
the request before the first attempt (per-try timeouts and retries start after
it). Statistical checks use 3 sigma bounds."""
import hashlib
import math
import threading
import time

import grpc
import pytest

import helpers
from grpc_service import Client, serve
from helpers import RawConn, bootstrap, cluster, free_port, http_listener, route, vhost

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FCFG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": helpers.ROUTER_TYPE}}


def pct(n, denom="HUNDRED"):
    return {"numerator": n, "denominator": denom}


def fault_filter(name="envoy.filters.http.fault", disabled=False, **cfg):
    f = {"name": name, "typed_config": dict({"@type": FAULT_TYPE}, **cfg)}
    if disabled:
        f["disabled"] = True
    return f


def fault_cfg(upstream_ports, lp, ap, filters, routes=None, vhost_extra=None, extra_clusters=()):
    routes = routes or [route("/", "up")]
    vh = vhost("default", ["*"], routes, **(vhost_extra or {}))
    hcm = {"http_filters": list(filters) + [ROUTER]}
    return bootstrap(ap, [http_listener("ingress", lp, [vh], hcm_extra=hcm)],
                     [cluster("up", upstream_ports)] + list(extra_clusters))


@pytest.fixture
def fault_proxy(skiff_factory, upstream):
    def make(filters, routes=None, args=(), **kw):
        lp, ap = free_port(), free_port()
        s = skiff_factory(fault_cfg([upstream.port], lp, ap, filters, routes, **kw), args=args,
                          port=lp, admin_port=ap)
        s.upstream = upstream
        return s
    return make


def within_3_sigma(hits, n, p):
    sigma = math.sqrt(n * p * (1 - p))
    return abs(hits - n * p) <= 3 * sigma, "%d hits of %d, expected %.1f +- %.1f" % (
        hits, n, n * p, 3 * sigma)


# ---- abort ------------------------------------------------------------------------------

def test_abort_ten_percent_within_3_sigma(fault_proxy):
    s = fault_proxy([fault_filter(abort={"http_status": 503, "percentage": pct(10)})])
    n, aborted = 5000, 0
    with RawConn(s.port) as c:
        for _ in range(n):
            r = c.request("GET", "/x")
            if r.status == 503:
                assert r.header("x-skiff-flags") == "FI", r
                assert b"fault filter abort" in r.body
                aborted += 1
            else:
                assert r.status == 200, r
    ok, why = within_3_sigma(aborted, n, 0.10)
    print("abort 10%%: %s" % why)
    assert ok, why
    st = s.stats()
    assert st["fault.aborts_injected"] == aborted
    assert st["fault.active_faults"] == 0
    # aborted requests never reached the upstream
    assert len(s.upstream.traffic()) == n - aborted


def run_sequence(s, n=300):
    out = []
    with RawConn(s.port) as c:
        for _ in range(n):
            out.append(c.request("GET", "/").status)
    return out


def test_seed_makes_selection_reproducible(skiff_factory, upstream, monkeypatch):
    monkeypatch.setenv("SKIFF_FAULT_SEED", "12345")
    seqs = []
    for _ in range(2):
        lp, ap = free_port(), free_port()
        s = skiff_factory(fault_cfg([upstream.port], lp, ap,
                                    [fault_filter(abort={"http_status": 503,
                                                         "percentage": pct(30)})]),
                          args=["--concurrency", "1"], port=lp, admin_port=ap)
        seqs.append(run_sequence(s))
        s.stop()
    assert seqs[0] == seqs[1]
    assert 0 < seqs[0].count(503) < 300
    monkeypatch.setenv("SKIFF_FAULT_SEED", "999")
    lp, ap = free_port(), free_port()
    s = skiff_factory(fault_cfg([upstream.port], lp, ap,
                                [fault_filter(abort={"http_status": 503, "percentage": pct(30)})]),
                      args=["--concurrency", "1"], port=lp, admin_port=ap)
    assert run_sequence(s) != seqs[0]


# ---- delay ------------------------------------------------------------------------------

def timed_get(port, path="/", headers=None):
    t0 = time.monotonic()
    r = helpers.get(port, path, headers=headers)
    return r, time.monotonic() - t0


def test_delay_200ms_on_20_percent(fault_proxy):
    s = fault_proxy([fault_filter(delay={"fixed_delay": "0.2s", "percentage": pct(20)})])
    n = 120
    times = []
    with RawConn(s.port) as c:
        for _ in range(n):
            t0 = time.monotonic()
            r = c.request("GET", "/")
            times.append(time.monotonic() - t0)
            assert r.status == 200, r
    slow = [t for t in times if t >= 0.2]
    fast = [t for t in times if t < 0.2]
    st = s.stats()
    # every delayed request took at least 200 ms, the others did not
    assert len(slow) == st["fault.delays_injected"], (len(slow), st)
    assert max(fast) < 0.15, max(fast)
    assert max(slow) < 1.0
    ok, why = within_3_sigma(len(slow), n, 0.20)
    print("delay 20%%: %s; slow min %.3f s, fast max %.3f s" % (why, min(slow), max(fast)))
    assert ok, why
    assert st["fault.active_faults"] == 0
    assert len(s.upstream.traffic()) == n  # delayed requests still reach the upstream


def test_delay_holds_request_body(fault_proxy):
    s = fault_proxy([fault_filter(delay={"fixed_delay": "0.3s", "percentage": pct(100)})])
    body = b"z" * 100000
    t0 = time.monotonic()
    r = helpers.get(s.port, "/post", method="POST", body=body)
    assert time.monotonic() - t0 >= 0.3
    assert r.status == 200, r
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_delay_then_abort(fault_proxy):
    s = fault_proxy([fault_filter(delay={"fixed_delay": "0.25s", "percentage": pct(100)},
                                  abort={"http_status": 429, "percentage": pct(100)})])
    r, dt = timed_get(s.port)
    assert r.status == 429 and r.header("x-skiff-flags") == "FI"
    assert dt >= 0.25
    st = s.stats()
    assert st["fault.delays_injected"] == 1 and st["fault.aborts_injected"] == 1
    assert s.upstream.traffic() == []


def test_client_gone_during_delay(fault_proxy):
    s = fault_proxy([fault_filter(delay={"fixed_delay": "2s", "percentage": pct(100)})])
    c = RawConn(s.port)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert helpers.wait_for(lambda: s.stat("fault.active_faults") == 1, timeout=5)
    c.close()
    assert helpers.wait_for(lambda: s.stat("fault.active_faults") == 0, timeout=5)
    time.sleep(2.2)
    assert s.upstream.traffic() == []  # the held request died with its client


# ---- header control -----------------------------------------------------------------

def test_header_faults_ignored_without_header_control(fault_proxy):
    # fixed faults at 0%: the x-envoy-fault-* headers must do nothing
    s = fault_proxy([fault_filter(delay={"fixed_delay": "1s", "percentage": pct(0)},
                                  abort={"http_status": 503, "percentage": pct(0)})])
    hdrs = [("x-envoy-fault-abort-request", "418"), ("x-envoy-fault-abort-request-percentage", "100"),
            ("x-envoy-fault-delay-request", "500"), ("x-envoy-fault-delay-request-percentage", "100"),
            ("x-envoy-fault-abort-grpc-request", "5")]
    for _ in range(20):
        r, dt = timed_get(s.port, headers=hdrs)
        assert r.status == 200 and dt < 0.4, (r, dt)
    st = s.stats()
    assert st["fault.aborts_injected"] == 0 and st["fault.delays_injected"] == 0


def test_header_abort_capped_at_configured_percentage(fault_proxy):
    s = fault_proxy([fault_filter(abort={"header_abort": {}, "percentage": pct(50)})])
    # no header: no abort even at 50%
    for _ in range(20):
        assert helpers.get(s.port).status == 200
    # the percentage header asks for 100%: still capped at the configured 50%
    n, hits = 400, 0
    with RawConn(s.port) as c:
        for _ in range(n):
            r = c.request("GET", "/", headers=[("x-envoy-fault-abort-request", "418"),
                                               ("x-envoy-fault-abort-request-percentage", "100")])
            assert r.status in (200, 418), r
            hits += r.status == 418
    ok, why = within_3_sigma(hits, n, 0.5)
    print("header abort capped at 50%%: %s" % why)
    assert ok, why
    # ... and it may lower it: 0 -> never
    with RawConn(s.port) as c:
        for _ in range(100):
            r = c.request("GET", "/", headers=[("x-envoy-fault-abort-request", "418"),
                                               ("x-envoy-fault-abort-request-percentage", "0")])
            assert r.status == 200, r
    # out-of-range statuses are ignored
    for _ in range(30):
        r = helpers.get(s.port, headers=[("x-envoy-fault-abort-request", "700")])
        assert r.status == 200


def test_header_delay(fault_proxy):
    s = fault_proxy([fault_filter(delay={"header_delay": {}, "percentage": pct(100)})])
    r, dt = timed_get(s.port)
    assert r.status == 200 and dt < 0.2
    r, dt = timed_get(s.port, headers=[("x-envoy-fault-delay-request", "300")])
    assert r.status == 200 and dt >= 0.3, dt
    r, dt = timed_get(s.port, headers=[("x-envoy-fault-delay-request", "300"),
                                       ("x-envoy-fault-delay-request-percentage", "0")])
    assert r.status == 200 and dt < 0.2
    assert s.stat("fault.delays_injected") == 1


def test_header_grpc_abort(fault_proxy):
    s = fault_proxy([fault_filter(abort={"header_abort": {}, "percentage": pct(100)})])
    r = helpers.get(s.port, headers=[("content-type", "application/grpc"),
                                     ("x-envoy-fault-abort-grpc-request", "8")])
    assert r.status == 200 and r.header("grpc-status") == "8", r
    assert r.header("x-skiff-flags") == "FI"


# ---- targeting ------------------------------------------------------------------------

def test_headers_upstream_cluster_and_downstream_nodes(fault_proxy, upstreams):
    other = upstreams("other")
    s = fault_proxy(
        [fault_filter(abort={"http_status": 503, "percentage": pct(100)}, upstream_cluster="up",
                      headers=[{"name": "x-chaos", "exact_match": "on"}],
                      downstream_nodes=["node-a", "node-b"])],
        routes=[route("/other", "other"), route("/", "up")],
        extra_clusters=[cluster("other", [other.port])])
    ok = [("x-chaos", "on"), ("x-envoy-downstream-service-node", "node-b")]
    assert helpers.get(s.port, headers=ok).status == 503
    assert helpers.get(s.port, headers=ok[:1]).status == 200           # no node header
    assert helpers.get(s.port, headers=[ok[0], ("x-envoy-downstream-service-node", "node-c")]).status == 200
    assert helpers.get(s.port, headers=[("x-chaos", "off"), ok[1]]).status == 200
    assert helpers.get(s.port, "/other", headers=ok).status == 200      # another cluster


# ---- max_active_faults ------------------------------------------------------------------

def test_max_active_faults_enforced(fault_proxy):
    s = fault_proxy([fault_filter(delay={"fixed_delay": "1s", "percentage": pct(100)},
                                  max_active_faults=2)])
    results = []
    lock = threading.Lock()

    def one():
        r, dt = timed_get(s.port)
        with lock:
            results.append((r.status, dt))

    ts = [threading.Thread(target=one) for _ in range(6)]
    for t in ts:
        t.start()
        time.sleep(0.02)
    assert helpers.wait_for(lambda: s.stat("fault.active_faults") == 2, timeout=2)
    for t in ts:
        t.join()
    assert all(st == 200 for st, _ in results)
    slow = [dt for _, dt in results if dt >= 1.0]
    assert len(slow) == 2, results
    st = s.stats()
    assert st["fault.delays_injected"] == 2
    assert st["fault.faults_overflow"] == 4
    assert st["fault.active_faults"] == 0


# ---- gRPC abort ---------------------------------------------------------------------------

H2_OPTS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def test_grpc_abort_gives_configured_status(skiff_factory):
    server, port, svc = serve()
    try:
        lp, ap = free_port(), free_port()
        routes = [route("/test.Echo/Fail", "grpc", timeout="0s"),  # not faulted: see the override
                  route("/", "grpc", timeout="0s")]
        routes[0]["typed_per_filter_config"] = {"envoy.filters.http.fault": {
            "@type": FCFG_TYPE, "disabled": True}}
        cfg = bootstrap(ap, [http_listener("ingress", lp, [vhost("default", ["*"], routes)],
                                           hcm_extra={"codec_type": "AUTO", "http_filters": [
                                               fault_filter(abort={"grpc_status": 14,
                                                                   "percentage": pct(100)}),
                                               ROUTER]})],
                        [cluster("grpc", [port], typed_extension_protocol_options=H2_OPTS)])
        s = skiff_factory(cfg, port=lp, admin_port=ap)
        c = Client("127.0.0.1:%d" % lp)
        try:
            with pytest.raises(grpc.RpcError) as ei:
                c.unary(b"x", timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "fault" in (ei.value.details() or ""), ei.value.details()
            assert svc.metadata == []  # never reached the service
            # the route where the fault is disabled gets the service's own answer
            with pytest.raises(grpc.RpcError) as ei:
                c.fail(b"x", timeout=10)
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            c.close()
        # HTTP/1.1 client with a gRPC content type: trailers-only shape, HTTP 200
        r = helpers.get(lp, "/test.Echo/Unary", headers=[("content-type", "application/grpc")])
        assert r.status == 200 and r.header("grpc-status") == "14", r
        assert s.stat("fault.aborts_injected") == 2
    finally:
        server.stop(0)


# ---- per-route config ------------------------------------------------------------------------

def test_per_route_override_and_disabled(fault_proxy):
    routes = [route("/off", "up"), route("/teapot", "up"), route("/", "up")]
    routes[0]["typed_per_filter_config"] = {"envoy.filters.http.fault": {
        "@type": FCFG_TYPE, "disabled": True}}
    routes[1]["typed_per_filter_config"] = {"envoy.filters.http.fault": {
        "@type": FAULT_TYPE, "abort": {"http_status": 418, "percentage": pct(100)}}}
    # a second, disabled-by-default fault filter enabled by the vhost's FilterConfig
    vextra = {"typed_per_filter_config": {"late": {
        "@type": FCFG_TYPE, "disabled": False,
        "config": {"@type": FAULT_TYPE, "delay": {"fixed_delay": "0.2s", "percentage": pct(100)}}}}}
    s = fault_proxy([fault_filter(abort={"http_status": 503, "percentage": pct(100)}),
                     fault_filter("late", disabled=True,
                                  abort={"http_status": 500, "percentage": pct(100)})],
                    routes=routes, vhost_extra=vextra)
    assert helpers.get(s.port, "/").status == 503
    r, dt = timed_get(s.port, "/off")
    assert r.status == 200 and dt >= 0.2  # first filter off; "late" on with the vhost's delay
    assert helpers.get(s.port, "/teapot").status == 418
    assert s.stat("fault.delays_injected") == 1


def test_istio_style_empty_hcm_fault(fault_proxy):
    routes = [route("/faulty", "up"), route("/", "up")]
    routes[0]["typed_per_filter_config"] = {"envoy.filters.http.fault": {
        "@type": FAULT_TYPE, "abort": {"http_status": 500, "percentage": pct(1000000, "MILLION")}}}
    s = fault_proxy([fault_filter()], routes=routes)
    assert helpers.get(s.port, "/").status == 200
    assert helpers.get(s.port, "/faulty").status == 500


# ---- retries -------------------------------------------------------------------------------

def test_abort_is_not_retried(fault_proxy):
    rt = route("/", "up", retry_policy={"retry_on": "5xx", "num_retries": 3})
    s = fault_proxy([fault_filter(abort={"http_status": 503, "percentage": pct(100)})], routes=[rt])
    r = helpers.get(s.port)
    assert r.status == 503 and r.header("x-skiff-flags") == "FI"
    assert s.upstream.traffic() == []
    st = s.stats()
    assert st.get("cluster.up.upstream_rq_retry", 0) == 0


# ---- response rate limit --------------------------------------------------------------------

def test_response_rate_limit_within_10_percent(fault_proxy):
    s = fault_proxy([fault_filter(response_rate_limit={"fixed_limit": {"limit_kbps": 64},
                                                       "percentage": pct(100)})])
    size = 256 * 1024
    t0 = time.monotonic()
    r = helpers.get(s.port, "/big?size=%d" % size, timeout=30)
    dt = time.monotonic() - t0
    assert r.status == 200 and len(r.body) == size
    assert hashlib.sha256(r.body).hexdigest() == r.header("x-body-sha256")
    rate = size / dt
    print("rate limit 64 KiB/s: %.0f B/s over %.2f s" % (rate, dt))
    assert abs(rate - 64 * 1024) <= 0.10 * 64 * 1024, "%.0f B/s over %.2fs" % (rate, dt)
    assert s.stat("fault.response_rl_injected") == 1
    assert helpers.wait_for(lambda: s.stat("fault.active_faults") == 0, timeout=3)


def test_response_rate_limit_chunked_with_trailers_and_header_control(fault_proxy):
    s = fault_proxy([fault_filter(response_rate_limit={"header_limit": {},
                                                       "percentage": pct(100)})])
    # no header: not limited
    t0 = time.monotonic()
    r = helpers.get(s.port, "/big?size=%d" % (512 * 1024))
    assert r.status == 200 and time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    r = helpers.get(s.port, "/chunked?n=8&size=8192&trailers=1", timeout=30,
                    headers=[("x-envoy-fault-throughput-response", "32"), ("TE", "trailers")])
    dt = time.monotonic() - t0
    assert r.status == 200 and len(r.body) == 8 * 8192, r
    assert dt >= 1.5, dt  # 64 KiB at 32 KiB/s
    assert r.trailers, "trailers must follow the paced body"
    assert s.stat("fault.response_rl_injected") == 1
