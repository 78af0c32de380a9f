"""Idle HTTP/2 connections: skiff deletes the nghttp2 session of a connection
that has had no stream for a while (hibernation) and rebuilds it from the
saved connection state on the next bytes. These tests check that nothing a
client can observe changes across that: HPACK state, both flow-control
windows, old stream ids, drain; and that an idle connection is small."""
import hashlib
import os
import socket
import struct
import time

import h2.settings
import pytest

from test_h2 import CHECK_RSS, PREFACE, H2Client, body, rss_kib, status

HIB_WAIT = 0.4  # skiff hibernates after 0.05 s without streams
TABLE = h2.settings.SettingCodes.HEADER_TABLE_SIZE


def pump_for(cl, seconds):
    """Process whatever the server sends for `seconds` (SETTINGS, ACKs)."""
    deadline = time.monotonic() + seconds
    cl.sock.settimeout(0.05)
    try:
        while time.monotonic() < deadline:
            try:
                cl.step()
            except socket.timeout:
                pass
    finally:
        cl.sock.settimeout(10.0)


def big_window_client(port, **kw):
    """A client with a 1 GiB connection window, as curl, h2load, grpc and
    browsers open theirs: its window never drops below the initial 65535."""
    cl = H2Client(port, **kw)
    cl.c.increment_flow_control_window(1 << 30)
    cl.flush()
    return cl


def frame(t, f, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, f]) + struct.pack(">I", sid) + payload


def test_hpack_state_survives_hibernation(make_proxy, upstream):
    """python-h2 indexes request headers: skiff must empty the client's table
    (SETTINGS_HEADER_TABLE_SIZE 0) before dropping its decoder, and announce
    the table again afterwards; requests keep decoding right every cycle."""
    s = make_proxy([upstream.port])
    cl = big_window_client(s.port)
    zeroed = 0
    try:
        for i in range(4):
            r = cl.get("/hp%d" % i, headers=[("x-custom", "value-%d" % i), ("x-same", "same")])
            assert status(r) == 200
            pump_for(cl, HIB_WAIT)
            # a request encoded while the table was announced non-empty is
            # followed by SETTINGS_HEADER_TABLE_SIZE 0 once idle
            zeroed += cl.c.remote_settings[TABLE] == 0
        assert zeroed >= 2, "the client's HPACK table was never emptied before hibernation"
        r = cl.get("/last", headers=[("x-same", "same")])
        assert status(r) == 200
        assert cl.c.remote_settings[TABLE] == 4096  # announced again after waking up
        assert cl.goaway is None
    finally:
        cl.close()
    seen = [q for q in upstream.requests() if q["path"].startswith("/hp")]
    assert len(seen) == 4
    for i, q in enumerate(seen):
        hs = {k.lower(): v for k, v in q["headers"]}
        assert hs["x-custom"] == "value-%d" % i and hs["x-same"] == "same"


def test_small_send_window_survives_hibernation(make_proxy, upstream):
    """A client that has not returned the connection window (60 KB received,
    not acknowledged) hibernates too: the new session is given the old send
    window (skiff "sends" the owed bytes on the replayed stream and drops
    them). With 5535 bytes of window left, skiff sends exactly that much of
    the next response and waits; returning the window lets the rest through."""
    s = make_proxy([upstream.port])
    cl = H2Client(s.port, auto_ack=False)
    try:
        r = cl.get("/big?size=%d" % 60000)
        assert status(r) == 200 and len(body(r)) == 60000
        pump_for(cl, HIB_WAIT)
        # the HPACK step that precedes hibernation happened: the small
        # window no longer keeps the session
        assert cl.c.remote_settings[TABLE] == 0
        sid = cl.request("/big?size=%d" % 20000)
        pump_for(cl, 0.5)
        got = sum(len(d) for d in cl.streams[sid]["data"])
        assert got == 65535 - 60000, "the send window was not carried over"
        assert not cl.streams[sid]["ended"]
        # give the window back (python-h2 alone would wait for a zero window,
        # which nghttp2 needs > 0 to send a bare END_STREAM: a client quirk)
        cl.c.increment_flow_control_window(60000)
        cl.flush()
        cl.auto_ack = True
        for d in cl.streams[sid]["data"]:
            cl.c.acknowledge_received_data(len(d), sid)
        cl.flush()
        r = cl.wait(sid)
        assert status(r) == 200
        got = body(r)
        assert len(got) == 20000
        assert hashlib.sha256(got).hexdigest() == dict(r["headers"])["x-body-sha256"]
        for n in (400000, 100000):
            r = cl.get("/big?size=%d" % n)
            assert status(r) == 200
            got = body(r)
            assert len(got) == n
            assert hashlib.sha256(got).hexdigest() == dict(r["headers"])["x-body-sha256"]
            pump_for(cl, HIB_WAIT)
        assert cl.goaway is None
    finally:
        cl.close()


