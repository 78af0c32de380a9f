"""Runtime chaos API (/chaos/faults on the admin listener) and its CLI
(`skiff chaos ...`): rules added, listed and removed at run time, expiring at
their TTL, acting on requests through the fault filter's machinery (the
configs here have NO fault filter), counted per kind and per rule, flagged
in the access log; upstream-leg rules fail single attempts so the router's
retries take over. Statistical checks use 3 sigma bounds."""
import json
import math
import os
import subprocess
import threading
import time
import urllib.request

import pytest

import helpers
from helpers import RawConn, admin_get, bootstrap, cluster, free_port, get, http_listener, route, vhost, wait_for

FILE_AL = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def named(r, name):
    r["name"] = name
    return r


def chaos_cfg(lp, ap, upstream_port, log_path, retry=None):
    api = named(route("/api", "up"), "api")
    two = named(route("/two", "up2"), "two")
    rest = named(route("/", "up"), "rest")
    if retry:
        for r in (api, rest):
            r["route"]["retry_policy"] = retry
    als = [{"name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_AL, "path": str(log_path),
                             "log_format": {"text_format": "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"}}}]
    vh = vhost("default", ["*"], [api, two, rest])
    return bootstrap(ap, [http_listener("ingress", lp, [vh], hcm_extra={"access_log": als})],
                     [cluster("up", [upstream_port]), cluster("up2", [upstream_port])])


@pytest.fixture
def chaos(skiff_factory, upstream, tmp_path):
    def make(retry=None, args=()):
        lp, ap = free_port(), free_port()
        log = tmp_path / ("access-%d.log" % lp)
        s = skiff_factory(chaos_cfg(lp, ap, upstream.port, log, retry), args=args, port=lp, admin_port=ap)
        s.upstream = upstream
        s.access_log = log
        return s
    return make


