"""HTTP RBAC filter (envoy.extensions.filters.http.rbac.v3.RBAC / RBACPerRoute):
header, url_path and remote_ip rules on plaintext listeners; SPIFFE principals
(authenticated.principal_name against the client certificate's URI SAN, then
DNS SAN, then subject) on an mTLS listener with certificates made at test time.

A denied request gets 403 "RBAC: access denied" with x-skiff-flags: RBAC (gRPC:
grpc-status 7 PERMISSION_DENIED) and never reaches the upstream."""
import subprocess

import pytest

import helpers
from helpers import bootstrap, cluster, free_port, route, sockaddr, vhost

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PR_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": helpers.ROUTER_TYPE}}
DOWN_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TD = "spiffe://skiff.local/ns/default/sa/"


def rbac_filter(rules=None, shadow=None, name="envoy.filters.http.rbac"):
    tc = {"@type": RBAC_TYPE}
    if rules is not None:
        tc["rules"] = rules
    if shadow is not None:
        tc["shadow_rules"] = shadow
    return {"name": name, "typed_config": tc}


def policy(permissions, principals):
    return {"permissions": permissions, "principals": principals}


ANY = [{"any": True}]


def listener(port, routes, filters, tls=None):
    hcm = {
        "@type": helpers.HCM_TYPE,
        "stat_prefix": "ingress",
        "route_config": {"name": "r", "virtual_hosts": [vhost("default", ["*"], routes)]},
        "http_filters": list(filters) + [ROUTER],
    }
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}
    if tls:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                     "typed_config": tls}
    return {"name": "ingress", "address": sockaddr(port), "filter_chains": [chain]}


@pytest.fixture
def rbac_proxy(skiff_factory, upstream):
    def make(filters, routes=None, tls=None):
        lp, ap = free_port(), free_port()
        cfg = bootstrap(ap, [listener(lp, routes or [route("/", "up")], filters, tls)],
                        [cluster("up", [upstream.port])])
        s = skiff_factory(cfg, port=lp, admin_port=ap)
        s.upstream = upstream
        return s
    return make


def assert_denied(r):
    assert r.status == 403, r
    assert r.body == b"RBAC: access denied\n", r.body
    assert r.header("x-skiff-flags") == "RBAC"


# ---- plaintext rules ---------------------------------------------------------------------

def test_header_rule_allow(rbac_proxy):
    s = rbac_proxy([rbac_filter({"action": "ALLOW", "policies": {
        "admins": policy([{"header": {"name": "x-role", "exact_match": "admin"}}], ANY),
        "readers": policy([{"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"header": {"name": "x-role", "string_match": {"prefix": "read", "ignore_case": True}}},
        ]}}], ANY)}})])
    assert helpers.get(s.port, headers=[("x-role", "admin")]).status == 200
    assert helpers.get(s.port, method="DELETE", headers=[("x-role", "admin")]).status == 200
    assert helpers.get(s.port, headers=[("x-role", "READer")]).status == 200
    assert_denied(helpers.get(s.port, method="POST", body=b"x", headers=[("x-role", "reader")]))
    assert_denied(helpers.get(s.port))
    st = s.stats()
    assert st["rbac.allowed"] == 3 and st["rbac.denied"] == 2
    assert len(s.upstream.traffic()) == 3


def test_url_path_deny_ignores_query(rbac_proxy):
    s = rbac_proxy([rbac_filter({"action": "DENY", "policies": {
        "no-admin": policy([{"url_path": {"path": {"exact": "/admin"}}},
                            {"url_path": {"path": {"prefix": "/internal/"}}}], ANY)}})])
    assert_denied(helpers.get(s.port, "/admin"))
    assert_denied(helpers.get(s.port, "/admin?debug=1"))
    assert_denied(helpers.get(s.port, "/internal/x"))
    assert helpers.get(s.port, "/admin/ok").status == 200
    assert helpers.get(s.port, "/public?p=/admin").status == 200
    paths = [r["path"] for r in s.upstream.traffic()]
    assert paths == ["/admin/ok", "/public?p=/admin"]


