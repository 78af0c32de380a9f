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

    def make(port=None, **kw):
        s = xds_server.XdsServer(port or free_port(), proto_dir, **kw).start()
        servers.append(s)
        return s

    make.servers = servers
    yield make
    for s in servers:
        s.stop()


# ---- resources ---------------------------------------------------------------------------

def bootstrap(xds_port, admin_port, xds_cluster=None):
    return {
        "node": {"id": "sidecar~127.0.0.1~t.default~default.svc.cluster.local", "cluster": "t.default"},
        "admin": {"address": sockaddr(admin_port)},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [xds_cluster or helpers.cluster("xds_cluster", [xds_port])]},
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

    def __init__(self, xds, skiff_factory, upstreams, srv_kw=None, xds_cluster=None):
        self.srv = xds(**(srv_kw or {}))
        self.u1, self.u2 = upstreams("u1"), upstreams("u2")
        self.lp, self.ap = free_port(), free_port()
        self.skiff = skiff_factory(bootstrap(self.srv.port, self.ap, xds_cluster), port=self.lp,
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


def two_route_config(name):
    return {"name": name, "virtual_hosts": [helpers.vhost("vh", ["*"], [
        helpers.route("/one", "web1"), helpers.route("/two", "web2")])]}


def test_eds_only_update_is_incremental(env):
    """An EDS response that only changes known ClusterLoadAssignments is applied by
    deriving the published snapshot (no full build): traffic moves, the other
    cluster keeps its pooled upstream connection, versions are per resource, a bad
    ClusterLoadAssignment is NACKed by name, and full builds in between reset the
    derivation base."""
    s = env.skiff
    env.push_all()
    env.srv.set(RDS, [two_route_config("r1")])
    env.wait_ready()
    assert wait_for(lambda: served_by(env.lp, "/one") == "u1" and served_by(env.lp, "/two") == "u2")
    assert xstat(s, "eds.update_incremental") == 0
    with RawConn(env.lp) as c:
        r = c.request("GET", "/two")
        assert r.status == 200 and r.header("x-served-by") == "u2"
        conn_two = r.header("x-conn-id")
        # web1 -> u2 (web2 unchanged)
        env.srv.set(EDS, [cla("web1", [env.u2.port]), cla("web2", [env.u2.port])])
        assert env.acked(EDS, 2)
        assert xstat(s, "eds.update_incremental") == 1
        r = c.request("GET", "/one")
        assert r.status == 200 and r.header("x-served-by") == "u2"
        r = c.request("GET", "/two")
        assert r.status == 200 and r.header("x-conn-id") == conn_two  # pooled connection kept
        assert not c.is_closed(timeout=0.1)
    types, _ = xds_status(s)
    vers = {x["name"]: x["version_info"] for x in types["EDS"]["resources"]}
    assert vers == {"web1-svc": "2", "web2-svc": "1"}, vers

    # a bad ClusterLoadAssignment: NACKed by name, the old endpoints keep serving
    bad = cla("web1", [env.u1.port])
    bad["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = "not-an-ip"
    env.srv.set(EDS, [bad, cla("web2", [env.u2.port])])
    assert wait_for(lambda: env.srv.nacks(EDS), timeout=10), s.log()
    n = env.srv.nacks(EDS)[-1]
    assert "ClusterLoadAssignment 'web1-svc'" in n["error"], n
    assert n["version"] == "2"
    assert xstat(s, "eds.update_incremental") == 1
    assert served_by(env.lp, "/one") == "u2"

    # a CDS change (full build) in between: the next EDS update derives from it
    env.srv.set(CDS, [eds_cluster("web1", connect_timeout="2s"), eds_cluster("web2")])
    assert env.acked(CDS, 2)
    env.srv.set(EDS, [cla("web1", [env.u1.port]), cla("web2", [env.u1.port])])
    assert env.acked(EDS, 4)
    assert xstat(s, "eds.update_incremental") == 2
    assert wait_for(lambda: served_by(env.lp, "/one") == "u1" and served_by(env.lp, "/two") == "u1")
    # many alternating EDS updates: each applied, traffic always answered
    for i in range(20):
        a, b = (env.u1.port, env.u2.port) if i % 2 else (env.u2.port, env.u1.port)
        env.srv.set(EDS, [cla("web1", [a]), cla("web2", [b])])
        assert env.acked(EDS, 5 + i)
        want = "u1" if i % 2 else "u2"
        assert wait_for(lambda: served_by(env.lp, "/one") == want, timeout=5)
    assert xstat(s, "eds.update_incremental") == 22
    assert s.ready_status() == 200


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


# ---- xDS stats and /config_dump --------------------------------------------------------------

def fnv53(s):
    """The `version` gauge: FNV-1a 64 of version_info, low 53 bits."""
    h = 1469598103934665603
    for c in s.encode():
        h ^= c
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & ((1 << 53) - 1)


def stats(s):
    st, body = admin_get(s.admin_port, "/stats")
    assert st == 200
    out = {}
    for line in body.splitlines():
        k, _, v = line.partition(": ")
        out[k] = v
    return out


def xstat(s, name):
    return int(stats(s)[name])


def prom(s):
    st, body = admin_get(s.admin_port, "/stats/prometheus")
    assert st == 200
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = v
    return out


def xds_status(s):
    import json
    st, body = admin_get(s.admin_port, "/config_dump")
    assert st == 200
    d = json.loads(body)
    return {t["type"]: t for t in d["xds_status"]["types"]}, d["xds_status"]


PREFIX = {"CDS": "cluster_manager.cds", "EDS": "eds", "LDS": "listener_manager.lds", "RDS": "rds"}


def test_stats_and_config_dump_after_pushes_and_nacks(env):
    env.push_all("web1")
    env.wait_ready()
    s = env.skiff
    st = stats(s)
    assert st["control_plane.connected_state"] == "1"
    # exactly one response per type so far, each accepted
    for t, p in PREFIX.items():
        assert st[p + ".update_attempt"] == "1", (t, st)
        assert st[p + ".update_success"] == "1", t
        assert st[p + ".update_rejected"] == "0", t
        assert st[p + ".update_damped"] == "0", t
        assert st[p + ".init_fetch_timeout"] == "0", t
        assert int(st[p + ".version"]) == fnv53("1"), t
        assert int(st[p + ".update_time"]) > 1600000000000, t

    types, top = xds_status(s)
    assert top["connected"] is True and top["warm"] is True
    cds = types["CDS"]
    assert cds["version_info"] == "1" and cds["last_nack"] is None
    assert sorted(r["name"] for r in cds["resources"]) == ["web1", "web2"]
    assert all(r["version_info"] == "1" and r["last_updated"].endswith("Z") for r in cds["resources"])
    assert types["RDS"]["resources"][0]["name"] == "r1"
    assert types["RDS"]["waiting"] == [] and types["RDS"]["does_not_exist"] == []

    # partly bad CDS (version 2): web3 applied, 'bad' rejected
    bad = eds_cluster("bad", lb_policy=42)
    env.srv.set(CDS, [eds_cluster("web1"), eds_cluster("web2"), eds_cluster("web3"), bad])
    assert wait_for(lambda: env.srv.nacks(CDS), timeout=10), s.log()
    assert wait_for(lambda: xstat(s, "cluster_manager.cds.update_rejected") == 1)
    st = stats(s)
    assert st["cluster_manager.cds.update_attempt"] == "2"
    assert st["cluster_manager.cds.update_success"] == "1"
    assert int(st["cluster_manager.cds.version"]) == fnv53("1")  # NACK keeps the accepted version
    types, _ = xds_status(s)
    cds = types["CDS"]
    assert cds["version_info"] == "1"
    assert cds["last_nack"]["version_info"] == "2"
    assert "Cluster 'bad'" in cds["last_nack"]["details"] and "lb_policy" in cds["last_nack"]["details"]
    assert cds["last_nack"]["nonce"] == env.srv.last_response(CDS)["nonce"]
    vers = {r["name"]: r["version_info"] for r in cds["resources"]}
    assert vers == {"web1": "1", "web2": "1", "web3": "2"}, vers
    assert [r["name"] for r in cds["rejected"]] == ["bad"]
    err = cds["rejected"][0]["error_state"]
    assert err["failed_configuration_version"] == "2" and "lb_policy" in err["details"]

    # Prometheus: the same numbers
    p = prom(s)
    assert p["skiff_cluster_manager_cds_update_rejected_total"] == "1"
    assert p["skiff_cluster_manager_cds_update_attempt_total"] == "2"
    assert p["skiff_control_plane_connected_state"] == "1"
    assert int(p["skiff_listener_manager_lds_version"]) == fnv53("1")
    import shutil
    import subprocess
    promtool = shutil.which("promtool")
    if promtool:  # the whole exposition, xDS families included, is valid
        text = admin_get(s.admin_port, "/stats/prometheus")[1]
        assert "# HELP skiff_cluster_manager_cds_update_rejected_total " in text
        r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=30)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()

    # a fixed CDS (version 3) is accepted; the error state of 'bad' goes away
    env.srv.set(CDS, [eds_cluster("web1"), eds_cluster("web2"), eds_cluster("web3")])
    assert env.acked(CDS, 3)
    assert wait_for(lambda: xstat(s, "cluster_manager.cds.update_success") == 2)
    types, _ = xds_status(s)
    assert types["CDS"]["version_info"] == "3" and types["CDS"]["rejected"] == []
    assert int(stats(s)["cluster_manager.cds.version"]) == fnv53("3")

    # control plane gone: disconnected, a network failure counted per subscribed type
    env.srv.stop()
    assert wait_for(lambda: stats(s)["control_plane.connected_state"] == "0", timeout=10)
    st = stats(s)
    for p_ in PREFIX.values():
        assert int(st[p_ + ".update_failure"]) >= 1, p_
    assert xds_status(s)[1]["connected"] is False


# ---- initial_fetch_timeout / does-not-exist -------------------------------------------------

def test_missing_route_config_times_out_to_404(env):
    """A listener whose RouteConfiguration never arrives: after the RDS
    config_source's initial_fetch_timeout it serves with no routes (404 NR)."""
    s = env.skiff
    env.srv.set(CDS, [eds_cluster("web1")])
    env.srv.set(EDS, [cla("web1", [env.u1.port])])
    l = rds_listener("ingress", env.lp, "r1")
    l["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["config_source"]["initial_fetch_timeout"] = "1s"
    env.srv.set(LDS, [l])
    assert env.acked(LDS, 1)
    t0 = time.monotonic()
    assert s.ready_status() == 503
    types, _ = xds_status(s)
    assert types["RDS"]["waiting"] == ["r1"]
    env.wait_ready()
    assert time.monotonic() - t0 >= 0.5  # not before the timeout (1 s from the subscription)
    assert xstat(s, "rds.init_fetch_timeout") == 1
    types, _ = xds_status(s)
    assert types["RDS"]["does_not_exist"] == ["r1"] and types["RDS"]["waiting"] == []
    assert "RouteConfiguration 'r1' not received within initial_fetch_timeout" in s.log()
    r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-D", "-", "http://127.0.0.1:%d/" % env.lp)
    out = r.stdout.decode()
    assert out.endswith("404") and "x-skiff-flags: nr" in out.lower(), out
    # it arrives late: served from then on, without touching the listener
    env.srv.set(RDS, [route_config("r1", "web1")])
    assert env.acked(RDS, 1)
    assert wait_for(lambda: served_by(env.lp) == "u1", timeout=5)
    assert xds_status(s)[0]["RDS"]["does_not_exist"] == []


def test_missing_endpoints_time_out_to_503_uh(env):
    s = env.skiff
    c = eds_cluster("web1")
    c["eds_cluster_config"]["eds_config"]["initial_fetch_timeout"] = "1s"
    env.srv.set(CDS, [c])
    env.srv.set(LDS, [rds_listener("ingress", env.lp, "r1")])
    env.srv.set(RDS, [route_config("r1", "web1")])
    # the EDS subscription is answered with nothing (no such assignment)
    env.srv.set(EDS, [cla("other", [env.u2.port])])
    assert env.acked(RDS, 1)
    assert s.ready_status() == 503
    env.wait_ready()
    assert xstat(s, "eds.init_fetch_timeout") == 1
    assert xds_status(s)[0]["EDS"]["does_not_exist"] == ["web1-svc"]
    r = curl("-s", "-D", "-", "http://127.0.0.1:%d/" % env.lp)
    out = r.stdout.decode(errors="replace")
    assert out.startswith("HTTP/1.1 503") and "UH" in out, out
    env.srv.update(EDS, [cla("web1", [env.u1.port])])
    assert wait_for(lambda: served_by(env.lp) == "u1", timeout=5)


def test_no_cds_lds_answer_times_out(xds, skiff_factory):
    """A control plane that never answers CDS/LDS: after initial_fetch_timeout
    the config is complete without them (/ready 200), as Envoy does."""
    srv = xds()
    lp, ap = free_port(), free_port()
    bs = bootstrap(srv.port, ap)
    bs["dynamic_resources"]["lds_config"]["initial_fetch_timeout"] = "1s"
    bs["dynamic_resources"]["cds_config"]["initial_fetch_timeout"] = "1s"
    s = skiff_factory(bs, port=lp, admin_port=ap, wait=False)
    assert wait_for(lambda: len(srv.requests) >= 2, timeout=10), s.log()
    assert s.ready_status() == 503
    s.wait_ready()
    assert xstat(s, "cluster_manager.cds.init_fetch_timeout") == 1
    assert xstat(s, "listener_manager.lds.init_fetch_timeout") == 1
    types, _ = xds_status(s)
    assert types["CDS"]["initial_fetch_timed_out"] is True
    assert types["LDS"]["initial_fetch_timed_out"] is True


def test_zero_initial_fetch_timeout_waits_forever(env):
    s = env.skiff
    env.srv.set(CDS, [eds_cluster("web1")])
    env.srv.set(EDS, [cla("web1", [env.u1.port])])
    l = rds_listener("ingress", env.lp, "r1")
    l["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["config_source"]["initial_fetch_timeout"] = "0s"
    env.srv.set(LDS, [l])
    assert env.acked(LDS, 1)
    time.sleep(2.0)
    assert s.ready_status() == 503
    assert xstat(s, "rds.init_fetch_timeout") == 0
    env.srv.set(RDS, [route_config("r1", "web1")])
    env.wait_ready()


def test_removed_cluster_is_removed(env):
    env.push_all("web2")
    env.wait_ready()
    assert served_by(env.lp) == "u2"
    env.srv.set(CDS, [eds_cluster("web1")])
    assert env.acked(CDS, 2)
    assert wait_for(lambda: "web2" not in [c["name"] for c in __import__("json").loads(
        admin_get(env.skiff.admin_port, "/config_dump")[1])["clusters"]], timeout=5)
    r = curl("-s", "-D", "-", "http://127.0.0.1:%d/" % env.lp)
    out = r.stdout.decode(errors="replace")
    assert out.startswith("HTTP/1.1 503") and "NC" in out, out
    # EDS for it is unsubscribed
    assert wait_for(lambda: any(r["type"] == EDS and r["names"] == ["web1-svc"] for r in env.srv.requests))


def test_removed_listener_drains_in_flight_request(env, upstreams):
    slow = upstreams("slow")
    env.srv.set(CDS, [eds_cluster("web1"), eds_cluster("slow")])
    env.srv.set(EDS, [cla("web1", [env.u1.port]), cla("slow", [slow.port])])
    env.srv.set(LDS, [rds_listener("ingress", env.lp, "r1")])
    env.srv.set(RDS, [route_config("r1", "slow")])
    env.wait_ready()
    import threading
    result = {}

    def req():
        r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}",
                 "http://127.0.0.1:%d/x?sleep=1.5" % env.lp)
        result["code"] = r.stdout.decode()

    th = threading.Thread(target=req)
    th.start()
    assert wait_for(lambda: slow.counters().get("inflight", 0) >= 1, timeout=5)
    time.sleep(0.3)
    env.srv.set(LDS, [])
    assert env.acked(LDS, 2)
    assert wait_for(lambda: not helpers.wait_port(env.lp, 0.05), timeout=10)
    th.join(10)
    assert result.get("code") == "200", result


# ---- NACK damping ----------------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process, from /proc/PID/stat."""
    import os
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_nack_loop_is_damped(env):
    """A server that resends a rejected config at once on every NACK (like
    go-control-plane): skiff answers the same bytes without re-translating
    them, at a bounded rate, and keeps serving the good config."""
    env.push_all("web1")
    env.wait_ready()
    s = env.skiff
    builds_before = config_version(s)
    cpu0 = cpu_seconds(s.proc.pid)
    env.srv.resend_on_nack(CDS, 5000)  # bounded loop
    env.srv.set(CDS, [eds_cluster("web1"), eds_cluster("web2"), eds_cluster("bad", lb_policy=42)])
    t0 = time.monotonic()
    served = 0
    while time.monotonic() - t0 < 4.0:
        assert served_by(env.lp) == "u1"
        served += 1
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    nacks = len(env.srv.nacks(CDS))
    cpu = cpu_seconds(s.proc.pid) - cpu0
    # burst of 5, then 2 per second (plus slack for scheduling)
    assert 5 <= nacks <= 5 + 2 * elapsed + 4, nacks
    assert cpu < 1.0, cpu
    st = stats(s)
    rejected = int(st["cluster_manager.cds.update_rejected"])
    damped = int(st["cluster_manager.cds.update_damped"])
    # every resend was recognised without a rebuild: only the first was translated
    assert damped == rejected - 1 and rejected >= nacks, (damped, rejected, nacks)
    assert int(st["control_plane.rate_limit_enforced"]) >= 1
    assert config_version(s) == builds_before  # nothing was rebuilt or published
    # every NACK carries the reason and the last accepted version
    assert all("Cluster 'bad'" in n["error"] and n["version"] == "1" for n in env.srv.nacks(CDS))
    # a good version ends the loop
    env.srv.set(CDS, [eds_cluster("web1"), eds_cluster("web2")])
    assert env.acked(CDS, env.srv.versions[CDS])
    assert served_by(env.lp) == "u1"


# ---- control plane over a Unix socket and over TLS ----------------------------------------------

def pipe_cluster(path, **extra):
    c = {"name": "xds_cluster", "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [
             {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(path)}}}}]}]}}
    c.update(extra)
    return c


