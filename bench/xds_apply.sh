#!/usr/bin/env bash
# xDS apply cost: time from push to ACK and RSS per cluster, for 1k / 5k / 10k
# EDS clusters with $ENDPOINTS endpoints each, pushed by the reference control
# plane (tests/integration/xds_server.py, python3-grpcio).
#
# For each size, a fresh skiff (bootstrap: ADS, wildcard CDS/LDS) is started and:
#   1. LDS answered empty (so the config can complete);
#   2. CDS with N clusters pushed        -> time to the CDS ACK (decode + validate);
#   3. EDS with N ClusterLoadAssignments -> time to the EDS ACK (first complete config
#      built and published);
#   4. one ClusterLoadAssignment changed (EDS update of 1 of N) -> time to its ACK;
#   5. one cluster changed (CDS update of 1 of N)                -> time to its ACK;
#   RSS (VmRSS) before step 2 and once the workers applied the config (/ready 200);
#   "per cluster" = the RSS delta / N.
# The resources are serialized before the clock starts (python encoding time is
# not counted). Targets (issue 7): < 1 s for 10k clusters, < 2 KB per cluster.
#
# Usage: bash bench/xds_apply.sh                (SIZES="1000 5000 10000" ENDPOINTS=5)
#        SKIFF_BIN=path/to/skiff bash bench/xds_apply.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"1000 5000 10000"}
ENDPOINTS=${ENDPOINTS:-5}
ROUNDS=${ROUNDS:-1}
CONCURRENCY=${CONCURRENCY:-2}

for t in protoc /usr/bin/python3; do
  command -v "$t" >/dev/null || { echo "xds_apply: $t missing (bash scripts/deps.sh)" >&2; exit 1; }
done
if [ -z "${SKIFF_BIN:-}" ]; then
  [ -d build-release ] || meson setup build-release --buildtype=release -Db_ndebug=true >/dev/null
  ninja -C build-release src/skiff >/dev/null
  SKIFF_BIN=$PWD/build-release/src/skiff
fi
TMP=$(mktemp -d /tmp/skiff-xdsapply.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

SKIFF_BIN="$SKIFF_BIN" SIZES="$SIZES" ENDPOINTS="$ENDPOINTS" ROUNDS="$ROUNDS" TMP="$TMP" \
CONCURRENCY="$CONCURRENCY" /usr/bin/python3 - <<'PY'
import os, socket, subprocess, sys, time, json, urllib.request
from pathlib import Path
sys.path.insert(0, "tests/integration")
import xds_server as X

TMP = Path(os.environ["TMP"])
PB = X.load_protos(TMP / "py")
Cluster, Cla = PB.cluster.Cluster, PB.endpoint.ClusterLoadAssignment


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def rss_kb(pid):
    for ln in open("/proc/%d/status" % pid):
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1])
    return 0


def ready(ap):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/ready" % ap, timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def cluster(i, gen=0):
    c = Cluster(name="svc-%05d" % i, type=Cluster.EDS)
    c.connect_timeout.FromMilliseconds(1000 + gen)
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.service_name = "svc-%05d" % i
    return c


def cla(i, ne, gen=0):
    m = Cla(cluster_name="svc-%05d" % i)
    lle = m.endpoints.add()
    for k in range(ne):
        ep = lle.lb_endpoints.add()
        sa = ep.endpoint.address.socket_address
        sa.address = "10.%d.%d.%d" % ((i >> 8) & 255, i & 255, (k + gen) % 250 + 1)
        sa.port_value = 8080
    return m


def anys(type_url, msgs):
    out = {}
    for m in msgs:
        n, a = X.to_any(type_url, m)
        out[n] = (n, a)
    return out


def push(srv, type_url, d):
    """Install a pre-serialized state and push it; returns (version, t0)."""
    with srv.lock:
        srv.resources[type_url] = d
        srv.versions[type_url] += 1
        v = str(srv.versions[type_url])
    t0 = time.monotonic()
    srv.push(type_url)
    return v, t0


def wait_ack(srv, type_url, v, t0, timeout=120):
    while time.monotonic() - t0 < timeout:
        with srv.lock:
            for r in srv.requests:
                if r["type"] == type_url and r["nonce"] and r["version"] == v:
                    return time.monotonic() - t0, r["error"]
        time.sleep(0.0005)
    raise RuntimeError("no ACK for %s version %s" % (type_url, v))