def test_remote_ip_and_not_id(rbac_proxy):
    s = rbac_proxy([rbac_filter({"action": "ALLOW", "policies": {
        "loopback": policy(ANY, [{"remote_ip": {"address_prefix": "127.0.0.0",
                                                "prefix_len": 8}}])}})],
                   routes=[route("/", "up")])
    assert helpers.get(s.port).status == 200

    s2 = rbac_proxy([rbac_filter({"action": "ALLOW", "policies": {
        "not-loopback": policy(ANY, [{"not_id": {"direct_remote_ip": {
            "address_prefix": "127.0.0.1", "prefix_len": 32}}}]),
        "tenant": policy(ANY, [{"and_ids": {"ids": [
            {"remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}},
            {"header": {"name": "x-tenant", "exact_match": "t1"}}]}}])}})])
    assert_denied(helpers.get(s2.port))
    assert helpers.get(s2.port, headers=[("x-tenant", "t1")]).status == 200
    assert_denied(helpers.get(s2.port, headers=[("x-tenant", "t2")]))


def test_per_route_override_and_shadow(rbac_proxy):
    deny_all = {"action": "ALLOW", "policies": {}}
    routes = [route("/open", "up"), route("/ops", "up"), route("/", "up")]
    routes[0]["typed_per_filter_config"] = {"envoy.filters.http.rbac": {"@type": RBAC_PR_TYPE}}
    routes[1]["typed_per_filter_config"] = {"envoy.filters.http.rbac": {
        "@type": RBAC_PR_TYPE, "rbac": {"rules": {"action": "ALLOW", "policies": {
            "ops": policy([{"header": {"name": "x-ops", "present_match": True}}], ANY)}}}}}
    # shadow rules: evaluated and counted, never enforced
    shadow = {"action": "DENY", "policies": {"get": policy(
        [{"header": {"name": ":method", "exact_match": "GET"}}], ANY)}}
    s = rbac_proxy([rbac_filter(deny_all, shadow=shadow)], routes=routes)
    assert_denied(helpers.get(s.port, "/"))
    assert helpers.get(s.port, "/open").status == 200
    assert helpers.get(s.port, "/ops", headers=[("x-ops", "1")]).status == 200
    assert_denied(helpers.get(s.port, "/ops"))
    st = s.stats()
    assert st["rbac.denied"] == 2 and st["rbac.allowed"] == 1
    assert st["rbac.shadow_denied"] == 1  # "/" only: the overriding routes have no shadow rules


def test_grpc_request_denied_with_permission_denied(rbac_proxy):
    s = rbac_proxy([rbac_filter({"action": "DENY", "policies": {"all": policy(ANY, ANY)}})])
    r = helpers.get(s.port, "/pkg.Svc/Method", method="POST", body=b"\0\0\0\0\0",
                    headers=[("content-type", "application/grpc")])
    assert r.status == 200 and r.header("grpc-status") == "7", r
    assert r.header("x-skiff-flags") == "RBAC"
    assert "RBAC" in (r.header("grpc-message") or "")


# ---- SPIFFE principals over mTLS --------------------------------------------------------------

def _openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rbac-certs")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", "/O=skiff/CN=rbac test CA", "-keyout", "ca.key",
             "-out", "ca.pem", cwd=d)
    sans = {
        "server": "URI:%sserver,DNS:localhost,IP:127.0.0.1" % TD,
        "client": "URI:%sclient" % TD,
        "other": "URI:%sother" % TD,
        "dnsonly": "DNS:svc.example.internal",
        "nosan": None,
    }
    for who, san in sans.items():
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-subj", "/O=skiff/CN=%s" % who, "-keyout", who + ".key", "-out", who + ".csr",
                 cwd=d)
        ext = "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
        if san:
            ext = "subjectAltName=%s\n" % san + ext
        (d / (who + ".ext")).write_text(ext)
        _openssl("x509", "-req", "-in", who + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", who + ".ext", "-out", who + ".pem",
                 cwd=d)
    return d


def tls_ctx(certs):
    return {
        "@type": DOWN_TLS,
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": str(certs / "server.pem")},
                                  "private_key": {"filename": str(certs / "server.key")}}],
            "validation_context": {"trusted_ca": {"filename": str(certs / "ca.pem")}},
        },
    }


def curl_as(s, certs, who, path="/"):
    p = helpers.curl("-o", "-", "-w", "\n%{http_code}", "-D", "-",
                     "--cacert", certs / "ca.pem", "--cert", certs / (who + ".pem"),
                     "--key", certs / (who + ".key"),
                     "--resolve", "localhost:%d:127.0.0.1" % s.port,
                     "https://localhost:%d%s" % (s.port, path))
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("latin-1")
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_spiffe_principal_allow_and_deny(rbac_proxy, certs):
    s = rbac_proxy([rbac_filter({"action": "ALLOW", "policies": {
        "client-sa": policy(ANY, [{"authenticated": {"principal_name": {"exact": TD + "client"}}}]),
        "dns-name": policy(ANY, [{"authenticated": {"principal_name": {
            "suffix": ".example.internal"}}}]),
        "subject": policy(ANY, [{"authenticated": {"principal_name": {"exact": "CN=nosan,O=skiff"}}}]),
    }})], tls=tls_ctx(certs))
    code, out = curl_as(s, certs, "client")
    assert code == 200, out
    code, out = curl_as(s, certs, "other")
    assert code == 403, out
    assert "RBAC: access denied" in out and "x-skiff-flags: rbac" in out.lower()
    # no URI SAN: the DNS SAN is the principal; no SAN at all: the subject
    assert curl_as(s, certs, "dnsonly")[0] == 200
    assert curl_as(s, certs, "nosan")[0] == 200
    st = s.stats()
    assert st["rbac.allowed"] == 3 and st["rbac.denied"] == 1
    assert len(s.upstream.traffic()) == 3


def test_authenticated_without_name_and_plaintext_is_not_authenticated(rbac_proxy, certs):
    rules = {"action": "ALLOW", "policies": {"mtls": policy(ANY, [{"authenticated": {}}])}}
    s = rbac_proxy([rbac_filter(rules)], tls=tls_ctx(certs))
    assert curl_as(s, certs, "other")[0] == 200
    p = rbac_proxy([rbac_filter(rules)])
    assert_denied(helpers.get(p.port))


def test_deny_one_service_account(rbac_proxy, certs):
    s = rbac_proxy([rbac_filter({"action": "DENY", "policies": {
        "block-other": policy([{"url_path": {"path": {"prefix": "/"}}}],
                              [{"authenticated": {"principal_name": {"exact": TD + "other"}}}]),
    }})], tls=tls_ctx(certs))
    assert curl_as(s, certs, "client", "/data")[0] == 200
    code, out = curl_as(s, certs, "other", "/data")
    assert code == 403 and "RBAC: access denied" in out