def api(s, method, path, body=None, raw=None, headers=None):
    """(status, parsed JSON or text) of an admin request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (s.admin_port, path), data=data, method=method,
                                 headers=headers or ({"Content-Type": "application/json"} if data else {}))
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            st, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        st, text = e.code, e.read().decode()
    try:
        return st, json.loads(text)
    except ValueError:
        return st, text


def add(s, **rule):
    rule.setdefault("ttl_s", 60)
    st, doc = api(s, "POST", "/chaos/faults", rule)
    assert st == 200, doc
    return doc["id"]


def rules(s):
    st, doc = api(s, "GET", "/chaos/faults")
    assert st == 200, doc
    return doc["rules"]


def within_3_sigma(hits, n, p):
    sigma = math.sqrt(n * p * (1 - p))
    return abs(hits - n * p) <= 3 * sigma, "%d hits of %d, expected %.1f +- %.1f" % (
        hits, n, n * p, 3 * sigma)


def statuses(s, n, path="/x", headers=None):
    out = []
    with RawConn(s.port) as c:
        for _ in range(n):
            out.append(c.request("GET", path, headers=headers).status)
    return out


def access_lines(s, n, timeout=5):
    """The last n access log lines once at least n are written."""
    wait_for(lambda: s.access_log.exists() and len(s.access_log.read_text().splitlines()) >= n, timeout)
    return s.access_log.read_text().splitlines()[-n:]


# ---- add / list / delete / kill switch ------------------------------------------------------

def test_add_list_get_delete(chaos):
    s = chaos()
    assert rules(s) == []
    rid = add(s, target={"cluster": "up"}, fault={"abort": {"http_status": 503, "percent": 12.5},
                                                   "delay": {"fixed_ms": 50, "percent": 1}},
              headers=[{"name": "X-Chaos", "exact": "on"}], ttl_s=30, description="demo")
    rid2 = add(s, target={"route": "two"}, leg="upstream", fault={"abort": {"reset": True}}, ttl_s=5)
    assert rid2 == rid + 1
    lst = rules(s)
    assert [r["id"] for r in lst] == [rid, rid2]
    r = lst[0]
    assert r["target"] == {"cluster": "up"} and r["leg"] == "downstream"
    assert r["headers"] == [{"name": "x-chaos", "exact": "on"}]
    assert r["fault"] == {"delay": {"fixed_ms": 50, "percent": 1}, "abort": {"http_status": 503, "percent": 12.5}}
    assert r["ttl_s"] == 30 and 28 < r["ttl_left_s"] <= 30
    assert r["description"] == "demo"
    assert r["counts"] == {"delays": 0, "aborts": 0, "rate_limits": 0, "midstream": 0, "upstream_aborts": 0,
                           "upstream_resets": 0}
    assert lst[1]["fault"] == {"abort": {"reset": True, "percent": 100}} and lst[1]["leg"] == "upstream"
    st, one = api(s, "GET", "/chaos/faults/%d" % rid2)
    assert st == 200 and one["id"] == rid2
    st, text = api(s, "GET", "/chaos/faults?format=text")
    assert st == 200 and "cluster=up" in text and "route=two" in text and "abort 503 12.5%" in text
    st, doc = api(s, "DELETE", "/chaos/faults/%d" % rid)
    assert st == 200 and doc == {"deleted": 1, "id": rid}
    assert [r["id"] for r in rules(s)] == [rid2]
    st, doc = api(s, "DELETE", "/chaos/faults/%d" % rid)
    assert st == 404 and "no such rule" in doc["error"]
    assert s.stat("chaos.rules_active") == 1
    assert "chaos: rule %d deleted" % rid in s.log()


def test_kill_switch_clears_everything(chaos):
    s = chaos()
    for t in ({"cluster": "up"}, {"listener": "ingress"}, {"vhost": "default"}):
        add(s, target=t, fault={"abort": {"http_status": 503}})
    assert set(statuses(s, 20)) == {503}
    st, doc = api(s, "DELETE", "/chaos/faults")
    assert st == 200 and doc == {"deleted": 3}
    assert rules(s) == [] and s.stat("chaos.rules_active") == 0
    # workers get the new (empty) set through their mailbox: at once in practice
    assert wait_for(lambda: get(s.port, "/x").status == 200, timeout=2)
    assert set(statuses(s, 50)) == {200}
    assert "kill switch: 3 rule(s) removed" in s.log()


def test_ttl_expiry(chaos):
    s = chaos()
    t0 = time.monotonic()
    rid = add(s, target={"cluster": "up"}, fault={"abort": {"http_status": 503}}, ttl_s=1.0)
    assert set(statuses(s, 10)) == {503}
    assert wait_for(lambda: rules(s) == [], timeout=5)
    gone = time.monotonic() - t0
    assert 0.9 <= gone < 3.0, gone
    assert set(statuses(s, 50)) == {200}
    assert "chaos: rule %d expired after 1.0 s (0 delays, 10 aborts" % rid in s.log()
    assert s.stat("chaos.aborts_injected") == 10
    assert "chaos.rule.%d.abort_injected" % rid not in s.stats()


# ---- the faults themselves -----------------------------------------------------------------

def test_abort_rate_within_3_sigma_and_counted(chaos):
    s = chaos()
    rid = add(s, target={"route": "rest"}, fault={"abort": {"http_status": 503, "percent": 10}})
    n, aborted = 5000, 0
    with RawConn(s.port) as c:
        for _ in range(n):
            r = c.request("GET", "/x")
            if r.status == 503:
                assert r.header("x-skiff-flags") == "FI", r
                assert b"chaos rule %d abort" % rid in r.body
                aborted += 1
            else:
                assert r.status == 200, r
    ok, why = within_3_sigma(aborted, n, 0.10)
    print("chaos abort 10%%: %s" % why)
    assert ok, why
    st = s.stats()
    assert st["chaos.aborts_injected"] == aborted
    assert st["chaos.rule.%d.abort_injected" % rid] == aborted
    assert st.get("fault.aborts_injected", 0) == 0  # the config has no fault filter
    assert rules(s)[0]["counts"]["aborts"] == aborted
    # the upstream never saw an aborted request
    assert len(s.upstream.traffic()) == n - aborted
    # a request on another route is not targeted
    assert set(statuses(s, 30, "/api/x")) == {200}
    assert s.stat("chaos.aborts_injected") == aborted


def test_delay_only_on_matching_requests(chaos):
    s = chaos()
    rid = add(s, target={"cluster": "up"}, fault={"delay": {"fixed_ms": 200}},
              headers=[{"name": "x-chaos", "exact": "slow"}])
    slow, fast = [], []
    with RawConn(s.port) as c:
        for i in range(20):
            h = [("x-chaos", "slow" if i % 2 else "other")]
            t = time.monotonic()
            r = c.request("GET", "/x", headers=h)
            dt = time.monotonic() - t
            assert r.status == 200, r
            (slow if i % 2 else fast).append(dt)
    print("delayed: min %.3f s; others: max %.3f s" % (min(slow), max(fast)))
    assert min(slow) >= 0.2
    assert max(fast) < 0.15
    st = s.stats()
    assert st["chaos.rule.%d.delay_injected" % rid] == 10 and st["chaos.delays_injected"] == 10
    lines = access_lines(s, 20)
    assert sum(1 for ln in lines if ln.split()[1] == "DI") == 10, lines


def test_per_rule_counters_prometheus_and_access_log(chaos):
    s = chaos()
    r1 = add(s, target={"route": "api"}, fault={"abort": {"http_status": 429}})
    r2 = add(s, target={"cluster": "up2"}, fault={"abort": {"grpc_status": 14}})
    r3 = add(s, target={"route": "rest"}, fault={"delay": {"fixed_ms": 1}})
    codes = statuses(s, 7, "/api/a") + statuses(s, 5, "/two") + statuses(s, 3, "/x")
    assert codes == [429] * 7 + [200] * 5 + [200] * 3
    st = s.stats()
    assert st["chaos.rule.%d.abort_injected" % r1] == 7
    assert st["chaos.rule.%d.abort_injected" % r2] == 5
    assert st["chaos.rule.%d.delay_injected" % r3] == 3
    assert st["chaos.rule.%d.delay_injected" % r1] == 0
    assert st["chaos.aborts_injected"] == 12 and st["chaos.delays_injected"] == 3
    code, prom = admin_get(s.admin_port, "/stats/prometheus")
    assert code == 200
    assert 'skiff_chaos_rule_faults_injected_total{rule="%d",kind="abort"} 7' % r1 in prom
    assert 'skiff_chaos_rule_faults_injected_total{rule="%d",kind="abort"} 5' % r2 in prom
    assert 'skiff_chaos_rule_faults_injected_total{rule="%d",kind="delay"} 3' % r3 in prom
    assert "skiff_chaos_aborts_injected_total 12" in prom
    assert "# TYPE skiff_chaos_rules_active gauge" in prom
    lines = access_lines(s, 15)
    # each worker flushes its own batch: lines of two workers may interleave out of order
    assert sorted(ln.split()[1] for ln in lines) == ["DI"] * 3 + ["FI"] * 12, lines
    # gRPC abort: HTTP 200 with grpc-status 14 in a trailers-only answer
    r = get(s.port, "/two", headers=[("content-type", "application/grpc"), ("te", "trailers")])
    assert r.status == 200 and r.header("grpc-status") == "14", r


def test_rate_limit_rule(chaos):
    s = chaos()
    add(s, target={"cluster": "up"}, fault={"rate_limit": {"kbps": 64}})
    t = time.monotonic()
    r = get(s.port, "/big?size=131072", timeout=20)
    dt = time.monotonic() - t
    assert r.status == 200 and len(r.body) == 131072
    rate = 131072 / dt
    print("64 KiB/s rule: %.0f B/s over %.2f s" % (rate, dt))
    assert 0.8 * 65536 <= rate <= 1.25 * 65536, rate
    assert s.stat("chaos.response_rl_injected") == 1


def test_seed_makes_selection_reproducible(chaos, monkeypatch):
    monkeypatch.setenv("SKIFF_FAULT_SEED", "12345")
    runs = []
    for _ in range(2):
        s = chaos(args=["--concurrency", "1"])
        add(s, target={"cluster": "up"}, fault={"abort": {"http_status": 503, "percent": 30}})
        runs.append(statuses(s, 200))
        s.stop()
    assert runs[0] == runs[1]
    assert 20 < runs[0].count(503) < 100


def test_rule_deleted_while_a_request_is_delayed(chaos):
    s = chaos()
    add(s, target={"cluster": "up"}, fault={"delay": {"fixed_ms": 600}})
    out = {}

    def one():
        t = time.monotonic()
        out["r"] = get(s.port, "/x")
        out["dt"] = time.monotonic() - t

    th = threading.Thread(target=one)
    th.start()
    time.sleep(0.2)
    st, doc = api(s, "DELETE", "/chaos/faults")
    assert st == 200 and doc["deleted"] == 1
    th.join(10)
    # the in-flight request keeps the rule it started with (and its delay)
    assert out["r"].status == 200 and out["dt"] >= 0.6
    assert get(s.port, "/x").status == 200


# ---- bad input --------------------------------------------------------------------------------

BAD = [
    (b"", "empty body"),
    (b"{", "invalid JSON"),
    (b"[1, 2]", "rule: must be an object"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 5,}', "invalid JSON"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 5} x', "trailing data"),
    (b'{"target": {"cluster": "up"}, "target": {"cluster": "up"}}', "duplicate member"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 5, "x": 1}',
     "unknown field 'x'"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 503}}}', "ttl_s: required"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 90000}', "ttl_s: must be"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": "5"}', "ttl_s: must be a number"),
    (b'{"target": {"cluster": "nope"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 5}', "no cluster named 'nope'"),
    (b'{"target": {"route": "nope"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 5}', "no route named 'nope'"),
    (b'{"target": {"cluster": "up", "route": "api"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 5}',
     "exactly one of"),
    (b'{"target": {"cluster": "up"}, "fault": {}, "ttl_s": 5}', "needs at least one"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 99}}, "ttl_s": 5}', "http_status: must be"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 503, "percent": 0}}, "ttl_s": 5}',
     "percent: must be"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"http_status": 503, "percent": 101}}, "ttl_s": 5}',
     "percent: must be"),
    (b'{"target": {"cluster": "up"}, "fault": {"delay": {"fixed_ms": 1.5}}, "ttl_s": 5}', "fixed_ms: must be an integer"),
    (b'{"target": {"cluster": "up"}, "fault": {"delay": {"percent": 5}}, "ttl_s": 5}', "fixed_ms: required"),
    (b'{"target": {"cluster": "up"}, "fault": {"abort": {"reset": true}}, "ttl_s": 5}', "only on the upstream leg"),
    (b'{"target": {"cluster": "up"}, "leg": "upstream", "fault": {"delay": {"fixed_ms": 5}}, "ttl_s": 5}',
     "upstream leg supports"),
    (b'{"target": {"cluster": "up"}, "leg": "sideways", "fault": {"abort": {"http_status": 503}}, "ttl_s": 5}',
     "leg: must be"),
    (b'{"target": {"cluster": "up"}, "headers": [{"name": "bad name", "exact": "1"}], '
     b'"fault": {"abort": {"http_status": 503}}, "ttl_s": 5}', "not a valid header name"),
    (b'{"target": {"cluster": "\\u0000"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 5}', "control characters"),
    (b'{"target": {"cluster": "\\ud800"}, "fault": {"abort": {"http_status": 503}}, "ttl_s": 5}', "surrogate"),
    (b"[" * 50 + b"]" * 50, "nested too deeply"),
    (b'{"target": {"cluster": "up"}, "fault": {"midstream": {"action": "reset", "after_bytes": 5, "grpc_status": 3}}, '
     b'"ttl_s": 5}', "only with action grpc_error"),
    (b'{"target": {"cluster": "up"}, "fault": {"midstream": {"action": "explode", "after_bytes": 5}}, "ttl_s": 5}',
     "action: must be"),
    (b'{"target": {"cluster": "up"}, "fault": {"midstream": {"action": "reset"}}, "ttl_s": 5}', "after_bytes: required"),
    (b'{"target": {"cluster": "up"}, "leg": "upstream", "fault": {"midstream": {"action": "reset", "after_bytes": 1}}, '
     b'"ttl_s": 5}', "upstream leg supports"),
    (b"\xff\xfe", "invalid JSON"),
]


def test_bad_rules_are_400_with_a_reason(chaos):
    s = chaos()
    for body, why in BAD:
        st, doc = api(s, "POST", "/chaos/faults", raw=body)
        assert st == 400, (body, st, doc)
        assert why in doc["error"], (body, doc)
    assert rules(s) == []
    # size cap, chunked bodies, methods, unknown paths
    big = b'{"target": {"cluster": "up"}, "description": "' + b"x" * 9000 + b'"}'
    st, text = api(s, "POST", "/chaos/faults", raw=big)
    assert st == 413, text
    with RawConn(s.admin_port) as c:
        c.send(b"POST /chaos/faults HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        assert c.read_response().status == 411
    assert api(s, "PUT", "/chaos/faults", raw=b"{}")[0] == 405
    assert api(s, "GET", "/chaos/faults/abc")[0] == 404
    assert api(s, "GET", "/chaos/other")[0] == 404
    # still serving, nothing added
    assert get(s.port, "/x").status == 200 and rules(s) == []


def test_rule_limit(chaos):
    s = chaos()
    for _ in range(64):
        add(s, target={"cluster": "up2"}, fault={"abort": {"http_status": 503, "percent": 0.0001}})
    st, doc = api(s, "POST", "/chaos/faults", {"target": {"cluster": "up"}, "ttl_s": 5,
                                                 "fault": {"abort": {"http_status": 503}}})
    assert st == 409 and "too many rules" in doc["error"]
    # eight filter slots at most: the rest of a request's matching rules are skipped and counted
    r = get(s.port, "/two")
    assert r.status in (200, 503)
    assert s.stat("chaos.rules_skipped_filter_slots_full") >= 1
    assert api(s, "DELETE", "/chaos/faults")[1] == {"deleted": 64}


# ---- CLI ------------------------------------------------------------------------------------------

def cli(s, *args, admin=None):
    a = ["--admin", admin or "127.0.0.1:%d" % s.admin_port]
    p = subprocess.run([s.binary, "chaos"] + list(args) + a, capture_output=True, text=True, timeout=20)
    return p.returncode, p.stdout, p.stderr


def test_cli_round_trip(chaos):
    s = chaos()
    rc, out, err = cli(s, "add", "--route", "rest", "--abort", "503", "--percent", "100", "--ttl", "30s",
                       "--header", "x-chaos=on", "--description", "cli test")
    assert rc == 0, err
    assert out.startswith("added rule 1 (expires in 30.0 s)"), out
    rc, out, err = cli(s, "add", "--cluster", "up", "--delay", "150ms", "--delay-percent", "100", "--ttl", "1m")
    assert rc == 0 and "added rule 2" in out, err
    rc, out, err = cli(s, "list")
    assert rc == 0, err
    assert "route=rest" in out and "abort 503 100%" in out and "(header match)" in out and "# cli test" in out
    assert "cluster=up" in out and "delay 150ms 100%" in out
    rc, out, err = cli(s, "list", "--json")
    doc = json.loads(out)
    assert [r["id"] for r in doc["rules"]] == [1, 2]
    assert doc["rules"][0]["headers"] == [{"name": "x-chaos", "exact": "on"}]
    assert doc["rules"][1]["ttl_s"] == 60
    # rules act in the order they were added: rule 1 aborts before rule 2 delays
    assert get(s.port, "/x", headers=[("x-chaos", "on")]).status == 503
    t = time.monotonic()
    assert get(s.port, "/x").status == 200
    assert time.monotonic() - t >= 0.15
    rc, out, err = cli(s, "del", "1")
    assert rc == 0 and out.strip() == "removed rule 1"
    rc, out, err = cli(s, "del", "1")
    assert rc == 1 and "404" in err and "no such rule" in err
    rc, out, err = cli(s, "add", "--cluster", "up2", "--grpc-error-after", "10", "--grpc-error-status", "4",
                       "--midstream-percent", "50", "--ttl", "5")
    assert rc == 0 and "added rule 3" in out, err
    assert json.loads(cli(s, "list", "--json")[1])["rules"][1]["fault"] == {
        "midstream": {"action": "grpc_error", "after_bytes": 10, "grpc_status": 4, "percent": 50}}
    rc, out, err = cli(s, "clear")
    assert rc == 0 and out.strip() == "removed 2 rule(s)"
    assert rules(s) == []
    # server-side validation errors come back readable, exit 1
    rc, out, err = cli(s, "add", "--cluster", "nope", "--abort", "503", "--ttl", "5")
    assert rc == 1 and "no cluster named 'nope'" in err, err
    # usage errors: exit 2, nothing sent
    for bad in (["add", "--abort", "503", "--ttl", "5"],
                ["add", "--cluster", "up", "--ttl", "5"],
                ["add", "--cluster", "up", "--abort", "503"],
                ["add", "--cluster", "up", "--delay", "5parsecs", "--ttl", "5"],
                ["frobnicate"], ["del"], ["del", "x1"]):
        rc, out, err = cli(s, *bad)
        assert rc == 2, (bad, rc, out, err)
    assert rules(s) == []
    # nobody listening: exit 3
    rc, out, err = cli(s, "list", admin="127.0.0.1:%d" % free_port())
    assert rc == 3 and "cannot connect" in err


# ---- upstream leg ---------------------------------------------------------------------------------

RETRY = {"retry_on": "5xx,reset", "num_retries": 2,
         "retry_back_off": {"base_interval": "0.002s", "max_interval": "0.01s"}}


def test_upstream_leg_aborts_are_retried(chaos):
    s = chaos(retry=RETRY)
    rid = add(s, target={"cluster": "up"}, leg="upstream", fault={"abort": {"http_status": 503, "percent": 50}})
    n = 1000
    codes = statuses(s, n)
    failed = sum(1 for c in codes if c != 200)
    assert set(codes) <= {200, 503}
    ok, why = within_3_sigma(failed, n, 0.125)  # all three attempts fail: 0.5^3
    print("upstream 50%% aborts, 2 retries: %d of %d failed (%s)" % (failed, n, why))
    assert ok, why
    assert failed < 0.2 * n
    st = s.stats()
    injected = st["chaos.rule.%d.upstream_abort_injected" % rid]
    # every injected abort was either retried or is a client's final 503
    assert st["cluster.up.upstream_rq_retry"] == injected - failed
    assert st["cluster.up.upstream_rq_retry"] > 0.4 * n
    # every success is exactly one real upstream request
    assert len(s.upstream.traffic()) == n - failed
    lines = access_lines(s, n)
    assert sum(1 for ln in lines if ln.startswith("503 FI")) == failed


def test_upstream_leg_resets_are_retried(chaos):
    s = chaos(retry=RETRY)
    rid = add(s, target={"route": "api"}, leg="upstream", fault={"abort": {"reset": True, "percent": 50}})
    codes = statuses(s, 400, "/api/x")
    failed = sum(1 for c in codes if c != 200)
    assert set(codes) <= {200, 502}
    ok, why = within_3_sigma(failed, 400, 0.125)
    assert ok, why
    st = s.stats()
    assert st["cluster.up.upstream_rq_retry"] == st["chaos.rule.%d.upstream_reset_injected" % rid] - failed
    # without retries (another route) every reset reaches the client as 502 UC
    rid2 = add(s, target={"route": "two"}, leg="upstream", fault={"abort": {"reset": True}})
    assert set(statuses(s, 5, "/two")) == {502}
    assert s.stat("chaos.rule.%d.upstream_reset_injected" % rid2) == 5


# ---- HTTP/2 downstream, config reloads --------------------------------------------------------------

def test_h2_downstream_and_rules_survive_reload(chaos, upstream, tmp_path):
    s = chaos()
    rid = add(s, target={"route": "rest"}, fault={"abort": {"http_status": 503}, "delay": {"fixed_ms": 100}})
    for _ in range(3):
        t = time.monotonic()
        p = helpers.curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                         "%s/x" % s.url)
        assert p.stdout.decode() == "503 2", p
        assert time.monotonic() - t >= 0.1
    assert s.stat("chaos.rule.%d.abort_injected" % rid) == 3
    assert s.stat("chaos.rule.%d.delay_injected" % rid) == 3
    # a config reload (new snapshot) keeps the runtime rules: they match by name
    s.reload(chaos_cfg(s.port, s.admin_port, upstream.port, s.access_log))
    assert s.stat("config_reload_ok") == 1
    assert get(s.port, "/x").status == 503
    assert [r["id"] for r in rules(s)] == [rid]


# ---- mid-stream faults --------------------------------------------------------------------------------

def raw_get_until_close(port, path, timeout=10):
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(("GET %s HTTP/1.1\r\nhost: t\r\n\r\n" % path).encode())
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            b = s.recv(65536)
        except OSError:
            break
        if not b:
            break
        data += b
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_midstream_reset_h1_after_n_bytes(chaos):
    s = chaos()
    rid = add(s, target={"cluster": "up"}, fault={"midstream": {"action": "reset", "after_bytes": 1000}})
    head, body = raw_get_until_close(s.port, "/big?size=100000")
    assert head.startswith("HTTP/1.1 200"), head
    assert "content-length: 100000" in head.lower()
    assert len(body) == 1000  # exactly the allowed bytes, then the connection closed
    # short responses are not cut (the fault needs bytes beyond N)
    assert get(s.port, "/big?size=900").status == 200
    st = s.stats()
    assert st["chaos.rule.%d.midstream_injected" % rid] == 1 and st["chaos.midstream_injected"] == 1
    assert any(ln.startswith("200 MF /big?size=100000") for ln in access_lines(s, 2))  # own flag


def h2get(s, path, *hdrs):
    args = ["--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    for h in hdrs:
        args += ["-H", h]
    p = helpers.curl(*(args + ["%s%s" % (s.url, path)]))
    code, size = p.stdout.decode().split()
    return p.returncode, int(code), int(size)


def test_midstream_truncate_and_reset_h2(chaos):
    s = chaos()
    r1 = add(s, target={"cluster": "up"}, headers=[{"name": "x-cut", "exact": "truncate"}],
             fault={"midstream": {"action": "truncate", "after_bytes": 5000}})
    r2 = add(s, target={"cluster": "up"}, headers=[{"name": "x-cut", "exact": "reset"}],
             fault={"midstream": {"action": "reset", "after_bytes": 3000}})
    # a chunked upstream answer has no content-length: the early END_STREAM is a clean (short) end
    rc, code, size = h2get(s, "/chunked?n=50&size=4000", "x-cut: truncate")
    print("h2 truncate: curl rc %d, %d bytes" % (rc, size))
    assert (rc, code, size) == (0, 200, 5000)
    rc, code, size = h2get(s, "/big?size=200000", "x-cut: reset")
    print("h2 reset: curl rc %d, %d bytes" % (rc, size))
    # RST_STREAM may overtake HEADERS / DATA still queued in nghttp2: at most N bytes
    assert rc != 0 and code in (0, 200) and size <= 3000
    st = s.stats()
    assert st["chaos.rule.%d.midstream_injected" % r1] == 1
    assert st["chaos.rule.%d.midstream_injected" % r2] == 1
    # other requests are whole, and the proxy is fine afterwards
    assert h2get(s, "/big?size=200000") == (0, 200, 200000)


def test_midstream_grpc_error_in_trailers_after_partial_data(skiff_factory):
    import grpc
    from grpc_service import Client, serve
    server, port, svc = serve()
    try:
        lp, ap = free_port(), free_port()
        h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
        cfg = bootstrap(ap, [http_listener("ingress", lp, [vhost("default", ["*"], [route("/", "grpc", timeout="0s")])],
                                           hcm_extra={"codec_type": "AUTO"})],
                        [cluster("grpc", [port], typed_extension_protocol_options=h2)])
        s = skiff_factory(cfg, port=lp, admin_port=ap)
        rid = add(s, target={"cluster": "grpc"},
                  fault={"midstream": {"action": "grpc_error", "after_bytes": 50, "grpc_status": 13}})
        c = Client("127.0.0.1:%d" % lp)
        got = []
        try:
            with pytest.raises(grpc.RpcError) as ei:
                for m in c.server_stream(b"100", timeout=10):
                    got.append(m)
        finally:
            c.close()
        # five 10-byte frames (5-byte header + "msg-N"), then the trailers
        assert got == [b"msg-%d" % i for i in range(5)]
        assert ei.value.code() == grpc.StatusCode.INTERNAL
        assert "mid-stream" in (ei.value.details() or "")
        assert s.stat("chaos.rule.%d.midstream_injected" % rid) == 1
    finally:
        server.stop(0)


def test_midstream_reset_h2_with_chosen_code(chaos):
    """action reset with rst_code: the client's stream gets RST_STREAM with that
    HTTP/2 error code (here CANCEL = 8, then ENHANCE_YOUR_CALM = 11)."""
    import socket as _socket
    import h2.config
    import h2.connection
    import h2.events
    s = chaos()
    for code in (8, 11):
        rid = add(s, target={"cluster": "up"},
                  fault={"midstream": {"action": "reset", "after_bytes": 100, "rst_code": code}})
        sock = _socket.create_connection(("127.0.0.1", s.port), timeout=10)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":path", "/big?size=200000"), (":scheme", "http"),
                             (":authority", "t")], end_stream=True)
        sock.sendall(c.data_to_send())
        reset = None
        deadline = time.monotonic() + 10
        while reset is None and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    reset = ev.error_code
                elif isinstance(ev, h2.events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, sid)
            sock.sendall(c.data_to_send())
        sock.close()
        assert reset == code, reset
        assert s.stat("chaos.rule.%d.midstream_injected" % rid) == 1
        assert api(s, "DELETE", "/chaos/faults/%d" % rid)[0] == 200
    # rst_code only with reset, and within 0-13
    for bad, why in ((dict(action="truncate", after_bytes=5, rst_code=8), "only with action reset"),
                     (dict(action="reset", after_bytes=5, rst_code=14), "rst_code")):
        st, body = api(s, "POST", "/chaos/faults",
                       {"target": {"cluster": "up"}, "fault": {"midstream": bad}, "ttl_s": 5})
        assert st == 400 and why in json.dumps(body), body
