#!/usr/bin/python3
"""A small xDS control plane for the example: serves the resources found in a
directory of YAML (or JSON) files over ADS (state of the world, xDS v3) and
pushes whatever changed when a file changes.

    python3 examples/xds/control_plane.py --resources DIR [--port 18000]

Each file holds resources shaped like skiff's file-based config (a
DiscoveryResponse in YAML):

    resources:
    - "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
      name: local_route
      ...

Files may hold any mix of Listener, RouteConfiguration, Cluster,
ClusterLoadAssignment and Secret resources (a single resource with "@type" at
the top, or several YAML documents, work too). The directory is read as one
snapshot every --poll seconds; a type whose resources changed gets a new version
and is pushed to every connected skiff (order: CDS, EDS, LDS, RDS, SDS). A file
that does not parse, or a resource that does not fit its message type, is
reported and the previous snapshot keeps being served. Resources that parse but
that skiff refuses (a negative timeout, ...) are pushed: skiff NACKs them and
the NACK is logged here.

The gRPC side is the reference control plane of the integration tests
(tests/integration/xds_server.py, python3-grpcio); its message classes are
generated from the repository's proto/ with protoc into --proto-out (a
temporary directory by default, removed on exit).

Every request from skiff is logged: subscriptions, ACKs (version + nonce) and
NACKs (with skiff's error_detail).
"""
import argparse
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

try:
    import yaml
    import xds_server  # the reference control plane of the tests (needs grpc, google.protobuf)
except ImportError as e:  # depends on the machine
    sys.exit("control_plane.py: %s: run it with Debian's /usr/bin/python3 after "
             "'bash scripts/deps.sh' (python3-grpcio, python3-protobuf, python3-yaml)" % e)

SHORT = {xds_server.CLUSTER: "CDS", xds_server.ENDPOINT: "EDS", xds_server.LISTENER: "LDS",
         xds_server.ROUTE: "RDS", xds_server.SECRET: "SDS"}
KIND = {t: t.rsplit(".", 1)[1] for t in SHORT}
PUSH_ORDER = [xds_server.CLUSTER, xds_server.ENDPOINT, xds_server.LISTENER, xds_server.ROUTE,
              xds_server.SECRET]
SUFFIXES = (".yaml", ".yml", ".json")


def log(msg):
    print("[control-plane %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


class BadSnapshot(Exception):
    pass


def resource_files(d):
    return sorted(p for p in Path(d).iterdir()
                  if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))


def read_dir(d):
    """-> (content digest, {file name: bytes}); raises BadSnapshot."""
    try:
        files = resource_files(d)
    except OSError as e:
        raise BadSnapshot("cannot list %s: %s" % (d, e.strerror or e))
    h = hashlib.sha256()
    out = {}
    for p in files:
        try:
            b = p.read_bytes()
        except OSError as e:  # removed between listing and reading: next poll sees it
            raise BadSnapshot("%s: %s" % (p.name, e.strerror or e))
        out[p.name] = b
        h.update(p.name.encode() + b"\0" + str(len(b)).encode() + b"\0" + b)
    return h.hexdigest(), out


def parse_snapshot(files):
    """{file name: bytes} -> {type_url: [(name, message, file name)]} sorted by name."""
    pb = xds_server.PB
    snap = {t: {} for t in SHORT}
    errors = []
    for fname, raw in files.items():
        try:
            docs = [doc for doc in yaml.safe_load_all(raw.decode("utf-8")) if doc is not None]
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            errors.append("%s: not valid YAML: %s" % (fname, str(e).replace("\n", " ")))
            continue
        for doc in docs:
            default_type = None
            if isinstance(doc, dict) and "resources" in doc:
                default_type = doc.get("type_url")
                items = doc["resources"] or []
            elif isinstance(doc, dict):
                items = [doc]
            elif isinstance(doc, list):
                items = doc
            else:
                errors.append("%s: expected a mapping with 'resources:', got %s" %
                              (fname, type(doc).__name__))
                continue
            if not isinstance(items, list):
                errors.append("%s: 'resources' must be a list" % fname)
                continue
            for i, r in enumerate(items):
                where = "%s: resources[%d]" % (fname, i)
                if not isinstance(r, dict):
                    errors.append("%s: not a mapping" % where)
                    continue
                r = dict(r)
                t = r.pop("@type", None) or default_type
                if t not in SHORT:
                    errors.append("%s: \"@type\" must be one of %s (got %r)" %
                                  (where, ", ".join(sorted(SHORT)), t))
                    continue
                try:
                    msg = pb.json_format.ParseDict(r, pb.cls[t]())
                except (pb.json_format.ParseError, ValueError, TypeError) as e:
                    errors.append("%s (%s): %s" % (where, KIND[t], e))
                    continue
                name = xds_server._name(t, msg)
                if not name:
                    errors.append("%s (%s): has no name" % (where, KIND[t]))
                    continue
                if name in snap[t]:
                    errors.append("%s: %s '%s' is also defined in %s" %
                                  (where, KIND[t], name, snap[t][name][2]))
                    continue
                snap[t][name] = (name, msg, fname)
    if errors:
        raise BadSnapshot("\n  ".join(errors))
    return {t: sorted(v.values(), key=lambda x: x[0]) for t, v in snap.items()}