def test_ads_over_unix_socket(xds, skiff_factory, upstreams, tmp_path):
    sock = tmp_path / "xds.sock"
    env = Env(xds, skiff_factory, upstreams, srv_kw={"uds": str(sock)},
              xds_cluster=pipe_cluster(sock))
    env.push_all("web1")
    env.wait_ready()
    assert served_by(env.lp) == "u1"
    _, top = xds_status(env.skiff)
    assert top["server"] == "unix:%s" % sock and top["connected"] is True
    # a route change over the same stream
    env.srv.set(RDS, [route_config("r1", "web2")])
    assert wait_for(lambda: served_by(env.lp) == "u2", timeout=5)


def test_unix_socket_only_for_the_xds_cluster(skiff_bin, tmp_path):
    """Data-plane clusters cannot point at a Unix socket (skiff does not connect
    upstreams to one): rejected at load, naming the cluster."""
    import subprocess
    bs = bootstrap(1, free_port(), pipe_cluster(tmp_path / "x.sock"))
    bs["static_resources"]["clusters"].append(dict(pipe_cluster(tmp_path / "y.sock"), name="data"))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(helpers.dump(bs))
    r = subprocess.run([skiff_bin, "--validate", "-c", str(cfg)], capture_output=True, timeout=20)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode != 0, out
    assert "static_resources.clusters[1]" in out and "only supported for the xDS (ADS) cluster" in out, out
    # the same file without the data cluster is valid
    bs["static_resources"]["clusters"].pop()
    cfg.write_text(helpers.dump(bs))
    r = subprocess.run([skiff_bin, "--validate", "-c", str(cfg)], capture_output=True, timeout=20)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()


