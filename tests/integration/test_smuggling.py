"""Request smuggling and malformed requests: each is rejected with 400 (431
for oversize heads), the connection is closed, and the upstream never sees a
request."""
import time

import pytest

from helpers import RawConn

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"

CASES = {
    "cl_then_te": b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_then_cl": b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
    "te_cl_same_value": b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_differing_cl": b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl_list": b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "cl_plus_sign": b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
    "cl_negative": b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    "cl_hex": b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello",
    "obs_fold": b"GET /a HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
    "obs_fold_tab": b"GET /a HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n\tb\r\n\r\n",
    "space_before_colon": b"GET /a HTTP/1.1\r\nHost: t\r\nX-Foo : bar\r\n\r\n",
    "space_before_colon_te": b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
    "nul_in_value": b"GET /a HTTP/1.1\r\nHost: t\r\nX-Foo: a\x00b\r\n\r\n",
    "nul_in_name": b"GET /a HTTP/1.1\r\nHost: t\r\nX-F\x00oo: ab\r\n\r\n",
    "cr_in_value": b"GET /a HTTP/1.1\r\nHost: t\r\nX-Foo: a\rb\r\n\r\n",
    "lf_in_value": b"GET /a HTTP/1.1\r\nHost: t\r\nX-Foo: a\nb\r\n\r\n",
    "cr_in_name": b"GET /a HTTP/1.1\r\nHost: t\r\nX-F\roo: ab\r\n\r\n",
    "chunk_size_0x": b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_negative": b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n",
    "chunk_size_huge": b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk_missing_crlf": b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "http10_with_te": b"POST /a HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_not_chunked_last": b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_unknown": b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}

HEAD_CASES = {"cl_then_te", "te_then_cl", "te_cl_same_value", "duplicate_differing_cl", "cl_list",
              "cl_plus_sign", "cl_negative", "cl_hex", "obs_fold", "obs_fold_tab", "space_before_colon",
              "space_before_colon_te", "nul_in_value", "nul_in_name", "cr_in_value", "lf_in_value",
              "cr_in_name", "http10_with_te", "te_not_chunked_last", "te_unknown"}

# cases counted by downstream_rq_rejected_smuggling (framing ambiguity)
COUNTED = {"cl_then_te", "te_then_cl", "duplicate_differing_cl", "cl_list"}


def rejected(proxy, data, expect_status=400):
    with RawConn(proxy.port, timeout=5) as c:
        c.send(data)
        r = c.read_response()
        assert r.status == expect_status, r
        closed = c.is_closed(5)
    return r, closed


@pytest.mark.parametrize("name", sorted(CASES))
def test_smuggling_rejected(proxy, name):
    before = proxy.stats()
    r, closed = rejected(proxy, CASES[name] + SMUGGLED)
    assert closed, "connection must be closed after a rejected request"
    if name in HEAD_CASES:
        assert r.header("x-skiff-flags") == "DPE", r
        assert r.body, "the reply says why"
    time.sleep(0.3)
    seen = proxy.upstream.requests()
    if name in HEAD_CASES:
        assert seen == [], seen
    else:
        # body framing errors: the head may have been forwarded, but never the smuggled request
        assert all(x["path"] != "/smuggled" for x in seen), seen
    after = proxy.stats()
    assert after["downstream_rq_4xx"] >= before["downstream_rq_4xx"] + 1
    if name in COUNTED:
        assert after["downstream_rq_rejected_smuggling"] >= before["downstream_rq_rejected_smuggling"] + 1


def test_body_framing_errors_never_reach_upstream(proxy):
    """Bad chunk framing sent in one write together with the head: the
    upstream should not even see the head."""
    for name in ("chunk_size_0x", "chunk_size_negative", "chunk_size_huge", "chunk_missing_crlf"):
        r, closed = rejected(proxy, CASES[name])
        assert closed, name
    time.sleep(0.3)
    assert proxy.upstream.requests() == []


def test_oversize_headers_431(proxy):
    data = b"GET /a HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    with RawConn(proxy.port, timeout=5) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.read_response()
        assert r.status == 431
        assert r.header("x-skiff-flags") == "DPE"
        assert c.is_closed(5)
    assert proxy.upstream.requests() == []


def test_too_many_headers(proxy):
    hs = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    r, closed = rejected(proxy, b"GET /a HTTP/1.1\r\nHost: t\r\n" + hs + b"\r\n", expect_status=431)
    assert closed
    assert proxy.upstream.requests() == []


def test_valid_request_after_rejections_still_served(proxy):
    rejected(proxy, CASES["cl_then_te"])
    with RawConn(proxy.port) as c:
        assert c.request("GET", "/ok").status == 200


def test_smuggling_after_valid_request_on_same_connection(proxy):
    """First request is fine, the second one on the same connection is
    ambiguous: first answered 200, second 400 and the connection closes."""
    with RawConn(proxy.port, timeout=5) as c:
        c.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n" + CASES["cl_then_te"] + SMUGGLED)
        r1 = c.read_response()
        assert r1.status == 200
        r2 = c.read_response()
        assert r2.status == 400
        assert c.is_closed(5)
    time.sleep(0.3)
    assert [x["path"] for x in proxy.upstream.requests()] == ["/first"]
