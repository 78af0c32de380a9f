"""xDS (SotW ADS) end to end: the reference control plane (xds_server.py, python3-grpcio)
pushes listeners, routes, clusters and endpoints to a real skiff process."""
import shutil
import time

import pytest

import helpers
from helpers import RawConn, admin_get, curl, free_port, sockaddr, wait_for

xds_server = pytest.importorskip("xds_server")

pytestmark = pytest.mark.skipif(shutil.which("protoc") is None,
                                reason="protoc not installed (apt-get install protobuf-compiler)")

CDS, EDS, LDS, RDS = xds_server.CLUSTER, xds_server.ENDPOINT, xds_server.LISTENER, xds_server.ROUTE


@pytest.fixture(scope="session")
def proto_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("xds-py")
    xds_server.load_protos(d)
    return d


@pytest.fixture
def xds(proto_dir):
    servers = []

    def make(port=None):
        s = xds_server.XdsServer(port or free_port(), proto_dir).start()
        servers.append(s)
        return s

    make.servers = servers
    yield make
    for s in servers:
        s.stop()


# ---- resources ---------------------------------------------------------------------------

def bootstrap(xds_port, admin_port):
    return {
        "node": {"id": "sidecar~127.0.0.1~t.default~default.svc.cluster.local", "cluster": "t.default"},
        "admin": {"address": sockaddr(admin_port)},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [helpers.cluster("xds_cluster", [xds_port])]},
    }


def eds_cluster(name, **extra):
    c = {"name": name, "type": "EDS", "connect_timeout": "1s",
         "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": name + "-svc"}}
    c.update(extra)
    return c


def cla(name, ports):
    return {"cluster_name": name + "-svc",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sockaddr(p)}} for p in ports]}]}


def rds_listener(name, port, route_name):
    l = helpers.http_listener(name, port, [])
    tc = l["filter_chains"][0]["filters"][0]["typed_config"]
    del tc["route_config"]
    tc["rds"] = {"route_config_name": route_name, "config_source": {"ads": {}}}
    return l


def route_config(name, cluster, prefix="/"):
    return {"name": name,
            "virtual_hosts": [helpers.vhost("vh", ["*"], [helpers.route(prefix, cluster)])]}


def served_by(port, path="/"):
    r = curl("-s", "-o", "/dev/null", "-w", "%{http_code} ", "-D", "-", "http://127.0.0.1:%d%s" % (port, path))
    out = r.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.lower().startswith("x-served-by:"):
            return line.split(":", 1)[1].strip()
    return out.strip().split()[-1] if out.strip() else None


def config_version(s):
    st, body = admin_get(s.admin_port, "/server_info")
    assert st == 200
    import json
    return json.loads(body)["config_version"]


class Env:
    """One control plane + skiff + two upstreams, config pushed over ADS."""

    def __init__(self, xds, skiff_factory, upstreams):
        self.srv = xds()
        self.u1, self.u2 = upstreams("u1"), upstreams("u2")
        self.lp, self.ap = free_port(), free_port()
        self.skiff = skiff_factory(bootstrap(self.srv.port, self.ap), port=self.lp,
                                   admin_port=self.ap, wait=False, args=["-l", "debug"])

    def push_all(self, route_cluster="web1"):
        self.srv.set(CDS, [eds_cluster("web1"), eds_cluster("web2")])
        self.srv.set(EDS, [cla("web1", [self.u1.port]), cla("web2", [self.u2.port])])
        self.srv.set(LDS, [rds_listener("ingress", self.lp, "r1")])
        self.srv.set(RDS, [route_config("r1", route_cluster)])

    def wait_ready(self):
        self.skiff.wait_ready()

    def acked(self, type_url, version):
        return wait_for(lambda: any(a["version"] == str(version) for a in self.srv.acks(type_url)),
                        timeout=10)


@pytest.fixture
def env(xds, skiff_factory, upstreams):
    return Env(xds, skiff_factory, upstreams)