@pytest.fixture(scope="module")
def xds_pki(tmp_path_factory):
    import tls_helpers
    base = tmp_path_factory.mktemp("xds-pki")
    ca = tls_helpers.CA(base, "ca", "xds test CA")
    other = tls_helpers.CA(base, "other", "other CA")
    return {
        "ca": ca,
        "server": ca.issue("cp", ["DNS:localhost", "IP:127.0.0.1"]),
        "client": ca.issue("sidecar", ["URI:spiffe://skiff.local/ns/default/sa/sidecar"]),
        "server_other": other.issue("cp_other", ["DNS:localhost", "IP:127.0.0.1"]),
    }


def tls_cluster(port, ca, client=None, sans=None):
    import tls_helpers
    c = helpers.cluster("xds_cluster", [port])
    c["transport_socket"] = tls_helpers.upstream_tls(ca=ca.pem, cert=client, sans=sans, sni="localhost")
    return c


def test_ads_over_mutual_tls(xds, skiff_factory, upstreams, xds_pki):
    p = xds_pki
    port = free_port()
    creds = (p["server"].cert.read_bytes(), p["server"].key.read_bytes(), p["ca"].pem.read_bytes())
    env = Env(xds, skiff_factory, upstreams, srv_kw={"port": port, "tls": creds},
              xds_cluster=tls_cluster(port, p["ca"], p["client"], sans=[("DNS", "localhost")]))
    env.push_all("web1")
    env.wait_ready()
    assert served_by(env.lp) == "u1"
    assert "(TLS)" in env.skiff.log()
    st = stats(env.skiff)
    assert int(st["tls_handshake_client_ok"]) >= 1
    assert st["control_plane.connected_state"] == "1"
    env.srv.set(RDS, [route_config("r1", "web2")])
    assert wait_for(lambda: served_by(env.lp) == "u2", timeout=5)