def wire(entries):
    return [(n, m.SerializeToString(deterministic=True)) for n, m, _ in entries]


class ControlPlane:
    def __init__(self, args):
        self.args = args
        self.dir = Path(args.resources)
        self.served = {t: [] for t in SHORT}   # type -> wire form of what is served
        self.digest = None
        self.bad_digest = None
        self.seen_requests = 0
        self.streams_seen = set()
        self.active = 0
        self.srv = xds_server.XdsServer(args.port, args.proto_out)

    def apply(self, snap, first=False):
        """Push every type whose resources changed."""
        for t in PUSH_ORDER:
            w = wire(snap[t])
            if w == self.served[t] and not first:
                continue
            if first and not w:
                continue  # nothing of this type: never answered (like go-control-plane)
            self.srv.set(t, [m for _, m, _ in snap[t]])
            self.served[t] = w
            names = ", ".join("%s (%s)" % (n, f) for n, _, f in snap[t]) or "(none)"
            with self.srv.lock:
                n = len([s for s in self.srv.streams if t in s.names])
            log("%s version %d: %s%s" % (SHORT[t], self.srv.versions[t], names,
                                         "" if first else " -> pushed to %d stream(s)" % n))

    def poll_dir(self, first=False):
        try:
            digest, files = read_dir(self.dir)
        except BadSnapshot as e:  # directory gone / a file vanished: report once
            digest, files = "unreadable: %s" % e, None
        if digest == self.digest or digest == self.bad_digest:
            return True
        try:
            if files is None:
                raise BadSnapshot(digest)
            snap = parse_snapshot(files)
        except BadSnapshot as e:
            if first:
                log("cannot serve %s:\n  %s" % (self.dir, e))
                return False
            if digest != self.bad_digest:
                log("%s rejected, the previous resources keep being served:\n  %s" % (self.dir, e))
                self.bad_digest = digest
            return True
        if not first:
            log("change in %s" % self.dir)
        self.digest, self.bad_digest = digest, None
        self.apply(snap, first)
        return True

    def poll_requests(self):
        with self.srv.lock:
            new = self.srv.requests[self.seen_requests:]
            self.seen_requests = len(self.srv.requests)
            active = len([s for s in self.srv.streams if not s.closed])
        for r in new:
            if r["stream"] not in self.streams_seen:
                self.streams_seen.add(r["stream"])
                node = r["node"][0] if r["node"] else "?"
                log("stream %d opened by node '%s'" % (r["stream"], node))
            t = SHORT.get(r["type"], r["type"])
            if r["error"]:
                log("<- %s NACK of nonce %s (skiff keeps version '%s'): %s" %
                    (t, r["nonce"], r["version"], r["error"]))
            elif r["nonce"]:
                log("<- %s ACK version %s (nonce %s)" % (t, r["version"], r["nonce"]))
            else:
                log("<- %s subscribe %s" % (t, ", ".join(r["names"]) or "(wildcard)"))
        if active != self.active:
            if active < self.active:
                log("%d stream(s) open (a skiff disconnected)" % active)
            self.active = active

    def run(self):
        if not self.poll_dir(first=True):
            return 1
        self.srv.start()
        log("serving %s on 127.0.0.1:%d (ADS), watching for changes every %gs" %
            (self.dir, self.args.port, self.args.poll))
        while True:
            time.sleep(self.args.poll)
            self.poll_requests()
            self.poll_dir()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resources", default=str(HERE / "resources"),
                    help="directory of resource files (default: %(default)s)")
    ap.add_argument("--port", type=int, default=18000, help="gRPC port on 127.0.0.1 (18000)")
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between directory scans")
    ap.add_argument("--proto-out", help="where protoc writes the Python classes "
                    "(default: a temporary directory, removed on exit)")
    args = ap.parse_args()
    tmp = None
    if not args.proto_out:
        tmp = args.proto_out = tempfile.mkdtemp(prefix="skiff-xds-py-")
    if shutil.which("protoc") is None:
        sys.exit("control_plane.py: protoc is missing (apt-get install protobuf-compiler)")
    # SIGTERM (run.sh's cleanup, kill PID) ends like Ctrl-C: streams closed, temp dir removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cp = None
    try:
        xds_server.load_protos(args.proto_out)
        if not Path(args.resources).is_dir():
            log("%s is not a directory" % args.resources)
            return 1
        cp = ControlPlane(args)
        return cp.run()
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:  # cannot bind
        log(str(e))
        return 1
    finally:
        if cp is not None:
            cp.srv.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