# ---- tests ----------------------------------------------------------------------------------

def test_full_config_over_ads_and_warming(env):
    srv = env.srv
    # connected and subscribed (CDS + LDS wildcard), but nothing delivered yet: not ready
    assert wait_for(lambda: len(srv.requests) >= 2, timeout=10), env.skiff.log()
    first = srv.requests[0]
    assert first["type"] == CDS and first["names"] == [] and first["nonce"] == ""
    assert first["node"] == ("sidecar~127.0.0.1~t.default~default.svc.cluster.local", "t.default", "skiff")
    assert env.skiff.ready_status() == 503

    # clusters without endpoints and a listener without its routes: still warming
    srv.set(CDS, [eds_cluster("web1"), eds_cluster("web2")])
    srv.set(LDS, [rds_listener("ingress", env.lp, "r1")])
    assert env.acked(CDS, 1) and env.acked(LDS, 1)
    # EDS and RDS subscriptions follow from the clusters and the HCM
    assert wait_for(lambda: any(r["type"] == EDS and sorted(r["names"]) == ["web1-svc", "web2-svc"]
                                for r in srv.requests))
    assert wait_for(lambda: any(r["type"] == RDS and r["names"] == ["r1"] for r in srv.requests))
    time.sleep(0.3)
    assert env.skiff.ready_status() == 503

    srv.set(EDS, [cla("web1", [env.u1.port]), cla("web2", [env.u2.port])])
    assert env.acked(EDS, 1)
    assert env.skiff.ready_status() == 503
    srv.set(RDS, [route_config("r1", "web1")])
    env.wait_ready()
    assert env.acked(RDS, 1)
    assert served_by(env.lp) == "u1"

    # every ACK echoes the nonce of the response it answers
    for t in (CDS, EDS, LDS, RDS):
        last = srv.last_response(t)
        assert any(a["nonce"] == last["nonce"] and a["version"] == last["version"] for a in srv.acks(t)), t


def test_route_only_change_keeps_connection(env):
    env.push_all("web1")
    env.wait_ready()
    with RawConn(env.lp) as c:
        r = c.request("GET", "/a")
        assert r.status == 200 and r.header("x-served-by") == "u1"
        env.srv.set(RDS, [route_config("r1", "web2")])
        assert env.acked(RDS, 2)
        time.sleep(0.2)
        r = c.request("GET", "/b")
        assert r.status == 200 and r.header("x-served-by") == "u2"
        assert not c.is_closed(timeout=0.2)
    assert served_by(env.lp) == "u2"


def test_invalid_cluster_nack_keeps_serving(env):
    env.push_all("web1")
    env.wait_ready()
    v_before = config_version(env.skiff)
    # one good new cluster, one with an unknown lb_policy value
    bad = eds_cluster("bad", lb_policy=42)
    env.srv.set(CDS, [eds_cluster("web1"), eds_cluster("web2"), eds_cluster("web3"), bad])
    assert wait_for(lambda: env.srv.nacks(CDS), timeout=10), env.skiff.log()
    n = env.srv.nacks(CDS)[-1]
    assert "Cluster 'bad'" in n["error"] and "lb_policy" in n["error"], n
    assert n["version"] == "1"  # the last accepted version
    assert "web3" not in n["error"]
    # the valid part was applied: web3 is subscribed for EDS; traffic keeps flowing
    assert wait_for(lambda: any(r["type"] == EDS and "web3-svc" in r["names"] for r in env.srv.requests))
    assert served_by(env.lp) == "u1"
    assert env.skiff.ready_status() == 200
    assert config_version(env.skiff) > v_before

    # a route pointing at an invalid (rejected) cluster is fine; a broken route config is not
    bad_rc = route_config("r1", "web1")
    bad_rc["virtual_hosts"][0]["routes"][0]["route"]["timeout"] = "-1s"
    env.srv.set(RDS, [bad_rc])
    assert wait_for(lambda: env.srv.nacks(RDS), timeout=10), env.skiff.log()
    n = env.srv.nacks(RDS)[-1]
    assert "RouteConfiguration 'r1'" in n["error"], n
    assert n["version"] == "1"
    assert served_by(env.lp) == "u1"