def test_ads_tls_untrusted_server_is_refused(xds, skiff_factory, upstreams, xds_pki):
    p = xds_pki
    port = free_port()
    creds = (p["server_other"].cert.read_bytes(), p["server_other"].key.read_bytes())
    env = Env(xds, skiff_factory, upstreams, srv_kw={"port": port, "tls": creds},
              xds_cluster=tls_cluster(port, p["ca"], p["client"]))
    env.push_all("web1")
    assert wait_for(lambda: "TLS handshake with 127.0.0.1:%d failed" % port in env.skiff.log(),
                    timeout=10), env.skiff.log()
    assert env.srv.requests == []
    assert env.skiff.ready_status() == 503
    assert stats(env.skiff)["control_plane.connected_state"] == "0"


# ---- SDS ----------------------------------------------------------------------------------------

SDS = xds_server.SECRET


def cert_secret(name, cert):
    return {"name": name, "tls_certificate": {
        "certificate_chain": {"inline_string": cert.cert.read_text()},
        "private_key": {"inline_string": cert.key.read_text()}}}


def ca_secret(name, ca_pem):
    return {"name": name, "validation_context": {"trusted_ca": {"inline_string": ca_pem.read_text()}}}


def sds_ref(name):
    return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}


def test_sds_listener_certificate_and_rotation(env, xds_pki):
    """A listener whose certificate comes from SDS: not served before the
    Secret arrives, then served with it; a new Secret version rotates the
    certificate for new connections while an open one keeps working."""
    import tls_helpers
    p = xds_pki
    s = env.skiff
    l = rds_listener("ingress", env.lp, "r1")
    l["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": tls_helpers.DTC_TYPE,
                         "common_tls_context": {"tls_certificate_sds_secret_configs": [sds_ref("server-cert")]}}}
    env.srv.set(CDS, [eds_cluster("web1")])
    env.srv.set(EDS, [cla("web1", [env.u1.port])])
    env.srv.set(LDS, [l])
    env.srv.set(RDS, [route_config("r1", "web1")])
    assert env.acked(RDS, 1)
    assert wait_for(lambda: any(r["type"] == SDS and r["names"] == ["server-cert"] for r in env.srv.requests))
    time.sleep(0.3)
    assert s.ready_status() == 503  # warming: waits for its Secret
    assert not helpers.wait_port(env.lp, 0.05)

    env.srv.set(SDS, [cert_secret("server-cert", p["server"])])
    env.wait_ready()
    url = "https://localhost:%d/" % env.lp
    code, _, _ = tls_helpers.curl_parse(tls_helpers.curl_tls(url, ca=p["ca"].pem))
    assert code == 200
    assert tls_helpers.peer_serial(env.lp, "localhost") == p["server"].serial()

    # an open TLS connection, then a new Secret version
    ctx = tls_helpers.ssl_context(p["ca"].pem)
    conn = tls_helpers.TlsConn(env.lp, ctx, server_hostname="localhost")
    assert conn.request("GET", "/a").status == 200
    new = p["ca"].issue("cp2", ["DNS:localhost", "IP:127.0.0.1"])
    env.srv.set(SDS, [cert_secret("server-cert", new)])
    assert env.acked(SDS, 2)
    assert wait_for(lambda: tls_helpers.peer_serial(env.lp, "localhost") == new.serial(), timeout=5)
    assert conn.request("GET", "/b").status == 200  # not closed by the rotation
    conn.close()

    st = stats(s)
    assert st["sds.update_success"] == "2" and st["sds.update_rejected"] == "0"
    types, _ = xds_status(s)
    assert [(r["name"], r["version_info"]) for r in types["SDS"]["resources"]] == [("server-cert", "2")]
    body = admin_get(s.admin_port, "/config_dump")[1]
    assert "BEGIN" not in body and "PRIVATE KEY" not in body  # secrets are never dumped

    # a broken Secret is NACKed; the served certificate stays
    env.srv.set(SDS, [{"name": "server-cert", "tls_certificate": {
        "certificate_chain": {"inline_string": "not a certificate"},
        "private_key": {"inline_string": new.key.read_text()}}}])
    assert wait_for(lambda: env.srv.nacks(SDS), timeout=10), s.log()
    assert tls_helpers.peer_serial(env.lp, "localhost") == new.serial()
    assert xds_status(s)[0]["SDS"]["last_nack"]["version_info"] == "3"


