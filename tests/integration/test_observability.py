"""Observability (issue 8): Prometheus exposition (checked with promtool), exact
counters and histogram counts, admin endpoints (POST-only ones, /logging,
/drain_listeners, /config_dump, ...), trace-context propagation (W3C + B3),
access logs (text/JSON, filters, response flags, a FIFO nobody reads) and the
/ui dashboard in headless Chromium.

Every skiff and upstream is a real process started by the fixtures in
conftest.py and stopped by PID."""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import helpers
from helpers import admin_get, admin_post, free_port, get, wait_for

TP_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
FILE_AL = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def dead_port():
    """A loopback port with nothing listening (connect: ECONNREFUSED)."""
    return free_port()


def file_log(path, fmt=None, json_fmt=None, flt=None):
    tc = {"@type": FILE_AL, "path": str(path)}
    if json_fmt is not None:
        tc["log_format"] = {"json_format": json_fmt}
    else:
        tc["log_format"] = {"text_format": fmt}
    al = {"name": "envoy.access_loggers.file", "typed_config": tc}
    if flt:
        al["filter"] = flt
    return al


def cmp(op, v):
    return {"comparison": {"op": op, "value": {"default_value": v, "runtime_key": "k"}}}


TEXT_FMT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)% %TRACE_ID% %UPSTREAM_CLUSTER% %DURATION%\n"


