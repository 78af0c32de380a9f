"""Virtual hosts, route matching, route actions, header manipulation."""
import pytest

from helpers import bootstrap, cluster, free_port, get, http_listener, route, vhost


def direct(body, status=200):
    return {"status": status, "body": {"inline_string": body}}


def hv(key, value, action=None):
    o = {"header": {"key": key, "value": value}}
    if action:
        o["append_action"] = action
    return o


@pytest.fixture
def routed(skiff_factory, upstreams):
    a, b, c = upstreams("a"), upstreams("b"), upstreams("c")
    lp, ap = free_port(), free_port()
    default_routes = [
        route(path="/exact-path", cluster="a"),
        # header matchers (direct responses name the route that matched)
        route("/hdr", headers=[{"name": "x-exact", "exact_match": "yes"}], direct_response=direct("exact_match")),
        route("/hdr", headers=[{"name": "x-prefix", "prefix_match": "pre"}], direct_response=direct("prefix_match")),
        route("/hdr", headers=[{"name": "x-suffix", "suffix_match": "fix"}], direct_response=direct("suffix_match")),
        route("/hdr", headers=[{"name": "x-present", "present_match": True}], direct_response=direct("present_match")),
        route("/hdr", headers=[{"name": "x-sm", "string_match": {"exact": "Foo", "ignore_case": True}}],
              direct_response=direct("sm_exact_ic")),
        route("/hdr", headers=[{"name": "x-sm", "string_match": {"prefix": "ab"}}], direct_response=direct("sm_prefix")),
        route("/hdr", headers=[{"name": "x-sm", "string_match": {"suffix": "yz"}}], direct_response=direct("sm_suffix")),
        route("/hdr", headers=[{"name": "x-sm", "string_match": {"contains": "mid"}}],
              direct_response=direct("sm_contains")),
        route("/hdr", headers=[{"name": "x-two", "exact_match": "1"}, {"name": "x-three", "exact_match": "1"}],
              direct_response=direct("all_headers")),
        route("/hdr", direct_response=direct("hdr_fallback")),
        route("/inv", headers=[{"name": "x-inv", "exact_match": "no", "invert_match": True}],
              direct_response=direct("inv_matched")),
        route("/inv", direct_response=direct("inv_fallback")),
        route("/rewrite/", cluster="a", prefix_rewrite="/new/"),
        route("/hostrw", cluster="a", host_rewrite_literal="rewritten.example"),
        route("/direct", direct_response=direct("I am a teapot\n", 418)),
        route("/empty-direct", direct_response={"status": 204}),
        route("/ws", weighted_clusters={"clusters": [{"name": "a", "weight": 75}, {"name": "b", "weight": 25}]}),
        route("/to-c", cluster="c"),
        route("/", cluster="b"),
    ]
    vhosts = [
        vhost("exact", ["exact.example.com"], [route("/", "a")]),
        vhost("suffix", ["*.suffix.com"], [route("/", "b")]),
        vhost("prefix", ["prefix.*"], [route("/", "c")]),
        vhost("default", ["*"], default_routes),
    ]
    cfg = bootstrap(ap, [http_listener("ingress", lp, vhosts)],
                    [cluster("a", [a.port]), cluster("b", [b.port]), cluster("c", [c.port])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    return s


def served_by(r):
    assert r.status == 200, r
    return r.json()["server"]


@pytest.mark.parametrize("host,expect", [
    ("exact.example.com", "a"),
    ("EXACT.example.com", "a"),           # host matching is case-insensitive
    ("api.suffix.com", "b"),
    ("a.b.suffix.com", "b"),
    ("prefix.anything", "c"),
    ("prefix.x.y", "c"),
    ("unknown.host", "b"),                # "*" vhost, "/" route -> b
])
def test_vhost_domain_forms(routed, host, expect):
    assert served_by(get(routed.port, "/x", host=host)) == expect


def test_vhost_suffix_does_not_match_bare_suffix(routed):
    # "*.suffix.com" requires at least one char before ".suffix.com"; "suffix.com" -> "*"
    r = get(routed.port, "/to-c", host="suffix.com")
    assert served_by(r) == "c"


def test_path_exact_vs_prefix(routed):
    assert served_by(get(routed.port, "/exact-path")) == "a"
    # exact path only: a longer path falls through to "/" -> b
    assert served_by(get(routed.port, "/exact-path/more")) == "b"
    # query string is not part of the path match
    assert served_by(get(routed.port, "/exact-path?q=1")) == "a"
    assert served_by(get(routed.port, "/to-c/x")) == "c"


@pytest.mark.parametrize("headers,expect", [
    ([("x-exact", "yes")], "exact_match"),
    ([("x-exact", "no")], "hdr_fallback"),
    ([("x-prefix", "prefixed")], "prefix_match"),
    ([("x-prefix", "nope")], "hdr_fallback"),
    ([("x-suffix", "suffix")], "suffix_match"),
    ([("x-present", "")], "present_match"),
    ([("x-present", "anything")], "present_match"),
    ([("x-sm", "fOO")], "sm_exact_ic"),
    ([("x-sm", "abc")], "sm_prefix"),
    ([("x-sm", "xyz")], "sm_suffix"),
    ([("x-sm", "amidb")], "sm_contains"),
    ([("x-sm", "nothing")], "hdr_fallback"),
    ([("x-two", "1")], "hdr_fallback"),
    ([("x-two", "1"), ("x-three", "1")], "all_headers"),
    ([], "hdr_fallback"),
])
def test_header_matchers(routed, headers, expect):
    r = get(routed.port, "/hdr", headers=headers)
    assert r.status == 200, r
    assert r.body.decode() == expect


@pytest.mark.parametrize("headers,expect", [
    ([("x-inv", "yes")], "inv_matched"),
    ([("x-inv", "no")], "inv_fallback"),
])
def test_invert_match(routed, headers, expect):
    r = get(routed.port, "/inv", headers=headers)
    assert r.body.decode() == expect, r


def test_invert_match_absent_header(routed):
    # Envoy: an inverted exact matcher matches when the header is absent
    r = get(routed.port, "/inv")
    assert r.body.decode() == "inv_matched", r


def test_prefix_rewrite(routed):
    r = get(routed.port, "/rewrite/abc?q=1")
    assert served_by(r) == "a"
    assert r.json()["path"] == "/new/abc?q=1"


def test_host_rewrite_literal(routed):
    r = get(routed.port, "/hostrw/x", host="orig.example")
    assert served_by(r) == "a"
    hs = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert hs["host"] == "rewritten.example"


def test_direct_response(routed):
    r = get(routed.port, "/direct")
    assert r.status == 418
    assert r.body == b"I am a teapot\n"
    r = get(routed.port, "/empty-direct")
    assert r.status == 204
    assert r.body == b""
    assert routed.stat("rq_direct_response") >= 2


def test_weighted_clusters_distribution(routed):
    counts = {"a": 0, "b": 0}
    for i in range(200):
        counts[served_by(get(routed.port, "/ws/%d" % i))] += 1
    # 75/25 split: expected 150 / 50; generous bounds (p ~ 1e-6 outside)
    assert 115 <= counts["a"] <= 185, counts
    assert counts["a"] + counts["b"] == 200


def test_no_route_404(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    cfg = bootstrap(ap, [http_listener("l", lp, [vhost("only", ["only.example"], [route("/api", "up")])])],
                    [cluster("up", [upstream.port])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    r = get(s.port, "/api", host="other.example")
    assert r.status == 404
    assert r.header("x-skiff-flags") == "NR"
    assert b"route" in r.body.lower()
    r = get(s.port, "/nope", host="only.example")
    assert r.status == 404
    assert r.header("x-skiff-flags") == "NR"
    assert upstream.requests() == []


# ---- header manipulation at route_config / virtual_host / route levels ----------------

@pytest.fixture
def hdr_proxy(skiff_factory, upstream):
    lp, ap = free_port(), free_port()
    rt = route("/", "up",
               request_headers_to_add=[hv("x-rt", "rt"), hv("x-over", "route-value", "OVERWRITE_IF_EXISTS_OR_ADD"),
                                       hv("x-ifabsent", "added", "ADD_IF_ABSENT"),
                                       hv("x-append", "proxy")],
               request_headers_to_remove=["x-rm-rt"],
               response_headers_to_add=[hv("x-resp-rt", "rt")],
               response_headers_to_remove=["x-conn-id"])
    vh = vhost("default", ["*"], [rt],
               request_headers_to_add=[hv("x-vh", "vh")],
               request_headers_to_remove=["x-rm-vh"],
               response_headers_to_add=[hv("x-resp-vh", "vh")],
               response_headers_to_remove=["x-served-by"])
    cfg = bootstrap(ap, [http_listener("l", lp, [vh], rc_extra={
        "request_headers_to_add": [hv("x-rc", "rc")],
        "request_headers_to_remove": ["x-rm-rc"],
        "response_headers_to_add": [hv("x-resp-rc", "rc")],
        "response_headers_to_remove": ["content-type"],
    })], [cluster("up", [upstream.port])])
    return skiff_factory(cfg, port=lp, admin_port=ap)


def test_request_headers_add_remove_all_levels(hdr_proxy):
    r = get(hdr_proxy.port, "/h", headers=[("x-rm-rc", "1"), ("x-rm-vh", "1"), ("x-rm-rt", "1"), ("x-keep", "1"),
                                             ("x-over", "client"), ("x-ifabsent", "client"), ("x-append", "client")])
    assert r.status == 200, r
    hs = r.json()["headers"]
    names = [k.lower() for k, _ in hs]
    vals = lambda n: [v for k, v in hs if k.lower() == n]
    for n in ("x-rm-rc", "x-rm-vh", "x-rm-rt"):
        assert n not in names, hs
    assert vals("x-keep") == ["1"]
    assert vals("x-rc") == ["rc"]
    assert vals("x-vh") == ["vh"]
    assert vals("x-rt") == ["rt"]
    assert vals("x-over") == ["route-value"]
    assert vals("x-ifabsent") == ["client"]
    # default append_action APPEND_IF_EXISTS_OR_ADD: both values reach the upstream
    app = ",".join(vals("x-append"))
    assert "client" in app and "proxy" in app, hs


def test_request_header_add_if_absent_adds(hdr_proxy):
    hs = get(hdr_proxy.port, "/h").json()["headers"]
    assert [v for k, v in hs if k.lower() == "x-ifabsent"] == ["added"]


def test_response_headers_add_remove_all_levels(hdr_proxy):
    r = get(hdr_proxy.port, "/h")
    assert r.status == 200
    assert r.header("x-resp-rc") == "rc"
    assert r.header("x-resp-vh") == "vh"
    assert r.header("x-resp-rt") == "rt"
    assert r.header("x-conn-id") is None
    assert r.header("x-served-by") is None
    assert r.header("content-type") is None
