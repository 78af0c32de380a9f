#!/usr/bin/python3
"""Reference xDS control plane for skiff's tests: SotW ADS over python3-grpcio.

The gRPC service is registered with a generic handler and identity
(de)serializers, so the wire bytes are ours: DiscoveryRequest/Response are
(de)serialized with python protobuf classes generated at test time from the
repository's own proto/ files (`protoc -Iproto --python_out=DIR proto/*.proto`;
see load_protos). Resources are given as proto-JSON dicts (the same shape as the
bootstrap YAML, "@type" for Any) or as messages.

Two services on one server, same behaviour: ADS
(/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources)
and SDS (/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets, Secrets
only, as istio-agent serves it); each request records which one ("service").

Server behaviour (like go-control-plane / istiod):
  * LDS/CDS: every response carries the full set; RDS/EDS: the requested names
    that exist.
  * A stream gets a response for a type on its first request for that type and
    whenever the subscription (resource_names) changes, once the type was set
    at least once (before that: no answer, as go-control-plane without a
    snapshot); ACK/NACK requests get no answer. set()/update() push the new
    state to every open stream; push() re-sends it unchanged.
  * Every request is recorded (type, version_info, nonce, names, error_detail)
    so tests can check ACKs and NACKs.
  * resend_on_nack(type, n): behave like go-control-plane (no NACK detection):
    answer each of the next n NACKs of that type at once with the same state
    and a fresh nonce (a NACK loop, bounded by n).
  * Listens on 127.0.0.1:port, or on a Unix socket (uds=PATH), plaintext or
    TLS (tls=(cert_pem, key_pem[, client_ca_pem]): grpcio ssl credentials; with
    a client CA the client certificate is required).

Usable in-process (XdsServer) or standalone:
    xds_server.py --port 18000 --resources FILE.json
where FILE.json maps type ("clusters", "endpoints", "listeners", "routes", "secrets") to a
list of proto-JSON resources.
"""
import argparse
import importlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent.parent

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = "StreamAggregatedResources"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
SDS_METHOD = "StreamSecrets"
PREFIX = "type.googleapis.com/"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
TYPES = {"clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER, "routes": ROUTE,
         "secrets": SECRET}
WILDCARD = (CLUSTER, LISTENER)

PB = None  # namespace of the generated modules, set by load_protos()


class _Mods:
    pass


def load_protos(out_dir):
    """Generate python classes from proto/ into out_dir (once) and import them."""
    global PB
    if PB is not None:
        return PB
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.name) for p in (REPO / "proto").glob("*.proto"))
    subprocess.run(["protoc", "-I" + str(REPO / "proto"), "--python_out=" + str(out_dir)] + protos,
                   check=True, cwd=str(REPO / "proto"))
    sys.path.insert(0, str(out_dir))
    m = _Mods()
    # every generated module registers its types in the default pool (needed
    # for "@type" in json_format)
    for p in out_dir.rglob("*_pb2.py"):
        rel = p.relative_to(out_dir).with_suffix("")
        importlib.import_module(".".join(rel.parts))
    m.discovery = importlib.import_module("envoy.service.discovery.v3_pb2")
    m.cluster = importlib.import_module("envoy.config.cluster.v3_pb2")
    m.endpoint = importlib.import_module("envoy.config.endpoint.v3_pb2")
    m.listener = importlib.import_module("envoy.config.listener.v3_pb2")
    m.route = importlib.import_module("envoy.config.route.v3_pb2")
    m.tls = importlib.import_module("envoy.extensions.transport_sockets.tls.v3_pb2")
    m.any = importlib.import_module("google.protobuf_pb2")
    from google.protobuf import json_format
    m.json_format = json_format
    m.cls = {CLUSTER: m.cluster.Cluster, ENDPOINT: m.endpoint.ClusterLoadAssignment,
             LISTENER: m.listener.Listener, ROUTE: m.route.RouteConfiguration,
             SECRET: m.tls.Secret}
    PB = m
    return m


def _name(type_url, msg):
    return msg.cluster_name if type_url == ENDPOINT else msg.name