def test_sds_upstream_client_certificate_and_ca(env, xds_pki, skiff_factory):
    """A cluster whose client certificate and trusted CA come from SDS (two
    Secrets; combined validation context: SAN matcher inline, CA from SDS),
    in front of a STRICT mTLS origin (a static skiff that forwards the client
    identity in x-forwarded-client-cert)."""
    import json
    import tls_helpers
    p = xds_pki
    # the origin: STRICT mTLS -> u2, XFCC with the client's URI SAN
    op, oap = free_port(), free_port()
    ol = helpers.http_listener("origin", op, [helpers.vhost("v", ["*"], [helpers.route("/", "up")])],
                               {"forward_client_cert_details": "SANITIZE_SET",
                                "set_current_client_cert_details": {"uri": True}})
    tls_helpers.with_tls(ol, tls_helpers.downstream_tls(p["server"], p["ca"].pem, require_client=True))
    skiff_factory(helpers.bootstrap(oap, [ol], [helpers.cluster("up", [env.u2.port])]),
                  port=op, admin_port=oap)

    secure = helpers.cluster("secure", [op])
    secure["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": tls_helpers.UTC_TYPE, "sni": "localhost",
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [sds_ref("default")],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "DNS", "matcher": {"exact": "localhost"}}]},
                "validation_context_sds_secret_config": sds_ref("ROOTCA")}}}}
    env.srv.set(CDS, [secure])
    env.srv.set(LDS, [rds_listener("ingress", env.lp, "r1")])
    env.srv.set(RDS, [route_config("r1", "secure")])
    assert wait_for(lambda: any(r["type"] == SDS and r["names"] == ["ROOTCA", "default"]
                                for r in env.srv.requests), timeout=10), env.srv.requests
    time.sleep(0.3)
    assert env.skiff.ready_status() == 503  # the cluster waits for its secrets
    env.srv.set(SDS, [cert_secret("default", p["client"]), ca_secret("ROOTCA", p["ca"].pem)])
    env.wait_ready()
    r = curl("-s", "http://127.0.0.1:%d/hello" % env.lp)
    echo = json.loads(r.stdout)
    xfcc = {k.lower(): v for k, v in echo["headers"].items()}.get("x-forwarded-client-cert", "") \
        if isinstance(echo.get("headers"), dict) else str(echo)
    assert "spiffe://skiff.local/ns/default/sa/sidecar" in str(xfcc), echo
    # a CA secret that does not match the origin: handshakes fail (503), config still valid
    other = p["server_other"]
    env.srv.update(SDS, [ca_secret("ROOTCA", other.cert)])  # not a CA of the origin's chain
    assert env.acked(SDS, 2)
    assert wait_for(lambda: curl("-s", "-o", "/dev/null", "-w", "%{http_code}",
                                 "http://127.0.0.1:%d/x" % env.lp).stdout == b"503", timeout=5)


# ---- hot swap without loss ---------------------------------------------------------------------

