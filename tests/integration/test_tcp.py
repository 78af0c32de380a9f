"""tcp_proxy listeners against a real TCP echo server."""
import hashlib
import os
import socket
import threading
import time

import pytest

from helpers import bootstrap, cluster, free_port, tcp_listener


@pytest.fixture
def echo(upstreams):
    return upstreams("echo", mode="tcpecho")


def tcp_proxy(skiff_factory, port_up, **extra):
    lp, ap = free_port(), free_port()
    cfg = bootstrap(ap, [tcp_listener("tcp", lp, "echo", **extra)], [cluster("echo", [port_up])])
    return skiff_factory(cfg, port=lp, admin_port=ap)


def recv_exact(s, n):
    out = bytearray()
    while len(out) < n:
        d = s.recv(min(65536, n - len(out)))
        if not d:
            break
        out += d
    return bytes(out)


def test_tcp_echo(skiff_factory, echo):
    s = tcp_proxy(skiff_factory, echo.port)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        for msg in (b"hello", b"\x00\x01\x02binary\xff", b"x" * 10000):
            c.sendall(msg)
            assert recv_exact(c, len(msg)) == msg
    st = s.stats()
    assert st["downstream_cx_tcp_total"] >= 1
    assert st["tcp_bytes_rx"] >= 10000


def test_tcp_1mb_both_directions(skiff_factory, echo):
    s = tcp_proxy(skiff_factory, echo.port)
    data = os.urandom(1024 * 1024)
    with socket.create_connection(("127.0.0.1", s.port), timeout=20) as c:
        err = []

        def writer():
            try:
                c.sendall(data)
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=writer)
        t.start()
        got = recv_exact(c, len(data))
        t.join(20)
    assert not err
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


def test_tcp_half_close(skiff_factory, echo):
    """Client shuts down its write side; it still receives the echo of
    everything it sent, then EOF."""
    s = tcp_proxy(skiff_factory, echo.port)
    data = os.urandom(256 * 1024)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += d
    assert bytes(got) == data


def test_tcp_idle_timeout(skiff_factory, echo):
    s = tcp_proxy(skiff_factory, echo.port, idle_timeout="1s")
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"ping")
        assert recv_exact(c, 4) == b"ping"
        t0 = time.monotonic()
        try:
            d = c.recv(10)
        except ConnectionResetError:
            d = b""
        assert d == b"", "idle session should be closed by the proxy"
        assert time.monotonic() - t0 < 9


def test_tcp_no_idle_timeout_while_active(skiff_factory, echo):
    s = tcp_proxy(skiff_factory, echo.port, idle_timeout="1s")
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        for _ in range(6):  # ~1.8 s of activity, each gap well under 1 s
            c.sendall(b"x")
            assert recv_exact(c, 1) == b"x"
            time.sleep(0.3)


def test_tcp_upstream_refused_closes(skiff_factory):
    s = tcp_proxy(skiff_factory, free_port())
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
        c.sendall(b"hello")
        try:
            d = c.recv(10)
        except ConnectionResetError:
            d = b""
        assert d == b""


def test_tcp_many_connections(skiff_factory, echo):
    s = tcp_proxy(skiff_factory, echo.port)
    socks = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(20)]
    try:
        for i, c in enumerate(socks):
            c.sendall(b"conn%03d" % i)
        for i, c in enumerate(socks):
            assert recv_exact(c, 7) == b"conn%03d" % i
    finally:
        for c in socks:
            c.close()


# ---- TcpProxy.access_log: one line per connection ------------------------------------------

def _al(path, fmt):
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(path), "log_format": {"text_format_source": {"inline_string": fmt}}}}]


def _lines(p, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.exists() and len(p.read_text().splitlines()) >= n:
            break
        time.sleep(0.05)
    return p.read_text().splitlines() if p.exists() else []


FMT = "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n"


def test_tcp_access_log_normal_and_failures(skiff_factory, echo, tmp_path):
    log = tmp_path / "tcp.log"
    lp, ap, dead = free_port(), free_port(), free_port()
    cfg = bootstrap(ap, [tcp_listener("tcp", lp, "echo", access_log=_al(log, FMT), idle_timeout="0.3s"),
                         tcp_listener("tcp_dead", free_port(), "dead", access_log=_al(log, FMT))],
                    [cluster("echo", [echo.port]), cluster("dead", [dead])])
    s = skiff_factory(cfg, port=lp, admin_port=ap)
    with socket.create_connection(("127.0.0.1", lp), timeout=10) as c:
        c.sendall(b"x" * 1000)
        assert recv_exact(c, 1000) == b"x" * 1000
    lines = _lines(log, 1)
    assert lines[0].split() == ["-", "1000", "1000", "echo", "127.0.0.1:%d" % echo.port, "-", "127.0.0.1"], lines
    # idle timeout: flag IT
    with socket.create_connection(("127.0.0.1", lp), timeout=10) as c:
        c.sendall(b"abc")
        assert recv_exact(c, 3) == b"abc"
        assert c.recv(10) == b""  # closed by the idle timeout
    lines = _lines(log, 2)
    assert lines[1].split()[:3] == ["IT", "3", "3"], lines
    # connect failure: flag UF, nothing sent back
    dport = cfg["static_resources"]["listeners"][1]["address"]["socket_address"]["port_value"]
    with socket.create_connection(("127.0.0.1", dport), timeout=10) as c:
        c.settimeout(5)
        try:
            c.recv(10)
        except OSError:
            pass
    lines = _lines(log, 3)
    assert lines[2].split()[0] == "UF" and lines[2].split()[3] == "dead", lines
    assert s.stat("access_log_written") == 3


def test_tcp_access_log_flags_l4_toxics(skiff_factory, echo, tmp_path):
    log = tmp_path / "tox.log"
    lp, ap = free_port(), free_port()
    lst = tcp_listener("tcp", lp, "echo", access_log=_al(log, FMT))
    lst["filter_chains"][0]["filters"].insert(0, {
        "name": "skiff.filters.network.toxics",
        "typed_config": {"@type": "type.googleapis.com/skiff.toxics.v1.Toxics",
                         "toxics": [{"name": "lat", "stream": "DOWNSTREAM",
                                     "latency": {"latency_ms": 20}}]}})
    skiff_factory(bootstrap(ap, [lst], [cluster("echo", [echo.port])]), port=lp, admin_port=ap)
    with socket.create_connection(("127.0.0.1", lp), timeout=10) as c:
        c.sendall(b"ping")
        assert recv_exact(c, 4) == b"ping"
    lines = _lines(log, 1)
    assert lines[0].split()[:3] == ["TX", "4", "4"], lines