@pytest.fixture
def obs(skiff_factory, upstream, tmp_path):
    """skiff with /ok -> upstream, /dead -> a refused port (UF), /slow -> a 0.3 s
    route timeout (UT); anything else is NR. Five access logs."""
    lp, ap = free_port(), free_port()
    logs = {k: tmp_path / ("%s.log" % k) for k in ("all", "json", "errors", "slow", "nr")}
    als = [
        file_log(logs["all"], TEXT_FMT),
        file_log(logs["json"], json_fmt={"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
                                         "path": "%REQ(:PATH)%", "trace": "%TRACE_ID%",
                                         "cluster": "%UPSTREAM_CLUSTER%"}),
        file_log(logs["errors"], TEXT_FMT, flt={"status_code_filter": cmp("GE", 500)}),
        file_log(logs["slow"], TEXT_FMT, flt={"duration_filter": cmp("GE", 250)}),
        file_log(logs["nr"], TEXT_FMT, flt={"response_flag_filter": {"flags": ["NR"]}}),
    ]
    routes = [helpers.route("/ok", "up"), helpers.route("/dead", "dead"),
              helpers.route("/slow", "up", timeout="0.3s")]
    cfg = helpers.simple_http(lp, ap, [upstream.port], routes=routes,
                              hcm_extra={"access_log": als},
                              extra_clusters=[helpers.cluster("dead", [dead_port()])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    s.upstream = upstream
    s.logs = logs
    return s


def mixed_traffic(s, n2=7, n404=3, n_uf=2, n_ut=1):
    for i in range(n2):
        assert get(s.port, "/ok/%d" % i).status == 200
    for i in range(n404):
        r = get(s.port, "/nothing/%d" % i)
        assert r.status == 404 and r.header("x-skiff-flags") == "NR"
    for _ in range(n_uf):
        r = get(s.port, "/dead")
        assert r.status == 503 and r.header("x-skiff-flags") == "UF", r
    for _ in range(n_ut):
        r = get(s.port, "/slow?sleep=2")
        assert r.status == 504 and r.header("x-skiff-flags") == "UT", r
    return n2 + n404 + n_uf + n_ut


def wait_stat(s, name, want, timeout=5):
    ok = wait_for(lambda: s.stats().get(name) == want, timeout=timeout)
    assert ok, "%s: want %s, have %s" % (name, want, s.stats().get(name))


def prom_samples(text):
    """{(name, frozenset(labels.items())): value}"""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', ln)
        assert m, "bad sample line: %r" % ln
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def P(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


# ---- counters, histograms, Prometheus ------------------------------------------------------

def test_counters_and_histograms_exact(obs):
    n = mixed_traffic(obs)
    wait_stat(obs, "downstream_rq_time.count", n)
    st = obs.stats()
    assert st["downstream_rq_total"] == n
    assert st["downstream_rq_2xx"] == 7
    assert st["downstream_rq_4xx"] == 3
    assert st["downstream_rq_5xx"] == 3
    assert st["rq_no_route"] == 3
    # upstream time: only requests that got a response head from an upstream
    assert st["upstream_rq_time.count"] == 7
    assert st["cluster.up.upstream_rq_time.count"] == 7
    assert st.get("cluster.dead.upstream_rq_time.count", 0) == 0
    assert st["downstream_rq_time.p50_us"] <= st["downstream_rq_time.p90_us"] <= st["downstream_rq_time.p99_us"]
    # the UT request took >= 0.3 s: p99 of 13 values is that one
    assert st["downstream_rq_time.p99_us"] >= 250000
    # JSON variant: one object, same numbers
    code, body = admin_get(obs.admin_port, "/stats?format=json")
    assert code == 200
    j = json.loads(body)
    assert j["stats"]["downstream_rq_total"] == n
    assert j["stats"]["cluster.up.upstream_rq_total"] == st["cluster.up.upstream_rq_total"]
    assert j["histograms"]["downstream_rq_time"]["count"] == n
    assert sum(b[2] for b in j["histograms"]["downstream_rq_time"]["buckets"]) == n
    assert j["histograms"]["clusters"]["up"]["upstream_rq_time"]["count"] == 7
    assert j["server"]["state"] == "LIVE"


def test_prometheus_valid_and_exact(obs):
    n = mixed_traffic(obs)
    wait_stat(obs, "downstream_rq_time.count", n)
    code, text = admin_get(obs.admin_port, "/stats/prometheus")
    assert code == 200
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=30)
        assert r.returncode == 0, (r.stdout + r.stderr).decode() + "\n" + text[:3000]
    # every family has HELP and TYPE, each exactly once, before its samples
    helps = re.findall(r"^# HELP (\S+) ", text, re.M)
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert len(helps) == len(set(helps)) and len(types) == len(set(t for t, _ in types))
    assert set(helps) == set(t for t, _ in types)
    for name, typ in types:
        if typ == "counter":
            assert name.endswith("_total"), name
        if typ == "gauge":
            assert not name.endswith("_total"), name
    s = prom_samples(text)
    assert P(s, "skiff_downstream_rq_total") == n
    assert P(s, "skiff_downstream_rq_xx_total", code_class="2xx") == 7
    assert P(s, "skiff_downstream_rq_xx_total", code_class="4xx") == 3
    assert P(s, "skiff_downstream_rq_xx_total", code_class="5xx") == 3
    assert P(s, "skiff_rq_no_route_total") == 3
    assert P(s, "skiff_downstream_cx_active") >= 0
    assert P(s, "skiff_cluster_upstream_rq_xx_total", cluster="up", code_class="2xx") == 7
    assert P(s, "skiff_upstream_cx_connect_fail_total") >= 2
    # histograms: _count == requests, buckets cumulative, +Inf == _count
    assert P(s, "skiff_downstream_rq_time_seconds_count") == n
    assert P(s, "skiff_downstream_rq_time_seconds_bucket", le="+Inf") == n
    assert P(s, "skiff_downstream_rq_time_seconds_bucket", le="0.25") == n - 1  # the UT one
    assert P(s, "skiff_downstream_rq_time_seconds_sum") >= 0.3
    les = [(float(dict(k[1])["le"]), v) for k, v in s.items()
           if k[0] == "skiff_downstream_rq_time_seconds_bucket"]
    les.sort()
    assert all(a[1] <= b[1] for a, b in zip(les, les[1:]))
    assert P(s, "skiff_upstream_rq_time_seconds_count", cluster="up") == 7
    assert P(s, "skiff_upstream_rq_time_seconds_bucket", cluster="up", le="+Inf") == 7
    # process / server
    assert P(s, "skiff_process_resident_memory_bytes") > 1e6
    assert P(s, "skiff_process_open_fds") > 3
    assert P(s, "skiff_process_cpu_seconds_total") >= 0
    assert P(s, "skiff_process_uptime_seconds") >= 0
    assert abs(P(s, "skiff_process_start_time_seconds") - time.time()) < 600
    assert P(s, "skiff_config_version") == 1
    assert P(s, "skiff_workers") == 2
    assert P(s, "skiff_server_live") == 1


def test_prometheus_label_escaping_and_many_clusters(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    extra = [helpers.cluster('we"ird\\name', [upstream.port])] + \
            [helpers.cluster("c%03d" % i, [upstream.port]) for i in range(200)]
    routes = [helpers.route("/w", 'we"ird\\name'), helpers.route("/", "up")]
    s = skiff_factory(helpers.simple_http(lp, ap, [upstream.port], routes=routes, extra_clusters=extra),
                      port=lp, admin_port=ap)
    assert get(lp, "/w").status == 200
    wait_for(lambda: s.stats().get("downstream_rq_time.count") == 1)
    t0 = time.monotonic()
    code, text = admin_get(ap, "/stats/prometheus")
    took = time.monotonic() - t0
    assert code == 200
    assert 'cluster="we\\"ird\\\\name"' in text
    assert text.count("skiff_cluster_upstream_rq_total{") == 202
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=30)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()
    assert took < 5, took


# ---- admin endpoints -------------------------------------------------------------------------

def raw_admin(port, method, path):
    with helpers.RawConn(port) as c:
        return c.request(method, path)


def test_admin_endpoints(obs):
    ap = obs.admin_port
    assert admin_get(ap, "/healthz") == (200, "OK\n")
    code, body = admin_get(ap, "/listeners")
    assert code == 200 and body.strip() == "ingress::127.0.0.1:%d" % obs.port
    code, body = admin_get(ap, "/listeners?format=json")
    assert json.loads(body)["listeners"][0]["address"] == "127.0.0.1:%d" % obs.port
    code, body = admin_get(ap, "/config_dump")
    assert code == 200
    cd = json.loads(body)
    assert cd["version"] == 1
    assert [l["name"] for l in cd["listeners"]] == ["ingress"]
    hcm = cd["listeners"][0]["filter_chains"][0]["http_connection_manager"]
    assert hcm["access_logs"] == 5
    vh = hcm["route_config"]["virtual_hosts"][0]
    assert [r["cluster"] for r in vh["routes"]] == ["up", "dead", "up"]
    assert vh["routes"][2]["timeout_ms"] == 300
    cl = {c["name"]: c for c in cd["clusters"]}
    assert cl["up"]["endpoints"][0]["port"] == obs.upstream.port
    assert cl["up"]["lb_policy"] == "ROUND_ROBIN"
    code, body = admin_get(ap, "/memory")
    m = json.loads(body)
    assert m["resident_bytes"] > 1e6 and "uordblks" in m["mallinfo2"]
    code, body = admin_get(ap, "/clusters?format=json")
    cj = {c["name"]: c for c in json.loads(body)["clusters"]}
    assert cj["up"]["hosts"][0]["address"] == "127.0.0.1:%d" % obs.upstream.port
    assert cj["up"]["circuit_breakers"]["remaining_rq"] == 1024
    code, body = admin_get(ap, "/clusters")
    assert "up::default_priority::max_requests::1024" in body
    code, body = admin_get(ap, "/server_info")
    assert json.loads(body)["state"] == "LIVE"
    assert admin_get(ap, "/nope")[0] == 404
    code, body = admin_get(ap, "/")
    assert "/drain_listeners" in body and "/ui" in body
    # HEAD: headers only
    r = raw_admin(ap, "HEAD", "/healthz")
    assert r.status == 200 and r.body == b""
    # mutating endpoints are POST-only; read-only ones refuse POST
    for path in ("/quitquitquit", "/drain_listeners", "/healthcheck/fail", "/healthcheck/ok",
                 "/logging?level=debug"):
        assert admin_get(ap, path)[0] == 405, path
    for path in ("/stats", "/stats/prometheus", "/clusters", "/config_dump", "/listeners", "/memory",
                 "/ui", "/healthz"):
        assert admin_post(ap, path)[0] == 405, path
    # nothing above changed state
    assert obs.ready_status() == 200
    assert admin_get(ap, "/logging")[1] == "level: info\n"
    assert get(obs.port, "/ok").status == 200


def test_healthcheck_fail_ok(obs):
    assert admin_post(obs.admin_port, "/healthcheck/fail")[0] == 200
    assert obs.ready_status() == 503
    assert admin_get(obs.admin_port, "/healthz")[0] == 200  # liveness is not readiness
    assert admin_post(obs.admin_port, "/healthcheck/ok")[0] == 200
    assert obs.ready_status() == 200


def test_logging_level_runtime(obs):
    ap = obs.admin_port
    assert admin_get(ap, "/logging") == (200, "level: info\n")
    assert get(obs.port, "/ok").status == 200
    time.sleep(0.2)
    assert " debug " not in obs.log()
    assert admin_post(ap, "/logging?level=debug") == (200, "level: debug\n")
    assert admin_get(ap, "/logging") == (200, "level: debug\n")
    assert get(obs.port, "/ok").status == 200
    assert wait_for(lambda: re.search(r" debug .*trace [0-9a-f]{32}", obs.log()), timeout=5), obs.log()
    assert admin_post(ap, "/logging?level=bogus")[0] == 400
    assert admin_post(ap, "/logging?level=warn") == (200, "level: warn\n")
    n = obs.log().count(" debug ")
    assert get(obs.port, "/ok").status == 200
    time.sleep(0.3)
    assert obs.log().count(" debug ") == n


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def test_drain_listeners(obs):
    keep = helpers.RawConn(obs.port)  # an open keep-alive connection
    assert keep.request("GET", "/ok").status == 200
    assert obs.ready_status() == 200
    assert admin_post(obs.admin_port, "/drain_listeners") == (200, "OK\n")
    assert wait_for(lambda: refused(obs.port), timeout=5), "listener still accepting"
    assert obs.ready_status() == 503
    # still running, admin answers, a second drain is harmless
    assert obs.proc.poll() is None
    assert admin_get(obs.admin_port, "/healthz")[0] == 200
    assert admin_get(obs.admin_port, "/server_info")[1].count('"DRAINING"') == 1
    assert admin_post(obs.admin_port, "/drain_listeners")[0] == 200
    assert json.loads(admin_get(obs.admin_port, "/listeners?format=json")[1])["listeners"][0]["draining"]
    time.sleep(0.5)
    assert obs.proc.poll() is None
    keep.close()
    # SIGTERM at teardown still exits cleanly (checked by the fixture)


# ---- tracing ----------------------------------------------------------------------------------

def upstream_headers(s, path):
    recs = [r for r in s.upstream.requests() if r["path"] == path]
    assert recs, "upstream did not see %s" % path
    return {k.lower(): v for k, v in recs[-1]["headers"]}


def test_trace_valid_traceparent_propagated(obs):
    tid, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = get(obs.port, "/ok/t1", headers=[("traceparent", "00-%s-%s-01" % (tid, parent)),
                                          ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")])
    assert r.status == 200
    h = upstream_headers(obs, "/ok/t1")
    m = TP_RE.match(h["traceparent"])
    assert m, h
    assert m.group(1) == tid and m.group(2) != parent and m.group(2) != "0" * 16
    assert m.group(3) == "01"
    assert h["tracestate"] == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    # unsampled stays unsampled
    get(obs.port, "/ok/t2", headers=[("traceparent", "00-%s-%s-00" % (tid, parent))])
    assert TP_RE.match(upstream_headers(obs, "/ok/t2")["traceparent"]).group(3) == "00"


def test_trace_invalid_traceparent_replaced(obs):
    bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"
    get(obs.port, "/ok/t3", headers=[("traceparent", bad), ("tracestate", "a=b")])
    h = upstream_headers(obs, "/ok/t3")
    m = TP_RE.match(h["traceparent"])
    assert m and m.group(1) != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "tracestate" not in h
    get(obs.port, "/ok/t4", headers=[("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01")])
    assert TP_RE.match(upstream_headers(obs, "/ok/t4")["traceparent"]).group(1) != "0" * 32


def test_trace_started_when_absent(obs):
    get(obs.port, "/ok/t5")
    get(obs.port, "/ok/t6")
    a = TP_RE.match(upstream_headers(obs, "/ok/t5")["traceparent"])
    b = TP_RE.match(upstream_headers(obs, "/ok/t6")["traceparent"])
    assert a and b and a.group(1) != b.group(1) and a.group(3) == "01"


def test_trace_b3_propagated(obs):
    tid, span = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
    get(obs.port, "/ok/b3m", headers=[("X-B3-TraceId", tid), ("X-B3-SpanId", span),
                                      ("X-B3-Sampled", "1")])
    h = upstream_headers(obs, "/ok/b3m")
    assert h["x-b3-traceid"] == tid
    assert re.match(r"^[0-9a-f]{16}$", h["x-b3-spanid"]) and h["x-b3-spanid"] != span
    assert h["x-b3-parentspanid"] == span
    assert h["x-b3-sampled"] == "1"
    # the W3C context joins the same trace with the same (our) span
    m = TP_RE.match(h["traceparent"])
    assert m.group(1) == tid and m.group(2) == h["x-b3-spanid"] and m.group(3) == "01"
    # single header, 64-bit trace id
    get(obs.port, "/ok/b3s", headers=[("b3", "48485a3953bb6124-%s-1" % span)])
    h = upstream_headers(obs, "/ok/b3s")
    parts = h["b3"].split("-")
    assert parts[0] == "48485a3953bb6124" and parts[1] != span and parts[2] == "1" and parts[3] == span
    assert TP_RE.match(h["traceparent"]).group(1) == "0" * 16 + "48485a3953bb6124"


def test_trace_id_in_access_log(obs):
    tid = "0af7651916cd43dd8448eb211c80319c"
    get(obs.port, "/ok/tl", headers=[("traceparent", "00-%s-b7ad6b7169203331-01" % tid)])
    line = wait_for(lambda: [ln for ln in obs.logs["all"].read_text().splitlines() if " /ok/tl " in ln]
                    if obs.logs["all"].exists() else None, timeout=5)
    assert line and line[0].split()[3] == tid


# ---- access logs --------------------------------------------------------------------------------

def read_lines(p):
    return p.read_text().splitlines() if p.exists() else []


def test_access_logs_formats_filters_flags(obs):
    n = mixed_traffic(obs)
    assert wait_for(lambda: len(read_lines(obs.logs["all"])) == n, timeout=5), read_lines(obs.logs["all"])
    wait_for(lambda: len(read_lines(obs.logs["json"])) == n, timeout=5)
    lines = [ln.split() for ln in read_lines(obs.logs["all"])]
    by_flag = {}
    for f in lines:
        by_flag.setdefault(f[1], []).append(f)
    assert sorted(by_flag) == ["-", "NR", "UF", "UT"]
    assert len(by_flag["-"]) == 7 and all(f[0] == "200" and f[4] == "up" for f in by_flag["-"])
    assert len(by_flag["NR"]) == 3 and all(f[0] == "404" for f in by_flag["NR"])
    assert len(by_flag["UF"]) == 2 and all(f[0] == "503" and f[4] == "dead" for f in by_flag["UF"])
    assert len(by_flag["UT"]) == 1 and by_flag["UT"][0][0] == "504" and int(by_flag["UT"][0][5]) >= 250
    assert all(re.match(r"^[0-9a-f]{32}$", f[3]) for f in lines)  # every request is traced
    js = [json.loads(ln) for ln in read_lines(obs.logs["json"])]
    assert len(js) == n
    assert sorted(j["flags"] for j in js) == sorted(f[1] for f in lines)
    assert {j["path"] for j in js if j["flags"] == "UF"} == {"/dead"}
    assert all(isinstance(j["code"], int) or j["code"].isdigit() for j in js)
    # filters
    errs = [ln.split() for ln in read_lines(obs.logs["errors"])]
    assert sorted(f[0] for f in errs) == ["503", "503", "504"]
    slow = [ln.split() for ln in read_lines(obs.logs["slow"])]
    assert [f[1] for f in slow] == ["UT"]
    nr = [ln.split() for ln in read_lines(obs.logs["nr"])]
    assert len(nr) == 3 and all(f[1] == "NR" for f in nr)
    st = obs.stats()
    assert st["access_log_written"] == n * 2 + 3 + 1 + 3
    assert st["access_log_dropped"] == 0


def test_access_log_fifo_nobody_reads(skiff_factory, upstream, tmp_path):
    fifo = tmp_path / "al.fifo"
    os.mkfifo(fifo)
    # hold the read end open without ever reading: writes fill the pipe, then skiff's buffer
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        lp, ap = free_port(), free_port()
        pad = "x" * 20000
        cfg = helpers.simple_http(lp, ap, [upstream.port],
                                  hcm_extra={"access_log": [file_log(fifo, "%RESPONSE_CODE% " + pad + "\n")]})
        s = skiff_factory(cfg, args=["--concurrency", "1"], port=lp, admin_port=ap)
        t0 = time.monotonic()
        with helpers.RawConn(lp) as c:
            for i in range(200):
                assert c.request("GET", "/f%d" % i).status == 200
        took = time.monotonic() - t0
        assert took < 20, took
        st = s.stats()
        assert st["access_log_dropped"] > 50, st
        assert st["access_log_written"] > 0
        assert st["access_log_written"] + st["access_log_dropped"] == 200
        # still serving
        assert get(lp, "/after").status == 200
    finally:
        os.close(rfd)


# ---- dashboard ----------------------------------------------------------------------------------

def test_ui_self_contained(obs):
    code, html = admin_get(obs.admin_port, "/ui")
    assert code == 200 and html.startswith("<!DOCTYPE html>")
    # no external fetches: no absolute URLs in src/href/fetch, no imports
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"""fetch\(\s*["'](https?:)?//""", html)
    assert "@import" not in html
    assert 'fetch("/stats?format=json"' in html and 'fetch("/clusters?format=json"' in html


def chromium_bin():
    for n in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(n)
        if p:
            return p
    return None


def chromium(args, url, timeout=90):
    profile = tempfile.mkdtemp(prefix="skiff-chromium-")
    try:
        cmd = [chromium_bin(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--user-data-dir=" + profile] + args + [url]
        return subprocess.run(cmd, capture_output=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dom_text(dom, ident):
    m = re.search(r'id="%s"[^>]*>([^<]*)<' % re.escape(ident), dom)
    return m.group(1) if m else None


def test_ui_in_chromium(obs, tmp_path):
    if not chromium_bin():
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    n = mixed_traffic(obs, n2=5, n404=1, n_uf=1, n_ut=0)
    wait_stat(obs, "downstream_rq_time.count", n)
    url = "http://127.0.0.1:%d/ui" % obs.admin_port
    png = tmp_path / "ui.png"
    r = chromium(["--screenshot=%s" % png, "--window-size=1200,800", "--virtual-time-budget=3000"], url)
    assert png.exists() and png.stat().st_size > 10000, r.stderr.decode()[-2000:]
    r = chromium(["--dump-dom", "--virtual-time-budget=4000"], url)
    dom = r.stdout.decode()
    assert dom_text(dom, "rq-total") == str(n), dom[:3000]
    assert int(dom_text(dom, "polls")) >= 2  # it kept polling
    assert dom_text(dom, "state") == "LIVE"
    assert dom_text(dom, "rq-5xx") == "1"
    assert "<b>up</b>" in dom and "<b>dead</b>" in dom  # cluster table from /clusters?format=json
    # more traffic: a new page load shows the new numbers
    for _ in range(4):
        get(obs.port, "/ok")
    wait_stat(obs, "downstream_rq_total", n + 4)
    dom2 = chromium(["--dump-dom", "--virtual-time-budget=3000"], url).stdout.decode()
    assert dom_text(dom2, "rq-total") == str(n + 4)


# ---- HCM tracing sampling (client_sampling / random_sampling / overall_sampling) -------------

def _traced(s, upstream, n, prefix, headers=()):
    for i in range(n):
        assert get(s.port, "/%s/%d" % (prefix, i), headers=list(headers)).status == 200
    recs = [r for r in upstream.requests() if r["path"].startswith("/%s/" % prefix)]
    assert len(recs) == n
    sampled = 0
    for r in recs:
        h = {k.lower(): v for k, v in r["headers"]}
        assert h.get("x-request-id")  # request ids never depend on sampling
        m = TP_RE.match(h.get("traceparent", ""))
        if m:
            assert m.group(3) == "01"  # unsampled new traces are not started at all
            sampled += 1
    return sampled


def tracing_proxy(make_proxy, upstream, **pct):
    tr = {k: {"value": v} for k, v in pct.items()}
    return make_proxy([upstream.port], hcm_extra={"tracing": tr})


def test_tracing_random_sampling_measured(make_proxy, upstream):
    s = tracing_proxy(make_proxy, upstream, random_sampling=50)
    n = 400
    got = _traced(s, upstream, n, "half")
    # binomial(400, 0.5): sigma 10, accept 3 sigma
    assert 170 <= got <= 230, got


def test_tracing_zero_and_full(make_proxy, upstream):
    s = tracing_proxy(make_proxy, upstream, random_sampling=0)
    assert _traced(s, upstream, 50, "none") == 0
    # an incoming sampling decision is always honoured
    tid, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    get(s.port, "/keep", headers=[("traceparent", "00-%s-%s-01" % (tid, parent))])
    h = [r for r in upstream.requests() if r["path"] == "/keep"][0]["headers"]
    m = TP_RE.match(dict((k.lower(), v) for k, v in h)["traceparent"])
    assert m and m.group(1) == tid and m.group(3) == "01"


def test_tracing_client_and_overall_sampling(make_proxy, upstream):
    s = tracing_proxy(make_proxy, upstream, random_sampling=0, client_sampling=100)
    assert _traced(s, upstream, 30, "plain") == 0
    assert _traced(s, upstream, 30, "client", headers=[("x-client-trace-id", "abc")]) == 30
    s2 = tracing_proxy(make_proxy, upstream, random_sampling=100, overall_sampling=0)
    assert _traced(s2, upstream, 30, "capped") == 0


def test_tracing_bad_percentage_rejected(skiff_bin, tmp_path):
    lp, ap = free_port(), free_port()
    cfg = helpers.simple_http(lp, ap, [1], hcm_extra={"tracing": {"random_sampling": {"value": 150}}})
    p = tmp_path / "bad.yaml"
    p.write_text(helpers.dump(cfg))
    out = subprocess.run([skiff_bin, "--validate", "-c", str(p)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 1
    assert "tracing.random_sampling" in out.stdout + out.stderr, out.stdout + out.stderr


# ---- scoped stats: listener.<name>.*, http.<stat_prefix>.*, vhost.<name>.* ---------------------

def test_scoped_stats_per_listener_hcm_and_vhost(skiff_factory, upstream):
    lp1, lp2, ap = free_port(), free_port(), free_port()
    v_api = helpers.vhost("api", ["api.test"], [helpers.route("/", "up")])
    v_web = helpers.vhost("web", ["*"], [helpers.route("/", "up", path="/only"),])
    l1 = helpers.http_listener("front", lp1, [v_api, v_web])
    l1["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "front_http"
    l2 = helpers.http_listener("back", lp2, [helpers.vhost("back_v", ["*"], [helpers.route("/", "up")])])
    cfg = helpers.bootstrap(ap, [l1, l2], [helpers.cluster("up", [upstream.port])])
    s = skiff_factory(cfg, port=lp1, admin_port=ap)
    for _ in range(5):
        assert get(lp1, "/a", host="api.test").status == 200
    for _ in range(3):
        assert get(lp1, "/only").status == 200
    for _ in range(2):
        assert get(lp1, "/nope").status == 404  # vhost web, no route
    for _ in range(4):
        assert get(lp2, "/b").status == 200
    want = {
        "listener.front.downstream_cx_total": 10, "listener.back.downstream_cx_total": 4,
        "http.front_http.downstream_rq_total": 10, "http.front_http.downstream_rq_2xx": 8,
        "http.front_http.downstream_rq_4xx": 2, "http.back.downstream_rq_2xx": 4,
        "vhost.api.downstream_rq_2xx": 5, "vhost.web.downstream_rq_2xx": 3,
        "vhost.web.downstream_rq_4xx": 2, "vhost.back_v.downstream_rq_total": 4,
    }
    assert wait_for(lambda: all(s.stat(k) == v for k, v in want.items()), timeout=5), \
        str({k: s.stat(k) for k in want})
    assert wait_for(lambda: s.stat("listener.front.downstream_cx_active") == 0)
    st, text = admin_get(ap, "/stats/prometheus")
    assert st == 200
    assert 'skiff_listener_downstream_cx_total{listener="front"} 10' in text
    assert 'skiff_http_downstream_rq_xx_total{stat_prefix="front_http",code_class="2xx"} 8' in text
    assert 'skiff_vhost_downstream_rq_xx_total{vhost="web",code_class="4xx"} 2' in text
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 or "error" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    st, js = admin_get(ap, "/stats?format=json")
    assert json.loads(js)["stats"]["vhost.api.downstream_rq_2xx"] == 5
    # a reload keeps the counters (scopes live by name, not by snapshot)
    s.reload(cfg)
    assert get(lp1, "/a", host="api.test").status == 200
    assert wait_for(lambda: s.stat("vhost.api.downstream_rq_2xx") == 6)


def test_access_log_json_escaping(skiff_factory, upstream, tmp_path):
    """Header-derived values with quotes, backslashes and control bytes at every
    offset (the escaper skips clean 8-byte words) come back exactly from the JSON."""
    log = tmp_path / "esc.log"
    lp, ap = free_port(), free_port()
    al = file_log(log, json_fmt={"ua": "%REQ(USER-AGENT)%", "path": "%REQ(:PATH)%",
                                 "code": "%RESPONSE_CODE%", "m": "%REQ(:METHOD)%"})
    cfg = helpers.simple_http(lp, ap, [upstream.port], hcm_extra={"access_log": [al]})
    skiff_factory(cfg, port=lp, admin_port=ap)
    sent = []
    for off in range(0, 20):
        for bad in ('"', "\\", "\t", "é"):  # DEL is refused by the parser (400)
            ua = "x" + "a" * off + bad + "b" * (19 - off) + bad + "z"  # no edge OWS to trim
            sent.append(ua)
            assert get(lp, "/e?x=%d" % off, headers=[("User-Agent", ua)]).status == 200
    assert wait_for(lambda: len(read_lines(log)) == len(sent), timeout=5)
    got = [json.loads(ln) for ln in log.read_text(encoding="utf-8").splitlines()]
    assert sorted(g["ua"] for g in got) == sorted(sent)  # workers flush separately
    assert all(g["code"] == 200 and g["m"] == "GET" for g in got)


def test_unrouted_cluster_lists_configured_hosts(skiff_factory, upstream):
    """Issue 7: host states are created when a cluster's hosts are first needed,
    yet /clusters (text, JSON) and skiff_cluster_hosts still list every
    configured host of a cluster no request went to, with default state, in the
    same format as a used cluster's hosts."""
    lp, ap = free_port(), free_port()
    other = dead_port()
    idle = helpers.cluster("idle", [upstream.port, other, upstream.port])  # one duplicate
    s = skiff_factory(helpers.simple_http(lp, ap, [upstream.port], extra_clusters=[idle]),
                      port=lp, admin_port=ap)
    assert get(lp, "/").status == 200
    code, body = admin_get(ap, "/clusters?format=json")
    cj = {c["name"]: c for c in json.loads(body)["clusters"]}
    hosts = cj["idle"]["hosts"]
    # newest first, each address once (as host states list them)
    assert [h["address"] for h in hosts] == ["127.0.0.1:%d" % other, "127.0.0.1:%d" % upstream.port]
    used = cj["up"]["hosts"][0]
    assert used["rq_total"] >= 1
    for h in hosts:
        assert set(h) == set(used)
        assert h["health_flags"] == "healthy" and h["active_hc"] == "unknown"
        assert not h["ejected"] and h["ejections"] == 0 and h["rq_total"] == 0
        assert h["success_rate"] == 100.0
    code, text = admin_get(ap, "/clusters")
    a = "idle::127.0.0.1:%d::" % other
    for line in ("health_flags::healthy", "active_hc::unknown", "ejections::0", "rq_active::0",
                 "rq_total::0", "rq_error::0", "success_rate::100.0", "ewma_latency_us::0"):
        assert a + line in text, line
    assert text.count("idle::127.0.0.1:%d::health_flags::" % upstream.port) == 1
    up_keys = {l.split("::")[2] for l in text.splitlines() if l.startswith("up::127.0.0.1:")}
    idle_keys = {l.split("::")[2] for l in text.splitlines() if l.startswith(a)}
    assert up_keys == idle_keys
    code, prom = admin_get(ap, "/stats/prometheus")
    assert 'skiff_cluster_hosts{cluster="idle"} 2\n' in prom
    assert 'skiff_cluster_hosts_healthy{cluster="idle"} 2\n' in prom
    assert 'skiff_cluster_hosts{cluster="up"} 1\n' in prom