def run(n, ne):
    srv = X.XdsServer(free_port(), TMP / "py").start()
    ap = free_port()
    cfg = TMP / "bs.yaml"
    cfg.write_text(json.dumps({
        "node": {"id": "bench", "cluster": "bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ap}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": srv.port}}}}]}]}}]}}))
    log = open(TMP / ("skiff-%d.log" % n), "w")
    p = subprocess.Popen([os.environ["SKIFF_BIN"], "-c", str(cfg), "--concurrency",
                          os.environ["CONCURRENCY"]], stdout=log, stderr=subprocess.STDOUT)
    try:
        srv.set(X.LISTENER, [])
        t = time.monotonic()
        while not any(r["type"] == X.LISTENER and r["nonce"] for r in srv.requests):
            if time.monotonic() - t > 20:
                raise RuntimeError("skiff did not connect")
            time.sleep(0.01)
        cds = anys(X.CLUSTER, [cluster(i) for i in range(n)])
        eds = anys(X.ENDPOINT, [cla(i, ne) for i in range(n)])
        time.sleep(0.3)
        rss0 = rss_kb(p.pid)
        v, t0 = push(srv, X.CLUSTER, cds)
        t_cds, e = wait_ack(srv, X.CLUSTER, v, t0)
        assert not e, e
        # EDS subscription for all names must have gone out first
        while not any(r["type"] == X.ENDPOINT and len(r["names"]) == n for r in srv.requests):
            time.sleep(0.001)
        v, t0 = push(srv, X.ENDPOINT, eds)
        t_eds, e = wait_ack(srv, X.ENDPOINT, v, t0)
        assert not e, e
        t = time.monotonic()
        while not ready(ap):
            if time.monotonic() - t > 60:
                raise RuntimeError("not ready")
            time.sleep(0.01)
        time.sleep(0.5)
        rss1 = rss_kb(p.pid)
        # one endpoint set changed
        one = dict(eds)
        n1, a1 = X.to_any(X.ENDPOINT, cla(n // 2, ne, gen=1))
        one[n1] = (n1, a1)
        v, t0 = push(srv, X.ENDPOINT, one)
        t_eds1, e = wait_ack(srv, X.ENDPOINT, v, t0)
        assert not e, e
        # one cluster changed
        onec = dict(cds)
        n1, a1 = X.to_any(X.CLUSTER, cluster(n // 2, gen=1))
        onec[n1] = (n1, a1)
        v, t0 = push(srv, X.CLUSTER, onec)
        t_cds1, e = wait_ack(srv, X.CLUSTER, v, t0)
        assert not e, e
        time.sleep(0.3)
        rss2 = rss_kb(p.pid)
        return dict(n=n, cds=t_cds, eds=t_eds, eds1=t_eds1, cds1=t_cds1, rss0=rss0, rss1=rss1,
                    rss2=rss2, per=(rss1 - rss0) * 1024.0 / n)
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait()
        srv.stop()
        log.close()


ne = int(os.environ["ENDPOINTS"])
print("xDS apply: %d endpoints per cluster, %s worker(s), %s round(s) (median)" % (
    ne, os.environ["CONCURRENCY"], os.environ["ROUNDS"]))
print("%8s %10s %10s %10s %12s %12s %10s %10s %12s" % (
    "clusters", "CDS ack s", "EDS ack s", "total s", "1 EDS chg s", "1 CDS chg s",
    "RSS0 MB", "RSS1 MB", "B/cluster"))
for n in [int(x) for x in os.environ["SIZES"].split()]:
    rs = [run(n, ne) for _ in range(int(os.environ["ROUNDS"]))]
    med = lambda k: sorted(r[k] for r in rs)[len(rs) // 2]
    print("%8d %10.3f %10.3f %10.3f %12.3f %12.3f %10.1f %10.1f %12.0f" % (
        n, med("cds"), med("eds"), med("cds") + med("eds"), med("eds1"), med("cds1"),
        med("rss0") / 1024.0, med("rss1") / 1024.0, med("per")), flush=True)
PY
