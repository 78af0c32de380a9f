"""Start-up modes, examples, admin endpoints, concurrency, a bounded burst."""
import socket
import threading
import time

import pytest
import yaml

from conftest import REPO
from helpers import RawConn, admin_get, admin_post, curl, free_port, get, wait_for


def _retarget_example(path, upstream_port):
    """Load an example bootstrap and move every port to free loopback ports:
    listeners -> fresh ports, clusters -> the test upstream. Returns
    (cfg, [listener ports], admin port)."""
    cfg = yaml.safe_load(path.read_text())
    ap = free_port()
    cfg.setdefault("admin", {})["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": ap}}
    lports = []
    for l in cfg["static_resources"]["listeners"]:
        p = free_port()
        l["address"]["socket_address"].update({"address": "127.0.0.1", "port_value": p})
        lports.append(p)
    for c in cfg["static_resources"]["clusters"]:
        c["type"] = "STATIC"
        for e in c["load_assignment"]["endpoints"]:
            for lb in e["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"].update(
                    {"address": "127.0.0.1", "port_value": upstream_port})
    return cfg, lports, ap


def _example(name):
    p = REPO / "examples" / name
    if not p.exists():
        pytest.skip("examples/%s has not landed yet" % name)
    return p


def test_quickstart_example_validates(skiff_bin):
    import subprocess
    p = _example("quickstart.yaml")
    r = subprocess.run([skiff_bin, "--validate", "-c", str(p)], capture_output=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr


def test_quickstart_example_serves(skiff_factory, upstream):
    p = _example("quickstart.yaml")
    cfg, lports, ap = _retarget_example(p, upstream.port)
    s = skiff_factory(cfg, port=lports[0], admin_port=ap)
    r = get(s.port, "/hello")
    assert r.status == 200, r
    assert r.json()["path"] == "/hello"


def test_tcp_proxy_example_serves(skiff_factory, upstreams):
    p = _example("tcp-proxy.yaml")
    echo = upstreams("echo", mode="tcpecho")
    cfg, lports, ap = _retarget_example(p, echo.port)
    s = skiff_factory(cfg, port=lports[0], admin_port=ap)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"


def test_quick_mode(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    s = skiff_factory(None, args=["--listen", "127.0.0.1:%d" % lp, "--upstream", "127.0.0.1:%d" % upstream.port,
                                  "--admin", "127.0.0.1:%d" % ap], port=lp, admin_port=ap)
    r = curl("-i", "%s/quick?x=1" % s.url)
    assert r.returncode == 0, r.stderr
    assert b"200" in r.stdout.split(b"\r\n")[0]
    r = get(s.port, "/quick?x=1")
    assert r.status == 200
    assert r.json()["path"] == "/quick?x=1"


def test_usage_errors(skiff_bin):
    import subprocess
    r = subprocess.run([skiff_bin], capture_output=True, timeout=10)
    assert r.returncode != 0
    r = subprocess.run([skiff_bin, "--listen", "127.0.0.1:1"], capture_output=True, timeout=10)
    assert r.returncode != 0


def test_admin_endpoints(proxy):
    st, body = admin_get(proxy.admin_port, "/ready")
    assert st == 200 and "LIVE" in body
    before = proxy.stats()
    for k in ("downstream_cx_total", "downstream_rq_2xx", "downstream_rq_4xx", "downstream_rq_5xx",
              "upstream_rq_total", "upstream_cx_total", "upstream_cx_reused", "config_reload_ok",
              "config_reload_rejected", "downstream_rq_rejected_smuggling"):
        assert k in before, k
    assert get(proxy.port, "/a").status == 200
    after = wait_for(lambda: (lambda s: s if s["downstream_rq_2xx"] > before["downstream_rq_2xx"] else None)(proxy.stats()))
    assert after, proxy.stats()
    assert after["downstream_cx_total"] >= before["downstream_cx_total"] + 1
    assert after["upstream_rq_total"] >= before["upstream_rq_total"] + 1
    assert after["upstream_cx_total"] >= before["upstream_cx_total"] + 1
    st, prom = admin_get(proxy.admin_port, "/stats/prometheus")
    assert st == 200
    assert "skiff_downstream_rq_xx_total{code_class=\"2xx\"}" in prom  # per-class counters are one labelled family
    assert any(ln and not ln.startswith("#") and ln.split()[-1].isdigit() for ln in prom.splitlines())


def test_admin_quitquitquit(proxy):
    st, _ = admin_post(proxy.admin_port, "/quitquitquit")
    assert st == 200
    assert proxy.proc.wait(timeout=15) == 0


@pytest.mark.parametrize("n", [1, 4])
def test_concurrency(make_proxy, upstream, n):
    s = make_proxy([upstream.port], args=["--concurrency", n])
    conns = [RawConn(s.port) for _ in range(8)]
    try:
        for i in range(3):
            for c in conns:
                assert c.request("GET", "/c%d" % i).status == 200
    finally:
        for c in conns:
            c.close()


def test_burst_2000_requests_20_keepalive_connections(make_proxy, upstream):
    s = make_proxy([upstream.port], args=["--concurrency", 2])
    per_conn = 100
    results = [[] for _ in range(20)]
    errors = []
    deadline = time.monotonic() + 90

    def worker(i):
        try:
            with RawConn(s.port, timeout=20) as c:
                for j in range(per_conn):
                    if time.monotonic() > deadline:
                        errors.append("deadline")
                        return
                    results[i].append(c.request("GET", "/b?i=%d&j=%d" % (i, j)).status)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors[:5]
    flat = [x for r in results for x in r]
    assert len(flat) == 2000
    assert set(flat) == {200}
    st = s.stats()
    assert st["downstream_rq_2xx"] >= 2000
    assert st["downstream_cx_total"] >= 20
