"""TLS end to end (issue 4) with real clients (curl, openssl s_client,
python ssl, h2load, grpcio) and certificates made at test time with the
openssl CLI (tls_helpers.PKI): downstream termination (HTTP/1.1, h2 via
ALPN, TLS 1.2 / 1.3), client certificate checks and their failure counters,
upstream origination (SAN checks, session resumption), the mesh hop from
examples/mesh with XFCC, filter chain selection (SNI, transport protocol,
ALPN), certificate rotation without restart, and bad TLS config."""
import hashlib
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

import helpers
from helpers import (RawConn, bootstrap, cluster, free_port, http_listener, route, vhost,
                     wait_for)
from tls_helpers import (PKI, SPIFFE, SServer, TLS_INSPECTOR, TlsConn, TlsOrigin, alpn_of, curl_parse,
                         curl_tls, downstream_tls, fail_delta, max_requests_per_connection,
                         peer_serial, s_client, ssl_context, tls_stats, upstream_tls, with_tls)

REPO = Path(__file__).resolve().parent.parent.parent
HCM_NAME = "envoy.filters.network.http_connection_manager"


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


def direct(body, status=200):
    return {"status": status, "body": {"inline_string": body}}


def tls_listener(name, port, routes, tls, hcm_extra=None, domains=("*",)):
    l = http_listener(name, port, [vhost("default", list(domains), routes)], hcm_extra)
    return with_tls(l, tls)


