"""TLS helpers for skiff's integration tests: a throwaway PKI made with the
openssl CLI at test time, TLS config builders (Downstream/UpstreamTlsContext),
and thin wrappers around openssl s_client / s_server and curl."""
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

from helpers import free_port, wait_port

TLS_SOCKET = "envoy.transport_sockets.tls"
DTC_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UTC_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
}
UP_HTTP_OPTS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UP_HTTP_OPTS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

SPIFFE = "spiffe://skiff.local/ns/default/sa/%s"

FAIL_REASONS = ("no_cert", "bad_cert", "expired", "unknown_ca", "san_mismatch", "not_tls", "other",
                "no_alpn")


def run(cmd, cwd=None, input=None, timeout=30, check=True):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, input=input, capture_output=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(map(str, cmd)), p.returncode,
                                                     p.stderr.decode(errors="replace")))
    return p


# ---- PKI ----------------------------------------------------------------------------

_CA_CNF = """[ ca ]
default_ca = CA_default
[ CA_default ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/newcerts
serial = {dir}/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
[ policy_any ]
organizationName = optional
commonName = supplied
"""


class Cert:
    def __init__(self, cert, key, name):
        self.cert = Path(cert)
        self.key = Path(key)
        self.name = name

    def serial(self):
        out = run(["openssl", "x509", "-in", self.cert, "-noout", "-serial"]).stdout.decode()
        return out.strip().split("=", 1)[1].upper()

    def __repr__(self):
        return "<Cert %s>" % self.name


class CA:
    """A CA (P-256) in dir/<name>; issue() signs leaf certificates.

    Leaves are issued with `openssl ca`, which (unlike `openssl x509 -req` in
    OpenSSL 3.0) takes explicit -startdate / -enddate: expired and
    not-yet-valid certificates are real, well-formed certificates."""

    def __init__(self, base, name, cn=None):
        self.dir = Path(base) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "newcerts").mkdir(exist_ok=True)
        (self.dir / "index.txt").write_text("")
        # random-ish starting serial so two CAs never collide in a reader's eyes
        (self.dir / "serial").write_text("%016X\n" % (int.from_bytes(os.urandom(7), "big") | 1 << 60))
        self.cnf = self.dir / "ca.cnf"
        self.cnf.write_text(_CA_CNF.format(dir=self.dir))
        self.name = name
        self.pem = self.dir / "ca.pem"
        self.key = self.dir / "ca.key"
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "365", "-subj", "/O=skiff/CN=%s" % (cn or name),
             "-keyout", self.key, "-out", self.pem])

    def issue(self, name, sans=(), cn=None, start=None, end=None, days=30, out_dir=None,
              key=None):
        """Sign a new leaf. sans: ["URI:...", "DNS:...", "IP:..."]; start/end:
        YYYYMMDDHHMMSSZ (default now .. now + days); key: reuse that key file.
        Returns Cert (cert + key paths under out_dir or the CA dir)."""
        d = Path(out_dir) if out_dir else self.dir
        d.mkdir(parents=True, exist_ok=True)
        keyf = Path(key) if key else d / ("%s.key" % name)
        csr = self.dir / ("%s.csr" % name)
        ext = self.dir / ("%s.ext" % name)
        certf = d / ("%s.pem" % name)
        if key:
            run(["openssl", "req", "-new", "-key", keyf, "-subj", "/O=skiff/CN=%s" % (cn or name),
                 "-out", csr])
        else:
            run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-subj", "/O=skiff/CN=%s" % (cn or name), "-keyout", keyf, "-out", csr])
        lines = ["extendedKeyUsage=serverAuth,clientAuth", "basicConstraints=CA:FALSE"]
        if sans:
            lines.insert(0, "subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        cmd = ["openssl", "ca", "-batch", "-notext", "-config", self.cnf, "-cert", self.pem,
               "-keyfile", self.key, "-in", csr, "-out", certf, "-extfile", ext]
        if start or end:
            cmd += ["-startdate", start or time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() - 60)),
                    "-enddate", end or time.strftime("%Y%m%d%H%M%SZ",
                                                     time.gmtime(time.time() + days * 86400))]
        else:
            cmd += ["-days", str(days)]
        run(cmd)
        return Cert(certf, keyf, name)


