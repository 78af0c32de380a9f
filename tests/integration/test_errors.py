"""Termination causes: status, x-skiff-flags and a body that says why."""
import pytest

from helpers import RawConn, bootstrap, cluster, free_port, get, http_listener, route, vhost


@pytest.fixture
def err_proxy(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    dead = free_port()  # nothing listens here
    routes = [
        route("/uh", "empty"),
        route("/uf", "dead"),
        route("/timeout", "up", timeout="0.5s"),
        route("/", "up"),
    ]
    cfg = bootstrap(ap, [http_listener("l", lp, [vhost("v", ["*"], routes)])], [
        cluster("up", [upstream.port]),
        cluster("empty", []),
        cluster("dead", [dead]),
    ])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    s.upstream = upstream
    return s


def check_local_reply(r, status, flag, words):
    assert r.status == status, r
    assert r.header("x-skiff-flags") == flag, r
    text = r.body.decode(errors="replace").lower()
    assert any(w in text for w in words), text


def test_no_route_nr(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    cfg = bootstrap(ap, [http_listener("l", lp, [vhost("v", ["*"], [route("/only", "up")])])],
                    [cluster("up", [upstream.port])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    check_local_reply(get(s.port, "/elsewhere"), 404, "NR", ["route"])
    assert s.stat("rq_no_route") >= 1


def test_no_healthy_upstream_uh(err_proxy):
    check_local_reply(get(err_proxy.port, "/uh"), 503, "UH", ["healthy"])
    st = err_proxy.stats()
    assert st["rq_no_healthy_upstream"] >= 1
    assert st["downstream_rq_5xx"] >= 1


def test_connect_failure_uf(err_proxy):
    check_local_reply(get(err_proxy.port, "/uf"), 503, "UF", ["connect"])
    assert err_proxy.stat("upstream_cx_connect_fail") >= 1


@pytest.mark.parametrize("path", ["/reset-now", "/close"])
def test_upstream_closed_before_response_uc(err_proxy, path):
    check_local_reply(get(err_proxy.port, path), 502, "UC", ["closed", "reset"])


def test_upstream_reset_mid_response_truncates(err_proxy):
    """Response head already sent: the proxy can only close the downstream
    connection; the client must not see a complete body."""
    with RawConn(err_proxy.port, timeout=5) as c:
        with pytest.raises((EOFError, ConnectionResetError)):
            c.request("GET", "/reset")
    assert err_proxy.stat("upstream_rq_reset") >= 1


def test_route_timeout_ut(err_proxy):
    r = get(err_proxy.port, "/timeout?sleep=3", timeout=10)
    check_local_reply(r, 504, "UT", ["timeout"])
    assert err_proxy.stat("upstream_rq_timeout") >= 1


def test_route_timeout_not_hit(err_proxy):
    assert get(err_proxy.port, "/timeout?sleep=0.05").status == 200


def test_malformed_response_upe(err_proxy):
    check_local_reply(get(err_proxy.port, "/malformed"), 502, "UPE", ["malformed", "invalid", "bad"])


@pytest.mark.parametrize("code", [500, 503, 404])
def test_upstream_status_passed_through(err_proxy, code):
    r = get(err_proxy.port, "/status?code=%d" % code)
    assert r.status == code
    assert r.header("x-skiff-flags") is None
    assert r.body == b"status %d" % code


def test_local_reply_keeps_connection_usable(err_proxy):
    """A local 503 is a complete response: the keep-alive connection goes on."""
    with RawConn(err_proxy.port, timeout=5) as c:
        assert c.request("GET", "/uh").status == 503
        assert c.request("GET", "/ok").status == 200


def test_5xx_counters(err_proxy):
    before = err_proxy.stats()
    get(err_proxy.port, "/uh")
    get(err_proxy.port, "/status?code=500")
    after = err_proxy.stats()
    assert after["downstream_rq_5xx"] - before["downstream_rq_5xx"] == 2
    assert after["upstream_rq_5xx"] - before["upstream_rq_5xx"] >= 1