H2_OPTS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def swap_clusters(gen):
    """CDS state number `gen`: every cluster's config changes with gen (connect_timeout
    and a circuit-breaker threshold), so each CDS push modifies all of them."""
    ct = "%ds" % (1 + gen % 2)
    cb = {"thresholds": [{"max_requests": {"value": 1000 + gen}}]}
    return [eds_cluster("web1", connect_timeout=ct, circuit_breakers=cb),
            eds_cluster("web2", connect_timeout=ct, circuit_breakers=cb),
            eds_cluster("grpc", connect_timeout=ct, circuit_breakers=cb,
                        typed_extension_protocol_options=H2_OPTS)]


def swap_routes(gen):
    target = "web1" if gen % 2 == 0 else "web2"
    return [{"name": "r1", "virtual_hosts": [helpers.vhost("vh", ["*"], [
        helpers.route("/test.Echo/", "grpc", timeout="0s"),
        helpers.route("/", target, response_headers_to_add=[
            {"header": {"key": "x-route-gen", "value": str(gen)}}]),
    ])]}]


def swap_endpoints(gen, u1, u2, u3, grpc_port):
    w1 = [u1] if gen % 2 == 0 else [u1, u3]
    return [cla("web1", w1), cla("web2", [u2]), cla("grpc", [grpc_port])]


def upstream_conns(u):
    return {r["conn"] for r in u.traffic()}