class PKI:
    """Everything the TLS tests need, generated once per session:

      ca            the mesh CA
      server        URI spiffe://skiff.local/ns/default/sa/server, DNS localhost, IP 127.0.0.1
      client        URI spiffe://skiff.local/ns/default/sa/client
      client_expired, client_notyet   same identity, outside their validity window
      other_ca + client_other         a client from a CA skiff does not trust
      server_other  the server identity signed by other_ca
      server_wrongsan   URI .../sa/intruder, DNS localhost, IP 127.0.0.1 (signed by ca)
      a_example, b_wild DNS a.example / *.b.example (signed by ca)
    """

    def __init__(self, base):
        self.base = Path(base)
        self.ca = CA(self.base, "ca", "skiff test CA")
        self.other_ca = CA(self.base, "other_ca", "some other CA")
        srv = ["URI:" + SPIFFE % "server", "DNS:localhost", "IP:127.0.0.1"]
        self.server = self.ca.issue("server", srv)
        self.client = self.ca.issue("client", ["URI:" + SPIFFE % "client"])
        self.client2 = self.ca.issue("client2", ["URI:" + SPIFFE % "other-client"])
        self.client_expired = self.ca.issue("client_expired", ["URI:" + SPIFFE % "client"],
                                            start="20200101000000Z", end="20210101000000Z")
        self.client_notyet = self.ca.issue("client_notyet", ["URI:" + SPIFFE % "client"],
                                           start="20990101000000Z", end="20991231000000Z")
        self.client_other = self.other_ca.issue("client_other", ["URI:" + SPIFFE % "client"])
        self.server_other = self.other_ca.issue("server_other", srv)
        self.server_wrongsan = self.ca.issue(
            "server_wrongsan", ["URI:" + SPIFFE % "intruder", "DNS:localhost", "IP:127.0.0.1"])
        self.a_example = self.ca.issue("a_example", ["DNS:a.example"], cn="a.example")
        self.b_wild = self.ca.issue("b_wild", ["DNS:*.b.example"], cn="b.example")


# ---- config builders -----------------------------------------------------------------

def _ds(path):
    return {"filename": str(path)}


def common_tls(cert=None, ca=None, alpn=None, sans=None, tls_params=None):
    c = {}
    if cert is not None:
        c["tls_certificates"] = [{"certificate_chain": _ds(cert.cert), "private_key": _ds(cert.key)}]
    if ca is not None:
        vc = {"trusted_ca": _ds(ca)}
        if sans:
            vc["match_typed_subject_alt_names"] = [
                {"san_type": t, "matcher": {"exact": v}} for t, v in sans]
        c["validation_context"] = vc
    if alpn is not None:
        c["alpn_protocols"] = list(alpn)
    if tls_params:
        c["tls_params"] = tls_params
    return c


def downstream_tls(cert, ca=None, require_client=False, alpn=None, **extra):
    tc = {"@type": DTC_TYPE, "common_tls_context": common_tls(cert, ca, alpn)}
    if require_client:
        tc["require_client_certificate"] = True
    tc.update(extra)
    return {"name": TLS_SOCKET, "typed_config": tc}


def upstream_tls(ca=None, cert=None, sans=None, sni=None, alpn=None, **extra):
    tc = {"@type": UTC_TYPE, "common_tls_context": common_tls(cert, ca, alpn, sans)}
    if sni:
        tc["sni"] = sni
    tc.update(extra)
    return {"name": TLS_SOCKET, "typed_config": tc}