def test_eds_update_moves_traffic(env):
    env.push_all("web1")
    env.wait_ready()
    assert served_by(env.lp) == "u1"
    env.srv.set(EDS, [cla("web1", [env.u2.port]), cla("web2", [env.u2.port])])
    assert env.acked(EDS, 2)
    assert wait_for(lambda: served_by(env.lp) == "u2", timeout=5)


def test_removed_listener_stops_accepting(env):
    lp2 = free_port()
    env.srv.set(CDS, [eds_cluster("web1"), eds_cluster("web2")])
    env.srv.set(EDS, [cla("web1", [env.u1.port]), cla("web2", [env.u2.port])])
    env.srv.set(LDS, [rds_listener("ingress", env.lp, "r1"), rds_listener("second", lp2, "r2")])
    env.srv.set(RDS, [route_config("r1", "web1"), route_config("r2", "web2")])
    env.wait_ready()
    assert wait_for(lambda: served_by(lp2) == "u2", timeout=5)
    env.srv.set(LDS, [rds_listener("ingress", env.lp, "r1")])
    assert env.acked(LDS, 2)
    assert wait_for(lambda: not helpers.wait_port(lp2, 0.05), timeout=10)
    assert served_by(env.lp) == "u1"
    # r2 is no longer referenced: unsubscribed
    assert wait_for(lambda: any(r["type"] == RDS and r["names"] == ["r1"] for r in env.srv.requests))


def test_control_plane_restart(env, xds):
    env.push_all("web1")
    env.wait_ready()
    port = env.srv.port
    versions = {t: str(env.srv.versions[t]) for t in (CDS, EDS, LDS, RDS)}
    env.srv.stop()
    time.sleep(1.0)
    # disconnected: the last good config keeps serving
    assert served_by(env.lp) == "u1"
    assert env.skiff.ready_status() == 200
    assert "connection to" in env.skiff.log()

    # the control plane comes back (same port, same state, route changed)
    srv2 = xds(port)
    srv2.set(CDS, [eds_cluster("web1"), eds_cluster("web2")], version=int(versions[CDS]))
    srv2.set(EDS, [cla("web1", [env.u1.port]), cla("web2", [env.u2.port])], version=int(versions[EDS]))
    srv2.set(LDS, [rds_listener("ingress", env.lp, "r1")], version=int(versions[LDS]))
    srv2.set(RDS, [route_config("r1", "web2")], version=5)
    assert wait_for(lambda: srv2.active_streams() >= 1, timeout=40), env.skiff.log()
    # resubscribed every type with the last accepted versions and no nonce
    assert wait_for(lambda: {r["type"] for r in srv2.requests if r["nonce"] == ""} == {CDS, EDS, LDS, RDS},
                    timeout=10), srv2.requests
    for r in srv2.requests:
        if r["nonce"] == "":
            assert r["version"] == versions[r["type"]], r
    assert wait_for(lambda: served_by(env.lp) == "u2", timeout=10)


def test_identical_repush_costs_nothing(env):
    env.push_all("web1")
    env.wait_ready()
    v = config_version(env.skiff)
    nacks = len(env.srv.acks(CDS))
    for t in (CDS, EDS, LDS, RDS):
        env.srv.push(t)
    assert wait_for(lambda: len(env.srv.acks(CDS)) > nacks, timeout=10)
    assert wait_for(lambda: all(env.srv.acks(t)[-1]["nonce"] == env.srv.last_response(t)["nonce"]
                                for t in (CDS, EDS, LDS, RDS)), timeout=10)
    assert config_version(env.skiff) == v
    assert served_by(env.lp) == "u1"