def test_window_owed_beyond_stream_window_keeps_session(make_proxy, upstream):
    """The owed window is rebuilt on one stream: a client whose initial stream
    window is smaller than what it owes keeps its session, and nothing
    changes for it."""
    s = make_proxy([upstream.port])
    cl = H2Client(s.port, auto_ack=False,
                  settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16384})
    try:
        for _ in range(3):  # 3 x 15000 bytes owed on the connection, 16 KB per stream
            sid = cl.request("/big?size=%d" % 15000)
            r = cl.wait(sid)
            assert status(r) == 200 and len(body(r)) == 15000
        pump_for(cl, HIB_WAIT)
        assert cl.c.remote_settings[TABLE] == 4096  # kept: not even the HPACK step
        cl.c.increment_flow_control_window(45000)
        cl.flush()
        cl.auto_ack = True
        r = cl.get("/big?size=%d" % 100000)
        assert status(r) == 200 and len(body(r)) == 100000
        assert cl.goaway is None
    finally:
        cl.close()


def test_big_responses_after_hibernation(make_proxy, upstream):
    s = make_proxy([upstream.port])
    cl = big_window_client(s.port)
    try:
        for n in (400000, 100000):
            pump_for(cl, HIB_WAIT)
            r = cl.get("/big?size=%d" % n)
            assert status(r) == 200
            got = body(r)
            assert len(got) == n
            assert hashlib.sha256(got).hexdigest() == dict(r["headers"])["x-body-sha256"]
        assert cl.goaway is None
    finally:
        cl.close()


def test_upload_after_hibernation(make_proxy, upstream):
    s = make_proxy([upstream.port])
    cl = big_window_client(s.port)
    try:
        data = os.urandom(300 * 1024)
        for _ in range(2):
            pump_for(cl, HIB_WAIT)
            r = cl.get("/up?echo_body=1", method="POST", body=data)
            assert status(r) == 200
            assert body(r) == data
        assert cl.goaway is None
    finally:
        cl.close()


def test_frames_on_old_streams_after_hibernation(make_proxy, upstream):
    """WINDOW_UPDATE / RST_STREAM / PRIORITY on a stream closed before the
    hibernation are ignored as before (they are not 'idle streams' to the new
    session), and HEADERS reusing an old stream id are ignored as before."""
    s = make_proxy([upstream.port])
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    try:
        get = bytes([0x82, 0x86, 0x84, 0x01, 0x04]) + b"test"   # GET http / :authority test
        sock.sendall(PREFACE + frame(4, 0, 0) + frame(8, 0, 0, struct.pack(">I", 1 << 30))
                     + frame(1, 5, 1, get) + frame(1, 5, 3, get))
        buf = b""
        ended = set()
        deadline = time.monotonic() + 10
        while ended != {1, 3}:
            assert time.monotonic() < deadline
            d = sock.recv(65536)
            assert d
            buf += d
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                ln, t, f = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big")
                if t == 4 and not f & 1:
                    sock.sendall(frame(4, 1, 0))
                if t in (0, 1) and f & 1:
                    ended.add(sid)
                assert t != 7, "GOAWAY"
                buf = buf[9 + ln:]
        time.sleep(HIB_WAIT)
        sock.sendall(frame(8, 0, 1, struct.pack(">I", 100)) + frame(3, 0, 3, struct.pack(">I", 8))
                     + frame(2, 0, 1, struct.pack(">IB", 0, 15)) + frame(1, 5, 5, get))
        deadline = time.monotonic() + 10
        while 5 not in ended:
            assert time.monotonic() < deadline
            d = sock.recv(65536)
            assert d, "connection closed after frames on old streams"
            buf += d
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                ln, t, f = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big")
                if t == 4 and not f & 1:
                    sock.sendall(frame(4, 1, 0))
                if t in (0, 1) and f & 1:
                    ended.add(sid)
                assert t != 7, "GOAWAY"
                buf = buf[9 + ln:]
        time.sleep(HIB_WAIT)
        sock.sendall(frame(1, 5, 3, get) + frame(1, 5, 7, get))   # 3 again: ignored
        deadline = time.monotonic() + 10
        ended.clear()
        while 7 not in ended:
            assert time.monotonic() < deadline
            d = sock.recv(65536)
            assert d, "connection closed"
            buf += d
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                ln, t, f = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big")
                assert t != 7, "GOAWAY"
                assert sid != 3 or t == 8, "an old stream id was served again"
                if t in (0, 1) and f & 1:
                    ended.add(sid)
                buf = buf[9 + ln:]
    finally:
        sock.close()