def max_requests_per_connection(n):
    return {UP_HTTP_OPTS_KEY: {
        "@type": UP_HTTP_OPTS_TYPE,
        "common_http_protocol_options": {"max_requests_per_connection": n},
        "explicit_http_config": {"http_protocol_options": {}},
    }}


def with_tls(listener, transport_socket, chain=0):
    """Put a DownstreamTlsContext on a listener's filter chain (in place)."""
    listener["filter_chains"][chain]["transport_socket"] = transport_socket
    return listener


# ---- clients ---------------------------------------------------------------------------

def tls_stats(skiff):
    """The TLS counters of a running skiff (missing ones read as 0)."""
    s = skiff.stats()
    out = {k: v for k, v in s.items() if k.startswith("tls_")}
    for r in FAIL_REASONS:
        out.setdefault("tls_handshake_fail." + r, 0)
    return out


def fail_delta(before, after):
    """{reason: growth} for the handshake failure counters that moved."""
    d = {}
    for r in FAIL_REASONS:
        k = "tls_handshake_fail." + r
        if after.get(k, 0) != before.get(k, 0):
            d[r] = after.get(k, 0) - before.get(k, 0)
    return d


def curl_tls(url, ca=None, cert=None, args=(), timeout=15):
    """curl with TLS material; returns CompletedProcess. Appends %{http_code}
    and %{http_version} on a final line ("<code> <version>")."""
    cmd = ["curl", "-sS", "--max-time", str(timeout), "-w", "\n%{http_code} %{http_version}"]
    if ca is not None:
        cmd += ["--cacert", str(ca)]
    if cert is not None:
        cmd += ["--cert", str(cert.cert), "--key", str(cert.key)]
    cmd += [str(a) for a in args] + [url]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10)


def curl_parse(p):
    """(status int, http version str, body bytes) from curl_tls output."""
    body, _, tail = p.stdout.rpartition(b"\n")
    code, _, ver = tail.decode().partition(" ")
    return int(code or 0), ver, body


def s_client(port, args=(), input=b"", host="127.0.0.1", timeout=15):
    """openssl s_client to host:port; returns CompletedProcess (text)."""
    cmd = ["openssl", "s_client", "-connect", "%s:%d" % (host, port)] + [str(a) for a in args]
    p = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    p.out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    return p


def alpn_of(out):
    m = re.search(r"ALPN protocol: (\S+)", out)
    if m:
        return m.group(1)
    return None if "No ALPN negotiated" in out else "?"


def peer_serial(port, servername=None, ca=None):
    """Serial (upper hex) of the certificate the server presents now."""
    args = ["-showcerts"]
    if servername:
        args += ["-servername", servername]
    if ca:
        args += ["-CAfile", ca]
    p = s_client(port, args, input=b"")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", p.out, re.S)
    if not m:
        return None
    x = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=m.group(0).encode(),
                       capture_output=True, timeout=10)
    out = x.stdout.decode().strip()
    return out.split("=", 1)[1].upper() if "=" in out else None


def ssl_context(ca, cert=None, alpn=("http/1.1",), max_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if max_version:
        ctx.maximum_version = max_version
    return ctx


class TlsConn:
    """A RawConn-like HTTP/1.1 client over TLS (python ssl)."""

    def __init__(self, port, ctx, server_hostname="localhost", timeout=5.0):
        import helpers
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.ssock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        self.conn = helpers.RawConn.__new__(helpers.RawConn)
        self.conn.sock = self.ssock
        self.conn.buf = b""
        self.conn.timeout = timeout

    def send(self, data):
        self.ssock.sendall(data)

    def cork(self, on):
        """TCP_CORK: hold everything sent until uncorked (one burst of records)."""
        self.ssock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)

    def request(self, *a, **kw):
        return self.conn.request(*a, **kw)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class SServer:
    """openssl s_server -www on a free port (an HTTPS upstream answering any GET
    with a status page). Stopped by PID."""

    def __init__(self, tmp, cert, ca=None, verify_client=False, args=()):
        self.port = free_port()
        self.log_path = Path(tmp) / ("s_server-%d.log" % self.port)
        self.logf = open(self.log_path, "w")
        cmd = ["openssl", "s_server", "-accept", "127.0.0.1:%d" % self.port, "-cert", cert.cert,
               "-key", cert.key, "-www", "-naccept", "1000000"]
        if ca:
            cmd += ["-CAfile", ca]
        if verify_client:
            cmd += ["-Verify", "2"]
        cmd += list(args)
        self.proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        if not wait_port(self.port, 10):
            self.stop()
            raise RuntimeError("s_server did not start: " + self.log())

    def log(self):
        self.logf.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.logf.closed:
            self.logf.close()


