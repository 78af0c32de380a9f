"""--validate, SIGHUP reload, SIGTERM drain."""
import re
import signal
import socket
import subprocess
import threading

import pytest

from helpers import (RawConn, bootstrap, cluster, dump, free_port, get, http_listener, route, simple_http,
                     vhost, wait_for)

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

TEMPLATE = """\
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin}}}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address:
        address: 127.0.0.1
        port_value: {listen}
{listener_extra}    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm_type}
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: {route_cluster}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": {router}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: {timeout}
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up}}}}}}}
"""


def render(listener_extra="", hcm_type=HCM, route_cluster="up", timeout="1s", up=9, listen=None, admin=None):
    return TEMPLATE.format(admin=admin or 9, listen=listen or 9, listener_extra=listener_extra, hcm_type=hcm_type,
                           router=ROUTER, route_cluster=route_cluster, timeout=timeout, up=up)


def locate(text, needle, key=None):
    """(line, key column, value column) of the first line containing needle, 1-based."""
    for i, ln in enumerate(text.splitlines(), 1):
        if needle in ln:
            kc = ln.index(key) + 1 if key and key in ln else ln.index(needle) + 1
            return i, kc, ln.index(needle) + 1
    raise AssertionError(needle)


def validate(skiff_bin, path):
    return subprocess.run([skiff_bin, "--validate", "-c", str(path)], capture_output=True, text=True, timeout=20)


ERR_RE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<path>[^:\n]+): (?P<msg>.+)$", re.M)


def errors(out, path):
    return [m.groupdict() for m in ERR_RE.finditer(out) if m.group("file") == str(path)]


def test_validate_good(skiff_bin, tmp_path):
    p = tmp_path / "good.yaml"
    p.write_text(render())
    r = validate(skiff_bin, p)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout


def test_validate_good_generated(skiff_bin, tmp_path):
    p = tmp_path / "good2.yaml"
    p.write_text(dump(simple_http(free_port(), free_port(), [free_port()])))
    r = validate(skiff_bin, p)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("case", ["unknown_field", "bad_duration", "unknown_type", "dangling_cluster"])
def test_validate_bad_single(skiff_bin, tmp_path, case):
    kw, needle, key, field_path, words = {
        "unknown_field": (dict(listener_extra="    bogus_field: 1\n"), "bogus_field", None,
                          "static_resources.listeners[0]", ["unknown", "bogus_field"]),
        "bad_duration": (dict(timeout="5"), "connect_timeout: 5", "connect_timeout",
                         "static_resources.clusters[0].connect_timeout", ["duration"]),
        "unknown_type": (dict(hcm_type="type.googleapis.com/envoy.extensions.filters.network.nope.v3.Nope"),
                         "nope.v3.Nope", '"@type"', "static_resources.listeners[0].filter_chains[0].filters[0]",
                         ["type"]),
        "dangling_cluster": (dict(route_cluster="nosuch"), "cluster: nosuch", "cluster:",
                             "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"
                             ".virtual_hosts[0].routes[0].route.cluster", ["nosuch"]),
    }[case]
    text = render(**kw)
    p = tmp_path / ("bad-%s.yaml" % case)
    p.write_text(text)
    r = validate(skiff_bin, p)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    errs = errors(out, p)
    assert len(errs) == 1, out
    e = errs[0]
    line, kcol, _ = locate(text, needle, key)
    vline, _, _ = locate(text, needle)
    assert int(e["line"]) == line, out
    # the column points into the offending line (at the key or at the value)
    ln = text.splitlines()[line - 1]
    assert 1 <= int(e["col"]) <= len(ln), out
    assert e["path"].startswith(field_path), out
    assert any(w in e["msg"].lower() for w in words), out


def test_validate_bad_reports_every_error(skiff_bin, tmp_path):
    text = render(listener_extra="    bogus_field: 1\n", timeout="5",
                  hcm_type="type.googleapis.com/envoy.extensions.filters.network.nope.v3.Nope")
    p = tmp_path / "bad-multi.yaml"
    p.write_text(text)
    r = validate(skiff_bin, p)
    out = r.stdout + r.stderr
    assert r.returncode == 1
    lines = sorted(int(e["line"]) for e in errors(out, p))
    expect = sorted([locate(text, "bogus_field")[0], locate(text, "connect_timeout: 5")[0],
                     locate(text, "nope.v3.Nope")[0]])
    assert lines == expect, out