def to_any(type_url, res):
    """dict (proto JSON) | message | raw bytes -> (name, Any)."""
    if isinstance(res, (bytes, bytearray)):
        return None, PB.any.Any(type_url=type_url, value=bytes(res))
    if isinstance(res, dict):
        res = PB.json_format.ParseDict(res, PB.cls[type_url]())
    return _name(type_url, res), PB.any.Any(type_url=type_url, value=res.SerializeToString())


class _Stream:
    def __init__(self, server, peer):
        self.server = server
        self.peer = peer
        self.q = queue.Queue()
        self.names = {}     # type -> list of names (subscription)
        self.nonce = 0
        self.closed = False

    def send(self, type_url):
        """Queue the current state of a type (caller holds server.lock)."""
        srv = self.server
        res = srv.resources.get(type_url, {})
        if type_url in WILDCARD:
            items = list(res.values())
        else:
            items = [res[n] for n in self.names.get(type_url, []) if n in res]
        self.nonce += 1
        resp = PB.discovery.DiscoveryResponse(
            version_info=str(srv.versions.get(type_url, 0)), type_url=type_url,
            nonce="%d-%d" % (srv.stream_seq, self.nonce))
        for _, a in items:
            resp.resources.append(a)
        srv.responses.append({"type": type_url, "version": resp.version_info, "nonce": resp.nonce,
                              "n": len(items)})
        self.q.put(resp.SerializeToString())