class TlsOrigin:
    """An in-process HTTPS/1.1 origin (python ssl, one thread per connection)
    that controls how its response is cut into TLS records.

    GET /<chunk>/<count>[?close_notify=1]: "200" with Content-Length chunk*count,
    the head written on its own (one record), then `count` writes of `chunk`
    bytes. With close_notify=1 the response has no Content-Length (HTTP/1.0
    style, delimited by the end of the connection) and the origin sends
    close_notify and waits for the peer's before closing TCP, as openssl
    s_server -www and many servers do (a bidirectional shutdown)."""

    def __init__(self, cert, max_version=None):
        import threading
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert.cert), str(cert.key))
        if max_version:
            self.ctx.maximum_version = max_version
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.stopped = False
        self.requests = 0
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        import threading
        while not self.stopped:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        import threading
        c.settimeout(20)
        s = None
        try:
            s = self.ctx.wrap_socket(c, server_side=True)
            d = b""
            while True:
                while b"\r\n\r\n" not in d:
                    x = s.recv(65536)
                    if not x:
                        return
                    d += x
                head, _, d = d.partition(b"\r\n\r\n")
                self.requests += 1
                path = head.split(b" ")[1].decode()
                path, _, q = path.partition("?")
                _, ch, cnt = path.split("/")
                ch, cnt = int(ch), int(cnt)
                # TCP_CORK: every record of the response (and the close_notify)
                # reaches the peer at once, so how it reads them is deterministic
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                uncork = threading.Timer(0.05, lambda: s.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_CORK, 0))
                if "close_notify=1" in q:
                    s.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                    for _ in range(cnt):
                        s.sendall(b"y" * ch)
                    uncork.start()
                    try:
                        s.unwrap()  # close_notify, then wait for the peer's
                    except (OSError, ValueError):
                        pass
                    return
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (ch * cnt))
                for _ in range(cnt):
                    s.sendall(b"y" * ch)
                uncork.start()
        except (OSError, ValueError):
            pass
        finally:
            try:
                (s if s is not None else c).close()
            except OSError:
                pass

    def stop(self):
        self.stopped = True
        try:
            self.ls.close()
        except OSError:
            pass


