"""Shared helpers for skiff's integration tests: config builders, a raw
HTTP/1.1 client that parses responses byte-exactly, curl, admin access."""
import json
import socket
import subprocess
import time
import urllib.request

import yaml

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

UUID4_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


# ---- config builders ---------------------------------------------------------

def sockaddr(port, host="127.0.0.1"):
    return {"socket_address": {"address": host, "port_value": port}}


def cluster(name, ports, lb="ROUND_ROBIN", ctype="STATIC", weights=None, host="127.0.0.1", **extra):
    eps = []
    for i, p in enumerate(ports):
        ep = {"endpoint": {"address": sockaddr(p, host)}}
        if weights:
            ep["load_balancing_weight"] = weights[i]
        eps.append(ep)
    c = {
        "name": name,
        "type": ctype,
        "connect_timeout": "1s",
        "lb_policy": lb,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}] if eps else []},
    }
    c.update(extra)
    return c


def route(prefix="/", cluster=None, path=None, headers=None, **action):
    m = {"path": path} if path is not None else {"prefix": prefix}
    if headers:
        m["headers"] = headers
    r = {"match": m}
    direct = action.pop("direct_response", None)
    rextra = {k: action.pop(k) for k in list(action)
              if k.endswith("_headers_to_add") or k.endswith("_headers_to_remove")}
    if direct is not None:
        r["direct_response"] = direct
    else:
        a = {}
        if cluster is not None:
            a["cluster"] = cluster
        a.update(action)
        r["route"] = a
    r.update(rextra)
    return r


def vhost(name, domains, routes, **extra):
    v = {"name": name, "domains": domains, "routes": routes}
    v.update(extra)
    return v


def http_listener(name, port, vhosts, hcm_extra=None, rc_extra=None):
    rc = {"name": "local_route", "virtual_hosts": vhosts}
    if rc_extra:
        rc.update(rc_extra)
    tc = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "route_config": rc,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}],
    }
    if hcm_extra:
        tc.update(hcm_extra)
    return {
        "name": name,
        "address": sockaddr(port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": tc}]}],
    }


def tcp_listener(name, port, cluster_name, **extra):
    tc = {"@type": TCP_TYPE, "stat_prefix": name, "cluster": cluster_name}
    tc.update(extra)
    return {
        "name": name,
        "address": sockaddr(port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tc}]}],
    }


def bootstrap(admin_port, listeners, clusters):
    return {
        "admin": {"address": sockaddr(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def simple_http(listen_port, admin_port, upstream_ports, routes=None, hcm_extra=None,
                rc_extra=None, vhost_extra=None, lb="ROUND_ROBIN", extra_clusters=()):
    routes = routes or [route("/", "up")]
    vh = vhost("default", ["*"], routes, **(vhost_extra or {}))
    return bootstrap(admin_port,
                     [http_listener("ingress", listen_port, [vh], hcm_extra, rc_extra)],
                     [cluster("up", upstream_ports, lb=lb)] + list(extra_clusters))


def dump(cfg):
    if isinstance(cfg, str):
        return cfg
    return yaml.safe_dump(cfg, sort_keys=False)


# ---- ports ------------------------------------------------------------------

_handed_out = set()


def free_port():
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p not in _handed_out:
            _handed_out.add(p)
            return p
    raise RuntimeError("no free port")


def wait_port(port, timeout=10.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# ---- raw HTTP/1.1 client ------------------------------------------------------

class Response:
    def __init__(self, status, reason, headers, body, trailers, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower name, value)
        self.body = body
        self.trailers = trailers
        self.raw_head = raw_head

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r body=%r>" % (self.status, self.headers, self.body[:200])


class RawConn:
    """One client TCP connection; send bytes, read parsed responses."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _headers(self):
        hs = []
        while True:
            ln = self._line()
            if ln == b"":
                return hs
            k, _, v = ln.partition(b":")
            hs.append((k.decode("latin-1").strip().lower(), v.strip().decode("latin-1")))

    def read_response(self, head_request=False, skip_1xx=True):
        while True:
            line = self._line()
            parts = line.decode("latin-1").split(" ", 2)
            status = int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            hs = self._headers()
            if 100 <= status < 200 and status != 101 and skip_1xx:
                continue
            break
        raw_head = line
        get = lambda n: [v for k, v in hs if k == n]
        trailers = []
        if head_request or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif any("chunked" in v.lower() for v in get("transfer-encoding")):
            parts = []
            while True:
                sz = int(self._line().split(b";")[0].strip(), 16)
                if sz == 0:
                    break
                parts.append(self._exact(sz))
                assert self._exact(2) == b"\r\n", "bad chunk terminator from proxy"
            trailers = self._headers()
            body = b"".join(parts)
        elif get("content-length"):
            body = self._exact(int(get("content-length")[0]))
        else:
            # read to EOF
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            body, self.buf = self.buf, b""
        return Response(status, reason, hs, body, trailers, raw_head)

    def request(self, method="GET", path="/", headers=None, body=b"", host="test"):
        hs = [("Host", host)] + list(headers or [])
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hs):
            hs.append(("Content-Length", str(len(body))))
        data = "%s %s HTTP/1.1\r\n" % (method, path)
        data += "".join("%s: %s\r\n" % (k, v) for k, v in hs) + "\r\n"
        self.send(data.encode("latin-1") + body)
        return self.read_response(head_request=(method == "HEAD"))

    def is_closed(self, timeout=3.0):
        """True if the peer closed (EOF or RST) within timeout, with no more data."""
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if d:
            self.buf += d
            return False
        return True

    def read_all_until_close(self, timeout=5.0):
        self.sock.settimeout(timeout)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    break
                self.buf += d
        except (ConnectionResetError, socket.timeout):
            pass
        out, self.buf = self.buf, b""
        return out


def get(port, path="/", headers=None, host="test", method="GET", body=b"", timeout=10.0):
    with RawConn(port, timeout=timeout) as c:
        return c.request(method, path, headers, body, host)


def curl(*args, timeout=20):
    """Run curl; returns CompletedProcess (stdout bytes)."""
    cmd = ["curl", "-sS", "--max-time", str(timeout)] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10)


# ---- admin -----------------------------------------------------------------------

def admin_get(admin_port, path, timeout=5.0):
    """(status, body text)"""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (admin_port, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin_post(admin_port, path, timeout=5.0):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (admin_port, path), data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def upstream_control(port, host="127.0.0.1", **kw):
    """POST /__control to a test upstream (upstream.py) directly; returns its state."""
    req = urllib.request.Request("http://%s:%d/__control" % (host, port), data=json.dumps(kw).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def upstream_counters(port, host="127.0.0.1"):
    """GET /__stats from a test upstream directly: requests, (max_)inflight, (max_)conns_open..."""
    with urllib.request.urlopen("http://%s:%d/__stats" % (host, port), timeout=5) as r:
        return json.loads(r.read())


def parse_stats(text):
    out = {}
    for ln in text.splitlines():
        k, sep, v = ln.rpartition(": ")
        if sep:
            try:
                out[k.strip()] = int(v)
            except ValueError:
                pass
    return out


def wait_for(pred, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()