def chain(tls=None, match=None, routes=None, body=None, name=None, hcm_extra=None):
    """One HCM filter chain: routes, or a single direct_response with `body`."""
    routes = routes or [route("/", direct_response=direct(body))]
    tc = {
        "@type": helpers.HCM_TYPE,
        "stat_prefix": name or "chain",
        "route_config": {"name": "rc", "virtual_hosts": [vhost("default", ["*"], routes)]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": helpers.ROUTER_TYPE}}],
    }
    if hcm_extra:
        tc.update(hcm_extra)
    c = {"filters": [{"name": HCM_NAME, "typed_config": tc}]}
    if name:
        c["name"] = name
    if match:
        c["filter_chain_match"] = match
    if tls:
        c["transport_socket"] = tls
    return c


def multi_listener(name, port, chains, inspector=True):
    l = {"name": name, "address": helpers.sockaddr(port), "filter_chains": chains}
    if inspector:
        l["listener_filters"] = [TLS_INSPECTOR]
    return l


def echo_hdr(echo, name):
    """All values of header `name` in an upstream.py echo (headers: [[k, v], ...])."""
    return [v for k, v in echo["headers"] if k.lower() == name]


def url(port, path="/", host="localhost"):
    return "https://%s:%d%s" % (host, port, path)


# ---- fixtures ---------------------------------------------------------------------------

@pytest.fixture
def tls_proxy(skiff_factory, upstream, pki):
    """TLS termination (no client certificate required) -> echo upstream."""
    lp, ap = free_port(), free_port()
    l = tls_listener("tls", lp, [route("/", "up")], downstream_tls(pki.server))
    s = skiff_factory(bootstrap(ap, [l], [cluster("up", [upstream.port])]), port=lp, admin_port=ap)
    s.upstream = upstream
    return s


@pytest.fixture
def mtls_proxy(skiff_factory, upstream, pki):
    """STRICT mTLS (require_client_certificate, trusted CA = pki.ca) -> echo upstream."""
    lp, ap = free_port(), free_port()
    l = tls_listener("mtls", lp, [route("/", "up")],
                     downstream_tls(pki.server, pki.ca.pem, require_client=True),
                     hcm_extra={"forward_client_cert_details": "SANITIZE_SET",
                                "set_current_client_cert_details": {"uri": True}})
    s = skiff_factory(bootstrap(ap, [l], [cluster("up", [upstream.port])]), port=lp, admin_port=ap)
    s.upstream = upstream
    return s


# ---- 1. downstream TLS termination -------------------------------------------------------

def test_curl_http11_over_tls(tls_proxy, pki):
    before = tls_stats(tls_proxy)
    p = curl_tls(url(tls_proxy.port, "/hello"), ca=pki.ca.pem, args=["--http1.1"])
    code, ver, body = curl_parse(p)
    assert p.returncode == 0, p.stderr
    assert (code, ver) == (200, "1.1")
    echo = json.loads(body)
    assert echo["path"] == "/hello"
    after = tls_stats(tls_proxy)
    assert after["tls_handshake_server_ok"] - before["tls_handshake_server_ok"] == 1
    assert fail_delta(before, after) == {}
    # the upstream sees plain HTTP with no client cert header
    assert echo_hdr(echo, "x-forwarded-client-cert") == []


def test_curl_http2_over_tls_alpn(tls_proxy, pki):
    p = curl_tls(url(tls_proxy.port, "/h2"), ca=pki.ca.pem, args=["--http2"])
    code, ver, body = curl_parse(p)
    assert p.returncode == 0, p.stderr
    assert (code, ver) == (200, "2")
    assert json.loads(body)["path"] == "/h2"


def test_curl_verifies_server_identity(tls_proxy, pki):
    # the server cert carries DNS:localhost and IP:127.0.0.1; both verify
    for u in (url(tls_proxy.port, "/"), "https://127.0.0.1:%d/" % tls_proxy.port):
        code, _, _ = curl_parse(curl_tls(u, ca=pki.ca.pem))
        assert code == 200, u
    # a client that trusts another CA refuses skiff's certificate
    p = curl_tls(url(tls_proxy.port, "/"), ca=pki.other_ca.pem)
    assert p.returncode == 60, p.stderr


@pytest.mark.parametrize("alpn,expect", [("h2", "h2"), ("http/1.1", "http/1.1"),
                                         ("h2,http/1.1", "h2"), ("http/1.1,h2", "h2")])
def test_s_client_alpn(tls_proxy, pki, alpn, expect):
    """Server order wins (h2 before http/1.1)."""
    p = s_client(tls_proxy.port, ["-alpn", alpn, "-CAfile", pki.ca.pem, "-verify_return_error",
                                  "-servername", "localhost"], input=b"")
    assert "Verify return code: 0 (ok)" in p.out, p.out
    assert alpn_of(p.out) == expect, p.out


def test_s_client_no_alpn_speaks_http11(tls_proxy, pki):
    p = s_client(tls_proxy.port, ["-CAfile", pki.ca.pem, "-quiet"],
                 input=b"GET /noalpn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"HTTP/1.1 200" in p.stdout, p.out
    assert b'"/noalpn"' in p.stdout


@pytest.mark.parametrize("ver,curl_args,s_args", [
    ("TLSv1.2", ["--tls-max", "1.2"], ["-tls1_2"]),
    ("TLSv1.3", ["--tlsv1.3"], ["-tls1_3"]),
])
def test_tls_versions(tls_proxy, pki, ver, curl_args, s_args):
    before = tls_proxy.stats()
    for http in ("--http1.1", "--http2"):
        p = curl_tls(url(tls_proxy.port, "/v"), ca=pki.ca.pem, args=curl_args + [http, "-v"])
        code, hv, _ = curl_parse(p)
        assert code == 200, p.stderr
        assert hv == ("2" if http == "--http2" else "1.1")
        assert ("SSL connection using %s" % ver) in p.stderr.decode(), p.stderr
    p = s_client(tls_proxy.port, s_args + ["-CAfile", pki.ca.pem], input=b"")
    assert re.search(r"Protocol\s*:\s*%s" % re.escape(ver), p.out) or ("New, %s" % ver) in p.out, p.out
    after = tls_proxy.stats()
    k = "tls_handshake_version." + ver
    assert after.get(k, 0) - before.get(k, 0) == 3


def test_tls11_refused(tls_proxy, pki):
    # TLS 1.2 is the minimum; OpenSSL's default security level may refuse to
    # even offer TLS 1.1 on the client side: either way no handshake completes
    before = tls_stats(tls_proxy)
    p = s_client(tls_proxy.port, ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], input=b"")
    assert "Cipher is (NONE)" in p.out or p.returncode != 0, p.out
    after = tls_stats(tls_proxy)
    assert after["tls_handshake_server_ok"] == before["tls_handshake_server_ok"]
    st, _ = helpers.admin_get(tls_proxy.admin_port, "/ready")
    assert st == 200


def test_keepalive_many_requests_one_tls_connection(tls_proxy, pki):
    before = tls_stats(tls_proxy)
    ctx = ssl_context(pki.ca.pem)
    with TlsConn(tls_proxy.port, ctx) as c:
        for i in range(50):
            r = c.request("POST", "/ka/%d" % i, body=b"x" * (i * 997))
            assert r.status == 200
            assert r.json()["path"] == "/ka/%d" % i
    after = tls_stats(tls_proxy)
    assert after["tls_handshake_server_ok"] - before["tls_handshake_server_ok"] == 1


def test_large_bodies_over_tls(tls_proxy, pki):
    """Big request and response bodies cross many TLS records both ways."""
    ctx = ssl_context(pki.ca.pem)
    with TlsConn(tls_proxy.port, ctx, timeout=20) as c:
        r = c.request("GET", "/big?size=%d" % (3 * 1024 * 1024 + 17))
        assert r.status == 200 and len(r.body) == 3 * 1024 * 1024 + 17
        assert hashlib.sha256(r.body).hexdigest() == r.header("x-body-sha256")
        body = bytes(range(256)) * 8192
        r = c.request("POST", "/upload", body=body)
        assert r.status == 200
        assert r.json()["body_len"] == len(body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


# ---- 2. client certificates (STRICT mTLS) ------------------------------------------------

def client_hello(sni="localhost", alpn=("h2", "http/1.1")):
    """The bytes of a real ClientHello (python ssl over memory BIOs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    data = out.read()
    assert data[:1] == b"\x16" and len(data) > 100
    return data


def mtls_get(port, ca, cert, path="/", args=()):
    return curl_tls(url(port, path), ca=ca, cert=cert, args=list(args))


def wait_fail(skiff, before, expect, timeout=5):
    """Wait until the failure counters grew by exactly `expect` ({reason: n});
    returns the final delta (the caller asserts)."""
    wait_for(lambda: fail_delta(before, tls_stats(skiff)) == expect, timeout=timeout)
    return fail_delta(before, tls_stats(skiff))


def test_mtls_valid_client_cert(mtls_proxy, pki):
    before = tls_stats(mtls_proxy)
    for http in ("--http1.1", "--http2"):
        p = mtls_get(mtls_proxy.port, pki.ca.pem, pki.client, "/ok", [http])
        code, ver, body = curl_parse(p)
        assert code == 200, p.stderr
        assert ver == ("2" if http == "--http2" else "1.1")
        xfcc = echo_hdr(json.loads(body), "x-forwarded-client-cert")
        assert len(xfcc) == 1 and ("URI=" + SPIFFE % "client") in xfcc[0]
    after = tls_stats(mtls_proxy)
    assert after["tls_handshake_server_ok"] - before["tls_handshake_server_ok"] == 2
    assert fail_delta(before, after) == {}


@pytest.mark.parametrize("who,reason", [
    (None, "no_cert"),
    ("client_other", "unknown_ca"),
    ("client_expired", "expired"),
    ("client_notyet", "bad_cert"),
])
@pytest.mark.parametrize("tls_max", ["1.2", "1.3"])
def test_mtls_rejected_client(mtls_proxy, pki, who, reason, tls_max):
    before = tls_stats(mtls_proxy)
    cert = getattr(pki, who) if who else None
    p = mtls_get(mtls_proxy.port, pki.ca.pem, cert, "/nope", ["--tls-max", tls_max])
    code, _, body = curl_parse(p)
    assert p.returncode != 0 and code == 0, (p.returncode, code, body)
    assert wait_fail(mtls_proxy, before, {reason: 1}) == {reason: 1}
    after = tls_stats(mtls_proxy)
    assert after["tls_handshake_server_ok"] == before["tls_handshake_server_ok"]
    assert mtls_proxy.upstream.traffic() == []
    # skiff is fine: the next valid client gets through
    code, _, _ = curl_parse(mtls_get(mtls_proxy.port, pki.ca.pem, pki.client))
    assert code == 200


def test_mtls_rejection_logged_with_reason(mtls_proxy, pki):
    curl_parse(mtls_get(mtls_proxy.port, pki.ca.pem, pki.client_expired))
    assert wait_for(lambda: "certificate expired" in mtls_proxy.log(), timeout=5), mtls_proxy.log()


def test_plaintext_to_tls_port(mtls_proxy, pki):
    before = tls_stats(mtls_proxy)
    with RawConn(mtls_proxy.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = c.read_all_until_close(timeout=5)
    assert not data.startswith(b"HTTP/"), data
    assert wait_fail(mtls_proxy, before, {"not_tls": 1}) == {"not_tls": 1}
    # curl http:// against the TLS port fails too
    p = helpers.curl("http://127.0.0.1:%d/" % mtls_proxy.port)
    assert p.returncode != 0
    assert wait_fail(mtls_proxy, before, {"not_tls": 2}) == {"not_tls": 2}
    assert mtls_proxy.upstream.traffic() == []


@pytest.mark.parametrize("garbage", [
    bytes(range(256)) * 4,
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",            # handshake record, bogus body
    b"\x16\x03\x01\xff\xff" + b"\x00" * 2000,              # record length beyond the data
    b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + b"\x00" * 37,  # SSLv2 ClientHello
])
def test_garbage_bytes_to_tls_port(mtls_proxy, pki, garbage):
    before = tls_stats(mtls_proxy)
    with RawConn(mtls_proxy.port) as c:
        try:
            c.send(garbage)
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        c.read_all_until_close(timeout=5)
    wait_for(lambda: fail_delta(before, tls_stats(mtls_proxy)), timeout=3)
    d = fail_delta(before, tls_stats(mtls_proxy))
    assert sum(d.values()) == 1 and set(d) <= {"not_tls", "other"}, d
    assert tls_stats(mtls_proxy)["tls_handshake_server_ok"] == before["tls_handshake_server_ok"]
    code, _, _ = curl_parse(mtls_get(mtls_proxy.port, pki.ca.pem, pki.client))
    assert code == 200


def test_truncated_client_hello(mtls_proxy, pki):
    """Half a ClientHello, then FIN: skiff closes, counts one failure (other:
    connection closed), and keeps serving."""
    ch = client_hello()
    before = tls_stats(mtls_proxy)
    for _ in range(5):
        with RawConn(mtls_proxy.port) as c:
            c.send(ch[:len(ch) // 2])
            c.sock.shutdown(socket.SHUT_WR)
            assert c.read_all_until_close(timeout=5) == b""
    assert wait_fail(mtls_proxy, before, {"other": 5}) == {"other": 5}
    # abrupt close (RST) in the middle of the ClientHello
    with RawConn(mtls_proxy.port) as c:
        c.send(ch[:40])
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert wait_fail(mtls_proxy, before, {"other": 6}) == {"other": 6}
    assert wait_for(lambda: mtls_proxy.stat("downstream_cx_active") == 0, timeout=5)
    code, _, _ = curl_parse(mtls_get(mtls_proxy.port, pki.ca.pem, pki.client))
    assert code == 200
    assert mtls_proxy.proc.poll() is None


def test_client_cert_on_optional_listener(tls_proxy, pki):
    """Without require_client_certificate and without a trusted CA, a client
    certificate is neither requested nor checked."""
    code, _, body = curl_parse(mtls_get(tls_proxy.port, pki.ca.pem, pki.client_other))
    assert code == 200
    assert echo_hdr(json.loads(body), "x-forwarded-client-cert") == []


# ---- 3. upstream TLS origination ----------------------------------------------------------

SERVER_SAN = [("URI", SPIFFE % "server")]


@pytest.fixture
def tls_backend(skiff_factory, upstream, pki):
    """A second skiff terminating TLS (server cert = pki.server, optional client
    certs from pki.ca) in front of the echo upstream: the HTTPS origin."""

    def make(cert=None, require_client=False):
        lp, ap = free_port(), free_port()
        l = tls_listener("backend", lp, [route("/", "up")],
                         downstream_tls(cert or pki.server, pki.ca.pem if require_client else None,
                                        require_client=require_client),
                         hcm_extra={"forward_client_cert_details": "SANITIZE_SET",
                                    "set_current_client_cert_details": {"uri": True}})
        b = skiff_factory(bootstrap(ap, [l], [cluster("up", [upstream.port])]), port=lp,
                          admin_port=ap)
        b.upstream = upstream
        return b

    return make


def origin_proxy(skiff_factory, backend_port, tls, extra=None):
    lp, ap = free_port(), free_port()
    c = cluster("origin", [backend_port], transport_socket=tls, **(extra or {}))
    l = http_listener("front", lp, [vhost("default", ["*"], [route("/", "origin")])])
    return skiff_factory(bootstrap(ap, [l], [c]), port=lp, admin_port=ap)


def test_upstream_tls_to_openssl_s_server(skiff_factory, pki, tmp_path):
    """openssl s_server -www as the origin. Only the response head is checked
    here: the end of its EOF-delimited body is test_upstream_tls_eof_delimited_response."""
    srv = SServer(tmp_path, pki.server)
    try:
        front = origin_proxy(skiff_factory, srv.port,
                             upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost"))
        before = tls_stats(front)
        with RawConn(front.port, timeout=10) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.sock.recv(65536)
                assert d, head
                head += d
        assert head.startswith(b"HTTP/1.1 200"), head
        after = tls_stats(front)
        assert after["tls_handshake_client_ok"] - before["tls_handshake_client_ok"] == 1
        assert fail_delta(before, after) == {}
    finally:
        srv.stop()


def test_upstream_tls_san_match(skiff_factory, tls_backend, pki):
    back = tls_backend()
    front = origin_proxy(skiff_factory, back.port,
                         upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost"))
    before_f, before_b = tls_stats(front), tls_stats(back)
    for http in ("GET", "POST"):
        r = helpers.get(front.port, "/through", method=http, body=b"abc" if http == "POST" else b"")
        assert r.status == 200, r
        assert r.json()["path"] == "/through"
    assert tls_stats(front)["tls_handshake_client_ok"] > before_f["tls_handshake_client_ok"]
    assert tls_stats(back)["tls_handshake_server_ok"] > before_b["tls_handshake_server_ok"]
    assert fail_delta(before_f, tls_stats(front)) == {}
    # the origin saw SNI localhost; check with s_client that skiff's SAN rule is what matters
    assert back.upstream.traffic()[-1]["path"] == "/through"


@pytest.mark.parametrize("san_type,value", [
    ("URI", SPIFFE % "intruder"),
    ("DNS", "not-localhost.example"),
    ("IP_ADDRESS", "10.9.9.9"),
])
def test_upstream_tls_san_mismatch(skiff_factory, tls_backend, pki, san_type, value):
    back = tls_backend()
    front = origin_proxy(skiff_factory, back.port,
                         upstream_tls(pki.ca.pem, sans=[(san_type, value)], sni="localhost"))
    before = tls_stats(front)
    r = helpers.get(front.port, "/mismatch")
    assert r.status == 503, r
    assert b"TLS" in r.body and b"SAN" in r.body, r.body
    assert "UF" in (r.header("x-skiff-flags", "") or "UF"), r
    assert fail_delta(before, tls_stats(front)) == {"san_mismatch": 1}
    assert back.upstream.traffic() == []


def test_upstream_tls_server_with_wrong_san(skiff_factory, tls_backend, pki):
    """The origin presents a valid (same CA) cert for another identity."""
    back = tls_backend(cert=pki.server_wrongsan)
    front = origin_proxy(skiff_factory, back.port,
                         upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost"))
    before = tls_stats(front)
    r = helpers.get(front.port, "/wrongsan")
    assert r.status == 503, r
    assert b"SAN mismatch" in r.body, r.body
    assert fail_delta(before, tls_stats(front)) == {"san_mismatch": 1}


def test_upstream_tls_wrong_ca(skiff_factory, tls_backend, pki):
    back = tls_backend(cert=pki.server_other)
    front = origin_proxy(skiff_factory, back.port,
                         upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost"))
    before = tls_stats(front)
    r = helpers.get(front.port, "/wrongca")
    assert r.status == 503, r
    assert b"TLS" in r.body and b"unknown CA" in r.body, r.body
    assert fail_delta(before, tls_stats(front)) == {"unknown_ca": 1}
    assert back.upstream.traffic() == []


def test_upstream_tls_to_plaintext_origin(skiff_factory, upstreams, pki):
    # an HTTP/1.1 origin waits for a request line that never comes: the
    # handshake runs into connect_timeout
    http = upstreams("plain_http")
    front = origin_proxy(skiff_factory, http.port, upstream_tls(pki.ca.pem, sni="localhost"))
    r = helpers.get(front.port, "/plain")
    assert r.status == 503 and r.header("x-skiff-flags") == "UF", r
    assert http.traffic() == []
    # a TCP echo origin answers the ClientHello with the ClientHello: not TLS
    echo = upstreams("plain_echo", mode="tcpecho")
    front2 = origin_proxy(skiff_factory, echo.port, upstream_tls(pki.ca.pem, sni="localhost"))
    before = tls_stats(front2)
    r = helpers.get(front2.port, "/plain")
    assert r.status == 503 and r.header("x-skiff-flags") == "UF", r
    assert b"TLS handshake failed" in r.body, r.body
    assert sum(fail_delta(before, tls_stats(front2)).values()) == 1


TLS12_ONLY = {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_2"}


def test_upstream_mtls_client_cert(skiff_factory, tls_backend, pki):
    """Origin requires a client cert. TLS 1.2: without one the handshake fails
    (503 UF); with one 200 and the origin's XFCC carries our identity."""
    back = tls_backend(require_client=True)
    t = upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost")
    t["typed_config"]["common_tls_context"]["tls_params"] = TLS12_ONLY
    bad = origin_proxy(skiff_factory, back.port, t)
    before_b = tls_stats(back)
    r = helpers.get(bad.port, "/nocert")
    assert r.status == 503 and r.header("x-skiff-flags") == "UF", r
    assert b"TLS handshake failed" in r.body, r.body
    assert wait_fail(back, before_b, {"no_cert": 1}) == {"no_cert": 1}
    good = origin_proxy(skiff_factory, back.port,
                        upstream_tls(pki.ca.pem, cert=pki.client, sans=SERVER_SAN, sni="localhost"))
    r = helpers.get(good.port, "/withcert")
    assert r.status == 200, r
    xfcc = echo_hdr(r.json(), "x-forwarded-client-cert")
    assert xfcc == ["By=%s;Hash=%s;URI=%s" % (SPIFFE % "server", cert_sha256(pki.client.cert),
                                              SPIFFE % "client")], xfcc


@pytest.mark.xfail(strict=True, reason=(
    "BUG: upstream TLS 1.3 origin rejecting our (missing) client certificate: the "
    "handshake completes on our side, the origin's alert arrives on the first read, "
    "and upconn.c on_readable() reports strerror(errno) with errno 0, so the local "
    "reply body reads 'upstream connection closed before the response was complete: "
    "Success' instead of the TLS reason (sk_tls_why: e.g. 'no client certificate' / "
    "'certificate required')"))
def test_upstream_tls13_client_cert_required_reason(skiff_factory, tls_backend, pki):
    back = tls_backend(require_client=True)
    bad = origin_proxy(skiff_factory, back.port,
                       upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost"))
    r = helpers.get(bad.port, "/nocert")
    assert r.status in (502, 503), r
    assert b"Success" not in r.body, r.body
    assert b"cert" in r.body.lower(), r.body


def cert_sha256(path):
    der = subprocess.run(["openssl", "x509", "-in", str(path), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    return hashlib.sha256(der).hexdigest()


def test_upstream_session_resumption(skiff_factory, tls_backend, pki):
    back = tls_backend()
    front = origin_proxy(skiff_factory, back.port,
                         upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost"),
                         extra={"typed_extension_protocol_options": max_requests_per_connection(1)})
    before = tls_stats(front)
    n = 8
    for i in range(n):
        r = helpers.get(front.port, "/resume/%d" % i)
        assert r.status == 200, r
    after = tls_stats(front)
    handshakes = after["tls_handshake_client_ok"] - before["tls_handshake_client_ok"]
    reused = after["tls_session_reused"] - before["tls_session_reused"]
    assert handshakes == n, "max_requests_per_connection: 1 -> one connection per request"
    # the first handshake is full; the rest can resume (with 2 workers, each
    # worker may need its own first ticket)
    assert reused >= n - 3, (handshakes, reused)
    # the origin agrees
    b = tls_stats(back)
    assert b["tls_session_reused"] >= reused


def test_upstream_resumed_session_rechecks_san(skiff_factory, tls_backend, pki):
    """Two clusters with different SAN rules share nothing: a session cached by
    the matching cluster must not let the other one skip its SAN check."""
    back = tls_backend()
    lp, ap = free_port(), free_port()
    mrpc = {"typed_extension_protocol_options": max_requests_per_connection(1)}
    good = cluster("good", [back.port], transport_socket=upstream_tls(
        pki.ca.pem, sans=SERVER_SAN, sni="localhost"), **mrpc)
    bad = cluster("bad", [back.port], transport_socket=upstream_tls(
        pki.ca.pem, sans=[("URI", SPIFFE % "intruder")], sni="localhost"), **mrpc)
    l = http_listener("front", lp, [vhost("default", ["*"], [route("/good", "good"),
                                                            route("/bad", "bad")])])
    front = skiff_factory(bootstrap(ap, [l], [good, bad]), port=lp, admin_port=ap)
    for _ in range(3):
        assert helpers.get(front.port, "/good").status == 200
    before = tls_stats(front)
    for _ in range(3):
        assert helpers.get(front.port, "/bad").status == 503
    assert fail_delta(before, tls_stats(front)) == {"san_mismatch": 3}


STALL_BUG = (
    "BUG: net/transport.c sk_tp_read() stops once it has read `want` (16384) bytes "
    "even when OpenSSL still holds decrypted bytes (SSL_pending > 0): the loop "
    "`continue`s but ask == 0 returns; nothing more arrives on the socket, so no "
    "read event fires and the last bytes of a message stay inside the SSL object. "
    "Repro: a TLS origin writes the response head in one record, then 2 x 16384 "
    "body bytes (Content-Length 32768): skiff forwards 32768 - len(head) bytes and "
    "stalls until the upstream sends more (or times out)")


@pytest.mark.parametrize("chunk,count", [
    (20000, 1), (100000, 1), (16385, 3),                       # happen to work
    pytest.param(16384, 2, marks=pytest.mark.xfail(strict=True, reason=STALL_BUG)),
    pytest.param(5000, 10, marks=pytest.mark.xfail(strict=True, reason=STALL_BUG)),
    pytest.param(16383, 3, marks=pytest.mark.xfail(strict=True, reason=STALL_BUG)),
])
def test_upstream_tls_record_boundaries(skiff_factory, pki, chunk, count):
    origin = TlsOrigin(pki.server)
    try:
        front = origin_proxy(skiff_factory, origin.port,
                             upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost"))
        r = helpers.get(front.port, "/%d/%d" % (chunk, count), timeout=5)
        assert r.status == 200
        assert len(r.body) == chunk * count
    finally:
        origin.stop()


@pytest.mark.xfail(strict=True, reason=(
    "BUG: a TLS upstream response delimited by the end of the connection never "
    "completes when the origin sends close_notify and waits for ours (bidirectional "
    "shutdown, e.g. `openssl s_server -www`): sk_tp_read() reads the last data and "
    "the close_notify in one call, returns the data and defers the EOF 'to the next "
    "call', but no further socket event comes (the peer is waiting), so the "
    "downstream response hangs. Repro: openssl s_server -www behind a cluster with "
    "UpstreamTlsContext; curl through skiff gets the page but never the end"))
def test_upstream_tls_eof_delimited_response(skiff_factory, pki):
    origin = TlsOrigin(pki.server)
    try:
        front = origin_proxy(skiff_factory, origin.port,
                             upstream_tls(pki.ca.pem, sans=SERVER_SAN, sni="localhost"))
        r = helpers.get(front.port, "/4500/1?close_notify=1", timeout=5)
        assert r.status == 200
        assert len(r.body) == 4500
    finally:
        origin.stop()


@pytest.mark.parametrize("size", [
    65536 + 1000, 3 * 16384 + 5,
    pytest.param(2 * 16384, marks=pytest.mark.xfail(strict=True, reason=STALL_BUG.replace(
        "a TLS origin writes the response head", "a downstream TLS client writes the request head"))),
])
def test_downstream_tls_upload_record_boundaries(tls_proxy, pki, size):
    """Request head in one TLS record, the body in 16384-byte writes."""
    ctx = ssl_context(pki.ca.pem)
    with TlsConn(tls_proxy.port, ctx, timeout=5) as c:
        c.cork(True)
        c.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        for i in range(0, size, 16384):
            c.send(body[i:i + 16384])
        c.cork(False)
        r = c.conn.read_response()
        assert r.status == 200
        assert r.json()["body_len"] == size