class H2TlsOrigin:
    """An HTTP/2-over-TLS origin on python3-h2 and python ssl: one thread per
    connection that does all of that connection's reading and writing (an
    SSL object is never used by two threads).

    Every request is answered 200 with x-conn (connection number), x-got-path,
    x-got-stream, x-alpn and x-peer (the client certificate's URI SAN, "-"
    without one); the body echoes the request body, or is N bytes of b"x" for
    /bytes/N. Response DATA respects the peer's flow-control windows.

      alpn          protocols the server accepts (() = no ALPN at all)
      ca            require and verify a client certificate from this CA
      close_notify_after   after that many answered requests on a connection,
                    wait until its streams are done, then send close_notify and
                    close (a graceful TLS close with no GOAWAY)

    conns counts accepted TLS connections, handshakes_failed failed ones,
    alpn the protocol each connection negotiated, resumed the resumed sessions,
    requests (conn, stream, path), max_batch the most requests read at once.
    """

    def __init__(self, cert, alpn=("h2",), ca=None, close_notify_after=0):
        import threading
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert.cert), str(cert.key))
        if alpn:
            self.ctx.set_alpn_protocols(list(alpn))
        if ca is not None:
            self.ctx.load_verify_locations(str(ca))
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.close_notify_after = close_notify_after
        self.lock = threading.Lock()
        self.conns = 0
        self.handshakes_failed = 0
        self.alpn = []
        self.requests = []
        self.resumed = 0
        self.max_batch = 0  # most requests that arrived in one read: streams multiplexed
        self.stopped = False
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while not self.stopped:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _peer_uri(s):
        cert = s.getpeercert()
        for kind, value in (cert or {}).get("subjectAltName", ()):
            if kind == "URI":
                return value
        return "-"

    def _serve(self, raw):
        raw.settimeout(30)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ValueError):
            with self.lock:
                self.handshakes_failed += 1
            raw.close()
            return
        proto = s.selected_alpn_protocol()
        with self.lock:
            self.conns += 1
            cid = self.conns
            self.alpn.append(proto)
            self.resumed += 1 if s.session_reused else 0
        try:
            if proto != "h2":
                # not our protocol: wait for the client to give up
                while s.recv(65536):
                    pass
                return
            self._h2(s, cid)
        except (OSError, ValueError):
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    def _h2(self, s, cid):
        import h2.config
        import h2.connection
        import h2.events
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                 header_encoding="utf-8"))
        c.initiate_connection()
        s.sendall(c.data_to_send())
        peer = self._peer_uri(s)
        streams = {}  # sid -> {"headers", "body"}
        out = {}      # sid -> remaining response body (bytes), in order of arrival
        answered = 0

        def start(sid):
            nonlocal answered
            st = streams.pop(sid)
            hdrs = dict(st["headers"])
            path = hdrs.get(":path", "")
            body = bytes(st["body"])
            if path.startswith("/bytes/"):
                body = b"x" * int(path.split("/")[2].split("?")[0])
            with self.lock:
                self.requests.append((cid, sid, path))
            answered += 1
            c.send_headers(sid, [(":status", "200"), ("content-type", "application/octet-stream"),
                                 ("x-conn", str(cid)), ("x-got-path", path),
                                 ("x-got-stream", str(sid)), ("x-alpn", "h2"), ("x-peer", peer),
                                 ("x-got-scheme", hdrs.get(":scheme", "")),
                                 ("content-length", str(len(body)))],
                           end_stream=not body)
            if body:
                out[sid] = body

        def push():
            for sid in list(out):
                body = out[sid]
                while body:
                    try:
                        win = min(c.local_flow_control_window(sid), c.max_outbound_frame_size)
                    except Exception:
                        body = b""
                        break
                    if win <= 0:
                        break
                    c.send_data(sid, body[:win], end_stream=len(body) <= win)
                    body = body[win:]
                if body:
                    out[sid] = body
                else:
                    del out[sid]

        while not self.stopped:
            data = s.recv(65536)
            if not data:
                return
            events = c.receive_data(data)
            batch = sum(isinstance(ev, h2.events.RequestReceived) for ev in events)
            with self.lock:
                self.max_batch = max(self.max_batch, batch)
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    streams[ev.stream_id] = {"headers": ev.headers, "body": bytearray()}
                    if ev.stream_ended:
                        start(ev.stream_id)
                elif isinstance(ev, h2.events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if ev.stream_id in streams:
                        streams[ev.stream_id]["body"] += ev.data
                elif isinstance(ev, h2.events.StreamEnded):
                    if ev.stream_id in streams:
                        start(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    streams.pop(ev.stream_id, None)
                    out.pop(ev.stream_id, None)
            push()
            d = c.data_to_send()
            if d:
                s.sendall(d)
            if (self.close_notify_after and answered >= self.close_notify_after and not out
                    and not streams):
                s.unwrap()  # close_notify; the peer's answer (or EOF) ends unwrap
                return

    def stop(self):
        self.stopped = True
        try:
            self.ls.close()
        except OSError:
            pass