def test_hot_swap_200_pushes_under_load(xds, skiff_factory, upstreams):
    """h2load (4 connections x 8 streams) and a gRPC bidi stream run through skiff while
    the control plane pushes 200 updates (routes, clusters, endpoints in turn): no request
    fails, no stream is reset, no downstream connection is closed, pooled upstream
    connections survive cluster changes."""
    import re
    import subprocess
    import threading

    import grpc
    from grpc_service import Client, serve

    if shutil.which("h2load") is None:
        pytest.skip("h2load not installed")
    srv = xds()
    u1, u2, u3 = upstreams("u1"), upstreams("u2"), upstreams("u3")
    gserver, gport, _ = serve()
    lp, ap = free_port(), free_port()
    s = skiff_factory(bootstrap(srv.port, ap), port=lp, admin_port=ap, wait=False)
    try:
        srv.set(CDS, swap_clusters(0))
        srv.set(EDS, swap_endpoints(0, u1.port, u2.port, u3.port, gport))
        lst = rds_listener("ingress", lp, "r1")
        lst["filter_chains"][0]["filters"][0]["typed_config"]["codec_type"] = "AUTO"
        srv.set(LDS, [lst])
        srv.set(RDS, swap_routes(0))
        s.wait_ready()

        # deterministic part first, on one keep-alive connection:
        # (a) route-only updates never close it; (b) a changed cluster keeps the
        # pooled upstream connection of its healthy host
        with RawConn(lp) as c:
            r = c.request("GET", "/one")
            assert r.status == 200 and r.header("x-served-by") == "u1"
            first_conn = upstream_conns(u1)
            assert len(first_conn) == 1
            destroy0 = s.stat("listener.ingress.downstream_cx_destroy")
            for g in (1, 2, 3, 4):
                srv.set(RDS, swap_routes(g))
                assert wait_for(lambda: any(a["version"] == str(srv.versions[RDS])
                                            for a in srv.acks(RDS)), timeout=10)
                r = c.request("GET", "/r%d" % g)
                assert r.status == 200 and r.header("x-route-gen") == str(g), r.header("x-route-gen")
            assert s.stat("listener.ingress.downstream_cx_destroy") == destroy0
            # back on web1 (gen 4 is even); now change every cluster's config
            srv.set(CDS, swap_clusters(1))
            assert wait_for(lambda: any(a["version"] == str(srv.versions[CDS])
                                        for a in srv.acks(CDS)), timeout=10)
            r = c.request("GET", "/after-cds")
            assert r.status == 200 and r.header("x-served-by") == "u1"
            assert upstream_conns(u1) == first_conn, "a changed cluster dropped its pooled connection"
            assert not c.is_closed(timeout=0.1)
            assert s.stat("listener.ingress.downstream_cx_destroy") == destroy0

        # the load: h2load over h2c + one gRPC bidi stream, while 200 pushes go out
        h2 = subprocess.Popen(["h2load", "-D", "20", "-c", "4", "-m", "8", "-T", "10",
                               "http://127.0.0.1:%d/load" % lp],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        client = Client("127.0.0.1:%d" % lp)
        stop = threading.Event()
        sent = []

        def msgs():
            i = 0
            while not stop.is_set() and i < 5000:
                m = b"m-%d" % i
                sent.append(m)
                yield m
                i += 1
                time.sleep(0.01)

        got, err = [], []

        def run_bidi():
            try:
                for m in client.bidi(msgs(), timeout=60):
                    got.append(m)
            except grpc.RpcError as e:  # pragma: no cover - the failure we look for
                err.append("%s: %s" % (e.code(), e.details()))

        t = threading.Thread(target=run_bidi, daemon=True)
        t.start()
        try:
            assert wait_for(lambda: len(got) >= 5, timeout=10), err
            time.sleep(0.5)
            st0 = s.stats()
            pushes = 0
            gen = 4
            t0 = time.monotonic()
            while pushes < 200 and time.monotonic() - t0 < 25:
                gen += 1
                kind = pushes % 3
                if kind == 0:
                    srv.set(RDS, swap_routes(gen))
                elif kind == 1:
                    srv.set(CDS, swap_clusters(gen))
                else:
                    srv.set(EDS, swap_endpoints(gen, u1.port, u2.port, u3.port, gport))
                pushes += 1
                time.sleep(0.06)
            assert pushes == 200
            for tu in (CDS, EDS, RDS):
                assert wait_for(lambda: any(a["version"] == str(srv.versions[tu])
                                            for a in srv.acks(tu)), timeout=15), tu
            st1 = s.stats()
        finally:
            stop.set()
            t.join(timeout=30)
        out, _ = h2.communicate(timeout=60)
        out = out.decode(errors="replace")
        client.close()

        # every update was accepted (no NACK), and applied as a new config
        for tu in (CDS, EDS, LDS, RDS):
            assert not srv.nacks(tu), srv.nacks(tu)
        # no downstream connection was opened or closed by the pushes
        for k in ("listener.ingress.downstream_cx_total", "listener.ingress.downstream_cx_destroy"):
            assert st1.get(k, 0) == st0.get(k, 0), (k, st0.get(k), st1.get(k))
        # gRPC: the stream lived through all of it, every message echoed in order
        assert not err, err
        assert got == sent and len(got) > 100, (len(got), len(sent))
        # h2load: zero failed / errored, every answer 2xx
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
        assert m, out
        assert int(m.group(4)) > 1000 and m.group(5) == "0" and m.group(6) == "0" \
            and m.group(7) == "0", out
        sc = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        assert sc and sc.group(1) == m.group(4), out
        # routes alternated between web1 and web2, endpoints added/removed u3: all three
        # upstreams served; the pools were kept (bounded by the 32 concurrent streams,
        # not by the 67 cluster changes)
        for u in (u1, u2, u3):
            assert u.traffic(), u.name
        for u in (u1, u2):
            assert len(upstream_conns(u)) <= 40, (u.name, len(upstream_conns(u)))
        assert s.stat("downstream_rq_5xx") == 0
        print("hot swap: %s requests, %d gRPC messages, upstream conns u1=%d u2=%d u3=%d, "
              "config_version %s" % (m.group(4), len(got), len(upstream_conns(u1)),
                                     len(upstream_conns(u2)), len(upstream_conns(u3)),
                                     config_version(s)))
    finally:
        gserver.stop(0)


# ---- file-based dynamic resources (path_config_source) ---------------------------------------

def file_bootstrap(admin_port, lds_path, cds_path, watched_dir=None):
    def src(p):
        pcs = {"path": str(p)}
        if watched_dir:
            pcs["watched_directory"] = {"path": str(watched_dir)}
        return {"path_config_source": pcs, "resource_api_version": "V3"}
    return {
        "node": {"id": "file-node", "cluster": "file"},
        "admin": {"address": sockaddr(admin_port)},
        "dynamic_resources": {"lds_config": src(lds_path), "cds_config": src(cds_path)},
    }


def write_resources(path, type_url, resources, fmt="yaml"):
    """Writes a DiscoveryResponse-shaped file atomically (rename), like a deployment would."""
    import json as _json
    doc = {"resources": [dict(r, **{"@type": type_url}) for r in resources]}
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(_json.dumps(doc) if fmt == "json" else helpers.dump(doc))
    import os
    os.replace(tmp, str(path))


def file_listener(port, cluster, gen=0):
    rc = [helpers.vhost("vh", ["*"], [helpers.route("/", cluster, response_headers_to_add=[
        {"header": {"key": "x-file-gen", "value": str(gen)}}])])]
    return helpers.http_listener("ingress", port, rc)


def test_file_based_lds_cds_reload(skiff_factory, upstreams, tmp_path):
    u1, u2 = upstreams("u1"), upstreams("u2")
    lp, ap = free_port(), free_port()
    lds, cds = tmp_path / "lds.yaml", tmp_path / "cds.json"
    write_resources(cds, CDS, [helpers.cluster("web", [u1.port])], fmt="json")
    write_resources(lds, LDS, [file_listener(lp, "web", 0)])
    s = skiff_factory(file_bootstrap(ap, lds, cds), port=lp, admin_port=ap)
    assert served_by(lp) == "u1"
    assert xstat(s, "cluster_manager.cds.update_success") == 1
    assert xstat(s, "listener_manager.lds.update_success") == 1

    with RawConn(lp) as c:
        r = c.request("GET", "/a")
        assert r.status == 200 and r.header("x-file-gen") == "0"
        destroy0 = s.stat("listener.ingress.downstream_cx_destroy")
        # a route-only change in the LDS file: the open connection carries on, new routes
        write_resources(lds, LDS, [file_listener(lp, "web", 1)])
        assert wait_for(lambda: xstat(s, "listener_manager.lds.update_success") == 2, timeout=10)
        r = c.request("GET", "/b")
        assert r.status == 200 and r.header("x-file-gen") == "1"
        assert not c.is_closed(timeout=0.1)
        assert s.stat("listener.ingress.downstream_cx_destroy") == destroy0

    # the cluster file moves the endpoint
    write_resources(cds, CDS, [helpers.cluster("web", [u2.port])], fmt="json")
    assert wait_for(lambda: served_by(lp) == "u2", timeout=10), s.log()

    # a broken file (YAML error) and an invalid resource: rejected, counted, old config serves
    (tmp_path / "x").write_text("resources: [ {")
    import os
    os.replace(str(tmp_path / "x"), str(cds))
    assert wait_for(lambda: xstat(s, "cluster_manager.cds.update_rejected") == 1, timeout=10), s.log()
    assert "rejected" in s.log() and str(cds) in s.log()
    assert served_by(lp) == "u2"
    write_resources(cds, CDS, [helpers.cluster("web", [u1.port], lb="NO_SUCH_POLICY")], fmt="json")
    assert wait_for(lambda: xstat(s, "cluster_manager.cds.update_rejected") == 2, timeout=10), s.log()
    assert served_by(lp) == "u2"
    write_resources(cds, CDS, [helpers.cluster("web", [u1.port], lb=42)], fmt="json")
    assert wait_for(lambda: xstat(s, "cluster_manager.cds.update_rejected") == 3, timeout=10), s.log()
    assert served_by(lp) == "u2"
    cds_st = xds_status(s)[0]["CDS"]
    assert cds_st["last_nack"] and "lb_policy" in cds_st["last_nack"]["details"], cds_st
    # a listener referring to a cluster that is not there is fine (503 until it exists);
    # a good file applies again
    write_resources(cds, CDS, [helpers.cluster("web", [u1.port])], fmt="json")
    assert wait_for(lambda: served_by(lp) == "u1", timeout=10), s.log()
    assert s.ready_status() == 200
    # a file of the wrong type is rejected
    write_resources(cds, LDS, [file_listener(lp, "web", 9)], fmt="json")
    assert wait_for(lambda: xstat(s, "cluster_manager.cds.update_rejected") == 4, timeout=10), s.log()
    assert served_by(lp) == "u1"


def test_file_based_watched_directory_symlink_swap(skiff_factory, upstreams, tmp_path):
    """Kubernetes ConfigMap style: the file is a symlink through ..data, swapped by a
    rename of the ..data link in the watched directory."""
    import os
    u1, u2 = upstreams("u1"), upstreams("u2")
    lp, ap = free_port(), free_port()
    d = tmp_path / "cfg"
    d.mkdir()

    def publish(gen, cluster_port):
        ts = d / ("..v%d" % gen)
        ts.mkdir()
        write_resources(ts / "cds.yaml", CDS, [helpers.cluster("web", [cluster_port])])
        write_resources(ts / "lds.yaml", LDS, [file_listener(lp, "web", gen)])
        link = d / "..data_tmp"
        os.symlink(ts.name, str(link))
        os.replace(str(link), str(d / "..data"))

    publish(1, u1.port)
    for n in ("cds.yaml", "lds.yaml"):
        os.symlink("..data/" + n, str(d / n))
    s = skiff_factory(file_bootstrap(ap, d / "lds.yaml", d / "cds.yaml", watched_dir=d),
                      port=lp, admin_port=ap)
    assert served_by(lp) == "u1"
    publish(2, u2.port)
    assert wait_for(lambda: served_by(lp) == "u2", timeout=10), s.log()
    r = helpers.get(lp, "/")
    assert r.header("x-file-gen") == "2"


def test_file_based_bad_bootstrap_paths(skiff_bin, tmp_path):
    import subprocess
    cfg = file_bootstrap(free_port(), "", tmp_path / "cds.yaml")
    p = tmp_path / "b.yaml"
    p.write_text(helpers.dump(cfg))
    r = subprocess.run([skiff_bin, "--validate", "-c", str(p)], capture_output=True, timeout=20)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode != 0 and "path_config_source.path is required" in out, out


# ---- SDS over its own SecretDiscoveryService stream ------------------------------------------------

def sds_grpc_ref(name, cluster="sds-grpc"):
    return {"name": name, "sds_config": {
        "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                              "grpc_services": [{"envoy_grpc": {"cluster_name": cluster}}]},
        "resource_api_version": "V3"}}


def test_sds_over_secret_discovery_stream(xds, skiff_factory, upstreams, xds_pki, tmp_path):
    """istio-agent style: listeners/clusters over ADS (control plane A), certificates over
    a SecretDiscoveryService stream to a static cluster (server B)."""
    import tls_helpers
    p = xds_pki
    a = xds()
    b = xds()
    u1 = upstreams("u1")
    lp, ap = free_port(), free_port()
    bs = bootstrap(a.port, ap)
    bs["static_resources"]["clusters"].append(helpers.cluster("sds-grpc", [b.port]))
    s = skiff_factory(bs, port=lp, admin_port=ap, wait=False)
    l = rds_listener("ingress", lp, "r1")
    l["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": tls_helpers.DTC_TYPE,
                         "common_tls_context": {"tls_certificate_sds_secret_configs": [
                             sds_grpc_ref("default")]}}}
    a.set(CDS, [eds_cluster("web1")])
    a.set(EDS, [cla("web1", [u1.port])])
    a.set(LDS, [l])
    a.set(RDS, [route_config("r1", "web1")])
    # the secret is asked for on the SDS stream, never on ADS
    assert wait_for(lambda: any(r["type"] == SDS and r["names"] == ["default"] and r["service"] == "sds"
                                for r in b.requests), timeout=10), s.log()
    time.sleep(0.3)
    assert s.ready_status() == 503
    assert not [r for r in a.requests if r["type"] == SDS]
    assert {r["service"] for r in b.requests} == {"sds"} and {r["type"] for r in b.requests} == {SDS}

    b.set(SDS, [cert_secret("default", p["server"])])
    s.wait_ready()
    assert tls_helpers.peer_serial(lp, "localhost") == p["server"].serial()
    code, _, _ = tls_helpers.curl_parse(tls_helpers.curl_tls("https://localhost:%d/" % lp, ca=p["ca"].pem))
    assert code == 200
    assert wait_for(lambda: any(r["nonce"] and r["version"] == "1" and not r["error"]
                                for r in b.requests), timeout=5)

    # rotation over the SDS stream
    new = p["ca"].issue("cp3", ["DNS:localhost", "IP:127.0.0.1"])
    b.set(SDS, [cert_secret("default", new)])
    assert wait_for(lambda: tls_helpers.peer_serial(lp, "localhost") == new.serial(), timeout=5)
    st = stats(s)
    assert st["sds.update_success"] == "2", st
    _, xs = xds_status(s)
    assert xs["sds_stream"]["server"] == "127.0.0.1:%d" % b.port and xs["sds_stream"]["connected"] is True

    # a bad secret: NACKed on the SDS stream, the certificate stays
    b.set(SDS, [{"name": "default", "tls_certificate": {
        "certificate_chain": {"inline_string": "garbage"},
        "private_key": {"inline_string": new.key.read_text()}}}])
    assert wait_for(lambda: b.nacks(SDS), timeout=10), s.log()
    assert tls_helpers.peer_serial(lp, "localhost") == new.serial()

    # the SDS server restarts: skiff reconnects and resubscribes on the SDS stream
    b.stop()
    b2 = xds(b.port)
    b2.set(SDS, [cert_secret("default", p["server"])])
    assert wait_for(lambda: tls_helpers.peer_serial(lp, "localhost") == p["server"].serial(),
                    timeout=20), s.log()
    assert a.active_streams() == 1

