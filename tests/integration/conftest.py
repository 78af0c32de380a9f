"""Fixtures: the skiff binary, free ports, upstream processes, skiff processes.

Every process started here is tracked and stopped by its PID at teardown
(SIGTERM, then SIGKILL after a bound). Nothing else is ever signalled.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import helpers  # noqa: E402
from helpers import admin_get, dump, free_port, parse_stats, wait_port  # noqa: E402

# sanitizer builds start and run slower
SANITIZER_MARKERS = ("runtime error:", "AddressSanitizer", "LeakSanitizer", "ThreadSanitizer")
READY_TIMEOUT = 30.0 if os.environ.get("SKIFF_SANITIZED") else 10.0


def _find_bin():
    env = os.environ.get("SKIFF_BIN")
    if env:
        p = Path(env)
        if not p.is_absolute():
            p = REPO / p
        return p
    for cand in ("build/src/skiff", "build-it/src/skiff"):
        p = REPO / cand
        if p.exists():
            return p
    return REPO / "build/src/skiff"


@pytest.fixture(scope="session")
def skiff_bin():
    p = _find_bin()
    if not p.exists():
        pytest.fail("skiff binary not found at %s (set SKIFF_BIN)" % p)
    return str(p)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _stop(proc, timeout=10.0):
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=5)


# ---- upstreams ------------------------------------------------------------------------

class Upstream:
    def __init__(self, tmp, name, mode="http", host="127.0.0.1", args=()):
        self.name = name
        self.port = free_port()
        self.host = host
        self.log = Path(tmp) / ("upstream-%s.jsonl" % name)
        self.out_path = Path(tmp) / ("upstream-%s.out" % name)
        self.argv = [sys.executable, str(HERE / "upstream.py"), "--port", str(self.port), "--name", name,
                     "--log", str(self.log), "--mode", mode, "--host", host] + [str(a) for a in args]
        self.out = open(self.out_path, "w")
        self._spawn()

    def _spawn(self):
        self.proc = subprocess.Popen(self.argv, stdout=self.out, stderr=subprocess.STDOUT)
        if not wait_port(self.port, 10, self.host):
            self.stop()
            raise RuntimeError("upstream %s did not start" % self.name)

    def restart(self):
        """Start the upstream again on the same port (after stop())."""
        if self.proc.poll() is None:
            self.stop()
        self.out = open(self.out_path, "a")
        self._spawn()

    def control(self, **kw):
        """Change this upstream's behaviour at runtime (see upstream.py)."""
        return helpers.upstream_control(self.port, self.host, **kw)

    def counters(self):
        """Concurrency / request counters kept by the upstream (see upstream.py)."""
        return helpers.upstream_counters(self.port, self.host)

    def traffic(self):
        """Logged requests other than health checks."""
        return [r for r in self.requests() if not r["path"].startswith("/healthz")]

    def requests(self):
        """Requests the upstream has seen (from its log)."""
        if not self.log.exists():
            return []
        return [json.loads(ln) for ln in self.log.read_text().splitlines() if ln.strip()]

    def stop(self):
        _stop(self.proc, 5)
        if not self.out.closed:
            self.out.close()


@pytest.fixture
def upstreams(tmp_path):
    started = []

    def make(name=None, mode="http", host="127.0.0.1", args=()):
        u = Upstream(tmp_path, name or "u%d" % len(started), mode, host, args)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


@pytest.fixture
def upstream(upstreams):
    return upstreams("u0")


# ---- skiff ------------------------------------------------------------------------------

class Skiff:
    def __init__(self, binary, tmp, idx, cfg=None, args=(), port=None, admin_port=None):
        self.binary = binary
        self.tmp = Path(tmp)
        self.port = port
        self.admin_port = admin_port
        self.cfg_path = self.tmp / ("skiff-%d.yaml" % idx)
        self.log_path = self.tmp / ("skiff-%d.log" % idx)
        if cfg is not None:
            self.cfg_path.write_text(dump(cfg))
            argv = [binary, "-c", str(self.cfg_path)]
        else:
            argv = [binary]
        argv += [str(a) for a in args]
        self.argv = argv
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("skiff exited with %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                st, _ = admin_get(self.admin_port, "/ready", timeout=1)
                if st == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("skiff not ready after %ss:\n%s" % (timeout, self.log()))

    def log(self):
        if not self.logf.closed:
            self.logf.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stats(self):
        st, body = admin_get(self.admin_port, "/stats")
        assert st == 200, body
        return parse_stats(body)

    def stat(self, name):
        return self.stats().get(name, 0)

    def ready_status(self):
        return admin_get(self.admin_port, "/ready", timeout=2)[0]

    def reload(self, cfg):
        """Write a new config and SIGHUP; returns after the reload counter moves."""
        before = self.stats()
        self.cfg_path.write_text(dump(cfg))
        self.proc.send_signal(signal.SIGHUP)
        ok = helpers.wait_for(
            lambda: (lambda s: s.get("config_reload_ok", 0) + s.get("config_reload_rejected", 0)
                     > before.get("config_reload_ok", 0) + before.get("config_reload_rejected", 0))(self.stats()),
            timeout=10)
        assert ok, "reload counters did not move:\n" + self.log()
        return self.stats()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        rc = _stop(self.proc, timeout)
        if not self.logf.closed:
            self.logf.close()
        return rc

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port


@pytest.fixture
def skiff_factory(skiff_bin, tmp_path, request):
    started = []

    def start(cfg=None, args=(), port=None, admin_port=None, wait=True, drain="2"):
        """cfg: dict/str bootstrap (None for quick mode via args). port/admin_port
        are recorded for the helpers; they must match the config/args."""
        a = list(args)
        if drain is not None and "--drain-time-s" not in a:
            a += ["--drain-time-s", drain]
        s = Skiff(skiff_bin, tmp_path, len(started), cfg, a, port, admin_port)
        started.append(s)
        if wait:
            s.wait_ready()
        return s

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    problems = []
    for s in started:
        rc = s.stop()
        log = s.log()
        if failed:
            sys.stderr.write("\n----- skiff log %s (%s) -----\n%s\n" % (s.log_path, " ".join(s.argv), log))
        # a clean shutdown is part of every test: exit 0, no sanitizer report
        if rc != 0:
            problems.append("skiff (%s) exited with %s (SIGTERM at teardown or earlier)" % (s.log_path, rc))
        for marker in SANITIZER_MARKERS:
            if marker in log:
                problems.append("sanitizer report (%r) in %s" % (marker, s.log_path))
                break
    if problems and not failed:
        pytest.fail("; ".join(problems) + "\n" + "\n".join(s.log()[-4000:] for s in started), pytrace=False)


@pytest.fixture
def ports():
    """ports() -> a fresh free loopback port."""
    return free_port


@pytest.fixture
def proxy(skiff_factory, upstream):
    """A skiff with one HTTP listener routing everything to `upstream`."""
    lp, ap = free_port(), free_port()
    s = skiff_factory(helpers.simple_http(lp, ap, [upstream.port]), port=lp, admin_port=ap)
    s.upstream = upstream
    return s


@pytest.fixture
def make_proxy(skiff_factory):
    """make_proxy(upstream_ports, **simple_http kwargs, args=()) -> started Skiff."""

    def make(upstream_ports, args=(), **kw):
        lp, ap = free_port(), free_port()
        return skiff_factory(helpers.simple_http(lp, ap, upstream_ports, **kw), args=args,
                             port=lp, admin_port=ap)

    return make