def test_validate_unparseable_yaml(skiff_bin, tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("static_resources:\n  listeners: [\n  - oops: {\n")
    r = validate(skiff_bin, p)
    assert r.returncode == 1
    assert errors(r.stdout + r.stderr, p), r.stdout + r.stderr


def test_start_with_bad_config_exits_1(skiff_bin, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(render(timeout="5"))
    r = subprocess.run([skiff_bin, "-c", str(p)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert errors(r.stdout + r.stderr, p)


# ---- SIGHUP ---------------------------------------------------------------------------------------

def two_cluster_cfg(lp, ap, a, b, target):
    return bootstrap(ap, [http_listener("ingress", lp, [vhost("v", ["*"], [route("/", target)])])],
                     [cluster("a", [a.port]), cluster("b", [b.port])])


def test_sighup_good_reload(skiff_factory, upstreams):
    a, b = upstreams("a"), upstreams("b")
    lp, ap = free_port(), free_port()
    s = skiff_factory(two_cluster_cfg(lp, ap, a, b, "a"), port=lp, admin_port=ap)
    ka = RawConn(s.port, timeout=10)
    slow = RawConn(s.port, timeout=15)
    try:
        assert ka.request("GET", "/before").json()["server"] == "a"
        # an in-flight slow request (about 2 s)
        slow.send(b"GET /slow?chunks=4&delay=0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert wait_for(lambda: any(r["path"].startswith("/slow") for r in a.requests()), timeout=5)
        st = s.reload(two_cluster_cfg(lp, ap, a, b, "b"))
        assert st["config_reload_ok"] == 1, s.log()
        assert st["config_reload_rejected"] == 0
        # the same keep-alive socket keeps working and now routes to b
        r = ka.request("GET", "/after")
        assert r.status == 200
        assert r.json()["server"] == "b"
        # a fresh connection too
        assert get(s.port, "/fresh").json()["server"] == "b"
        # the in-flight request completes in full
        sr = slow.read_response()
        assert sr.status == 200
        assert sr.body == b"chunk0\nchunk1\nchunk2\nchunk3\n"
    finally:
        ka.close()
        slow.close()


def test_sighup_bad_reload_keeps_old_config(skiff_factory, upstreams):
    a, b = upstreams("a"), upstreams("b")
    lp, ap = free_port(), free_port()
    s = skiff_factory(two_cluster_cfg(lp, ap, a, b, "a"), port=lp, admin_port=ap)
    with RawConn(s.port, timeout=10) as ka:
        assert ka.request("GET", "/x").json()["server"] == "a"
        bad = dump(two_cluster_cfg(lp, ap, a, b, "b")).replace('connect_timeout: 1s', 'connect_timeout: "5"')
        assert bad != dump(two_cluster_cfg(lp, ap, a, b, "b"))
        st = s.reload(bad)
        assert st["config_reload_rejected"] == 1
        assert st["config_reload_ok"] == 0
        assert ka.request("GET", "/y").json()["server"] == "a"
    assert get(s.port, "/z").json()["server"] == "a"
    # the rejection is logged with file:line:col
    assert wait_for(lambda: re.search(re.escape(str(s.cfg_path)) + r":\d+:\d+:", s.log()), timeout=5), s.log()
    # a later good reload still works
    st = s.reload(two_cluster_cfg(lp, ap, a, b, "b"))
    assert st["config_reload_ok"] == 1
    assert get(s.port, "/w").json()["server"] == "b"


def test_sighup_unparseable_file(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    s = skiff_factory(simple_http(lp, ap, [upstream.port]), port=lp, admin_port=ap)
    st = s.reload("static_resources: [\n")
    assert st["config_reload_rejected"] == 1
    assert get(s.port, "/still").status == 200
    assert s.ready_status() == 200


# ---- SIGTERM / drain ----------------------------------------------------------------------------

def test_sigterm_drains_in_flight_request(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    s = skiff_factory(simple_http(lp, ap, [upstream.port]), port=lp, admin_port=ap, drain="10")
    result = {}

    def slow():
        try:
            result["r"] = get(s.port, "/sleep?s=2", timeout=20)
        except Exception as e:  # noqa: BLE001
            result["e"] = e

    t = threading.Thread(target=slow)
    t.start()
    assert wait_for(lambda: any(r["path"].startswith("/sleep") for r in upstream.requests()), timeout=5)
    s.signal(signal.SIGTERM)
    # /ready turns 503 at once while the request is still running
    assert wait_for(lambda: s.ready_status() == 503, timeout=2)
    assert s.proc.poll() is None
    # new connections are not served any more
    def refused():
        try:
            with socket.create_connection(("127.0.0.1", lp), timeout=1) as c:
                c.sendall(b"GET /new HTTP/1.1\r\nHost: t\r\n\r\n")
                c.settimeout(2)
                d = c.recv(100)
                return d == b"" or b" 503 " in d
        except (ConnectionRefusedError, ConnectionResetError):
            return True
    assert refused()
    t.join(20)
    assert "e" not in result, result
    assert result["r"].status == 200
    assert result["r"].body == b"slept"
    assert s.proc.wait(timeout=15) == 0
    assert not any(r["path"] == "/new" for r in upstream.requests())


def test_sigint_exits_zero(proxy):
    proxy.signal(signal.SIGINT)
    assert proxy.proc.wait(timeout=15) == 0


def test_sigterm_idle_keepalive_connection_closed(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    s = skiff_factory(simple_http(lp, ap, [upstream.port]), port=lp, admin_port=ap, drain="5")
    with RawConn(s.port) as c:
        assert c.request("GET", "/a").status == 200
        s.signal(signal.SIGTERM)
        assert c.is_closed(10)
    assert s.proc.wait(timeout=15) == 0


def test_drain_deadline_forces_exit(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    s = skiff_factory(simple_http(lp, ap, [upstream.port]), port=lp, admin_port=ap, drain="1")
    c = RawConn(s.port, timeout=20)
    try:
        c.send(b"GET /sleep?s=8 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert wait_for(lambda: upstream.requests(), timeout=5)
        s.signal(signal.SIGTERM)
        assert s.proc.wait(timeout=6) == 0
    finally:
        c.close()


def test_sighup_reaches_every_worker(skiff_factory, upstreams):
    a, b = upstreams("a"), upstreams("b")
    lp, ap = free_port(), free_port()
    s = skiff_factory(two_cluster_cfg(lp, ap, a, b, "a"), port=lp, admin_port=ap, args=["--concurrency", 4])
    # idle keep-alive connections spread over the workers
    conns = [RawConn(s.port, timeout=10) for _ in range(12)]
    try:
        for c in conns:
            assert c.request("GET", "/pre").json()["server"] == "a"
        assert s.reload(two_cluster_cfg(lp, ap, a, b, "b"))["config_reload_ok"] == 1
        for c in conns:
            assert c.request("GET", "/post").json()["server"] == "b"
        for i in range(20):
            assert get(s.port, "/fresh/%d" % i).json()["server"] == "b"
    finally:
        for c in conns:
            c.close()


def test_repeated_reloads(skiff_factory, upstreams):
    a, b = upstreams("a"), upstreams("b")
    lp, ap = free_port(), free_port()
    s = skiff_factory(two_cluster_cfg(lp, ap, a, b, "a"), port=lp, admin_port=ap)
    with RawConn(s.port, timeout=10) as c:
        for i in range(10):
            target = "ab"[i % 2]
            s.reload(two_cluster_cfg(lp, ap, a, b, target))
            assert c.request("GET", "/r%d" % i).json()["server"] == target
    assert s.stat("config_reload_ok") == 10


def test_validate_reports_yaml_and_reference_errors_together(skiff_bin, tmp_path):
    # a YAML-level error (unknown field) and a reference error (dangling cluster) in one
    # file: both in one run, not the second only after the first is fixed
    text = render(listener_extra="    bogus_field: 1\n", route_cluster="nosuch")
    p = tmp_path / "bad-two-kinds.yaml"
    p.write_text(text)
    r = validate(skiff_bin, p)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    errs = errors(out, p)
    assert len(errs) == 2, out
    by_line = {int(e["line"]): e for e in errs}
    assert locate(text, "bogus_field")[0] in by_line, out
    e = by_line[locate(text, "cluster: nosuch")[0]]
    assert "nosuch" in e["msg"] and e["path"].endswith("routes[0].route.cluster"), out


def test_validate_no_consequential_errors(skiff_bin, tmp_path):
    # a bad @type leaves the filter empty in the partial config: only the @type error shows
    text = render(hcm_type="type.googleapis.com/envoy.extensions.filters.network.nope.v3.Nope")
    p = tmp_path / "bad-type.yaml"
    p.write_text(text)
    r = validate(skiff_bin, p)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and len(errors(out, p)) == 1, out