class XdsServer:
    def __init__(self, port, proto_dir, uds=None, tls=None):
        load_protos(proto_dir)
        self.port = port
        self.uds = uds
        self.tls = tls
        self.nack_resend = {}   # type -> NACKs still to be answered by a resend
        self.resends = 0
        self.lock = threading.Lock()
        self.resources = {t: {} for t in TYPES.values()}   # type -> name -> (name, Any)
        self.versions = {t: 0 for t in TYPES.values()}
        self.requests = []    # dicts: type, version, nonce, names, error, node, stream
        self.responses = []
        self.streams = []
        self.stream_seq = 0
        self.connections = 0
        self.grpc = None

    # ---- state -------------------------------------------------------------
    def set(self, type_url, resources, push=True, version=None):
        """Replace every resource of a type (list of dicts/messages/bytes) and push."""
        with self.lock:
            d = {}
            for i, r in enumerate(resources):
                name, a = to_any(type_url, r)
                d[name if name is not None else "raw-%d" % i] = (name, a)
            self.resources[type_url] = d
            self.versions[type_url] = version if version is not None else self.versions[type_url] + 1
            if push:
                for s in self.streams:
                    if type_url in s.names:
                        s.send(type_url)

    def update(self, type_url, resources, push=True):
        """Add/replace some resources of a type, keep the others."""
        with self.lock:
            for r in resources:
                name, a = to_any(type_url, r)
                self.resources[type_url][name] = (name, a)
            self.versions[type_url] += 1
            if push:
                for s in self.streams:
                    if type_url in s.names:
                        s.send(type_url)

    def resend_on_nack(self, type_url, n):
        """Answer the next n NACKs of type_url at once with the same state."""
        with self.lock:
            self.nack_resend[type_url] = n

    def push(self, type_url):
        """Re-send the current state (same version, same bytes) with a fresh nonce."""
        with self.lock:
            for s in self.streams:
                if type_url in s.names:
                    s.send(type_url)

    # ---- observation -------------------------------------------------------
    def acks(self, type_url):
        with self.lock:
            return [r for r in self.requests if r["type"] == type_url and r["nonce"] and not r["error"]]

    def nacks(self, type_url):
        with self.lock:
            return [r for r in self.requests if r["type"] == type_url and r["error"]]

    def last_response(self, type_url):
        with self.lock:
            rs = [r for r in self.responses if r["type"] == type_url]
            return rs[-1] if rs else None

    def active_streams(self):
        with self.lock:
            return len([s for s in self.streams if not s.closed])

    # ---- gRPC --------------------------------------------------------------
    def _handle_sds(self, request_iterator, context):
        return self._handle(request_iterator, context, service="sds")

    def _handle(self, request_iterator, context, service="ads"):
        with self.lock:
            self.stream_seq += 1
            s = _Stream(self, context.peer())
            s.service = service
            seq = self.stream_seq
            self.streams.append(s)

        def reader():
            try:
                for raw in request_iterator:
                    rq = PB.discovery.DiscoveryRequest.FromString(raw)
                    with self.lock:
                        self.requests.append({
                            "type": rq.type_url, "version": rq.version_info,
                            "nonce": rq.response_nonce, "names": list(rq.resource_names),
                            "error": rq.error_detail.message if rq.HasField("error_detail") else None,
                            "node": (rq.node.id, rq.node.cluster, rq.node.user_agent_name)
                            if rq.HasField("node") else None,
                            "stream": seq, "service": service})
                        if service == "sds" and rq.type_url != SECRET:
                            # the SecretDiscoveryService carries Secrets only
                            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                          "SDS stream: unexpected type %s" % rq.type_url)
                        names = list(rq.resource_names)
                        if (rq.HasField("error_detail")
                                and self.nack_resend.get(rq.type_url, 0) > 0):
                            self.nack_resend[rq.type_url] -= 1
                            self.resends += 1
                            s.send(rq.type_url)
                        first = rq.type_url not in s.names
                        changed = not first and sorted(names) != sorted(s.names[rq.type_url])
                        s.names[rq.type_url] = names
                        # like go-control-plane: nothing is sent for a type that
                        # was never set (no snapshot yet)
                        if (rq.type_url in TYPES.values() and (first or changed)
                                and self.versions.get(rq.type_url, 0) > 0):
                            s.send(rq.type_url)
            except Exception:  # stream cancelled / server stopping
                pass
            finally:
                s.q.put(None)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            while True:
                item = s.q.get()
                if item is None or not context.is_active():
                    return
                yield item
        finally:
            with self.lock:
                s.closed = True
                if s in self.streams:
                    self.streams.remove(s)

    def start(self):
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            METHOD: grpc.stream_stream_rpc_method_handler(self._handle)})
        sds = grpc.method_handlers_generic_handler(SDS_SERVICE, {
            SDS_METHOD: grpc.stream_stream_rpc_method_handler(self._handle_sds)})
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.grpc.add_generic_rpc_handlers((handler, sds))
        addr = ("unix:" + self.uds) if self.uds else "127.0.0.1:%d" % self.port
        if self.tls:
            cert, key = self.tls[0], self.tls[1]
            ca = self.tls[2] if len(self.tls) > 2 else None
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                require_client_auth=ca is not None)
            bound = self.grpc.add_secure_port(addr, creds)
        else:
            bound = self.grpc.add_insecure_port(addr)
        if (self.uds and bound != 1) or (not self.uds and bound != self.port):
            raise RuntimeError("cannot bind %s" % addr)
        self.grpc.start()
        return self

    def stop(self):
        """Kill the server: every stream ends, the port closes."""
        if self.grpc is not None:
            with self.lock:
                for s in self.streams:
                    s.q.put(None)
            self.grpc.stop(0).wait(5)
            self.grpc = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18000)
    ap.add_argument("--resources", help="JSON file: {clusters|endpoints|listeners|routes: [...]}")
    ap.add_argument("--uds", help="listen on this Unix socket instead of 127.0.0.1:PORT")
    ap.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="... and this key (PEM)")
    ap.add_argument("--tls-ca", help="require client certificates signed by this CA (PEM)")
    ap.add_argument("--proto-out", default=os.path.join("/tmp", "skiff-xds-py-%d" % os.getpid()))
    a = ap.parse_args()
    tls = None
    if a.tls_cert:
        tls = (Path(a.tls_cert).read_bytes(), Path(a.tls_key).read_bytes())
        if a.tls_ca:
            tls += (Path(a.tls_ca).read_bytes(),)
    srv = XdsServer(a.port, a.proto_out, uds=a.uds, tls=tls).start()
    if a.resources:
        spec = json.loads(Path(a.resources).read_text())
        for k, t in TYPES.items():
            if k in spec:
                srv.set(t, spec[k])
    print("xds server on %s%s" % (("unix:" + a.uds) if a.uds else "127.0.0.1:%d" % a.port,
                                  " (TLS)" if tls else ""), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