def test_drain_and_idle_timeout_of_hibernated_connections(make_proxy, upstream):
    s = make_proxy([upstream.port],
                   hcm_extra={"common_http_protocol_options": {"idle_timeout": "1.5s"}})
    a, b = big_window_client(s.port, timeout=5), big_window_client(s.port, timeout=5)
    try:
        assert status(a.get("/a")) == 200
        assert status(b.get("/b")) == 200
        pump_for(a, HIB_WAIT)
        assert status(b.get("/b2")) == 200  # b wakes up for a request
        # idle timeout after hibernation: GOAWAY(NO_ERROR), then close
        t0 = time.monotonic()
        with pytest.raises(EOFError):
            while True:
                a.step()
        assert a.goaway is not None and a.goaway.error_code == 0
        assert time.monotonic() - t0 < 4
    finally:
        a.close()
        b.close()
    assert s.stat("downstream_cx_idle_timeout") >= 1


def test_sigterm_drains_hibernated_connection(make_proxy, upstream):
    s = make_proxy([upstream.port])
    cl = big_window_client(s.port, timeout=5)
    try:
        assert status(cl.get("/x")) == 200
        pump_for(cl, HIB_WAIT)
        s.proc.terminate()
        with pytest.raises(EOFError):
            while True:
                cl.step()
        assert cl.goaway is not None and cl.goaway.error_code == 0
        assert s.proc.wait(timeout=10) == 0
    finally:
        cl.close()


@pytest.mark.skipif(not CHECK_RSS, reason="RSS bounds mean nothing under ASan")
@pytest.mark.parametrize("big_window", [True, False], ids=["1GiB-window", "default-window"])
def test_idle_h2_connections_are_small(make_proxy, upstream, big_window):
    """500 idle h2c connections, each after one request (headers not indexed). An nghttp2 session is ~15 KB
    resident and each new connection holds one for its first 50 ms; freed
    sessions between live connections stay in malloc's heap until the worker's
    malloc_trim (sk_worker_released) returns those pages. The bound is the
    issue's target, 4 KB per idle h2 connection (without the trim: ~5-6 KB)."""
    s = make_proxy([upstream.port])
    get = bytes([0x82, 0x86, 0x84, 0x01, 0x04]) + b"test"
    # a 1 GiB connection window like curl/h2load (see big_window_client), or
    # the default 65535 never returned (as ../shared/bench/peers.sh's client)
    wu = frame(8, 0, 0, struct.pack(">I", 1 << 30)) if big_window else b""
    hello = PREFACE + frame(4, 0, 0) + wu + frame(1, 5, 1, get)

    def one():
        c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        c.sendall(hello)
        buf = b""
        while True:
            d = c.recv(65536)
            assert d
            buf += d
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                ln, t, f = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                if t == 4 and not f & 1:
                    c.sendall(frame(4, 1, 0))
                if t in (0, 1) and f & 1:
                    return c
                buf = buf[9 + ln:]

    # measured like ../shared/bench/peers.sh: the slope between n/5 and n idle
    # connections (a burst of new connections holds ~25 KB each for 50 ms)
    n = 400
    socks = [one() for _ in range(n // 5)]
    time.sleep(HIB_WAIT)
    base = rss_kib(s.proc.pid)
    try:
        socks += [one() for _ in range(n)]
        time.sleep(HIB_WAIT + 0.5)
        per_conn = (rss_kib(s.proc.pid) - base) * 1024 / n
        assert per_conn < 4096, "%.0f bytes per idle h2 connection" % per_conn
        # and every one of them still works
        for c in socks[-20:]:
            c.sendall(frame(1, 5, 3, get))
        for c in socks[-20:]:
            buf, done = b"", False
            while not done:
                d = c.recv(65536)
                assert d
                buf += d
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    ln, t, f = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                    sid = int.from_bytes(buf[5:9], "big")
                    assert t != 7
                    if t in (0, 1) and f & 1 and sid == 3:
                        done = True
                    buf = buf[9 + ln:]
    finally:
        for c in socks:
            c.close()
