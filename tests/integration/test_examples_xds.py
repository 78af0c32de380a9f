"""examples/xds/: run.sh end to end (control plane + route change, and the file-based
variant), the example's resources validated by skiff, and the example control plane's
handling of a broken resource directory."""
import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import SANITIZER_MARKERS
from helpers import dump, free_port

REPO = Path(__file__).resolve().parent.parent.parent
EX = REPO / "examples" / "xds"
RUN_TIMEOUT = 90 if os.environ.get("SKIFF_SANITIZED") else 45

pytestmark = pytest.mark.skipif(shutil.which("protoc") is None,
                                reason="protoc not installed (apt-get install protobuf-compiler)")
pytest.importorskip("grpc")


def run_example(skiff_bin, tmp_path, *args):
    ports = {k: free_port() for k in ("LISTEN_PORT", "ADMIN_PORT", "XDS_PORT", "SERVICE_A_PORT",
                                      "SERVICE_B_PORT")}
    env = dict(os.environ, SKIFF_BIN=skiff_bin, LOG_DIR=str(tmp_path / "logs"),
               TMPDIR=str(tmp_path), **{k: str(v) for k, v in ports.items()})
    r = subprocess.run(["bash", str(EX / "run.sh")] + list(args), env=env, cwd=str(tmp_path),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
    out = r.stdout.decode(errors="replace")
    # everything run.sh started is gone, and so is its working directory
    pids = [int(p) for p in re.findall(r"^started .*: pid (\d+)", out, re.M)]
    assert len(pids) >= 4, out
    deadline = time.monotonic() + 5
    for p in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(p, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(p, signal.SIGKILL)  # ours: run.sh started it for this test
            pytest.fail("pid %d survived run.sh\n%s" % (p, out))
    work = re.search(r"working directory (\S+)", out)
    assert work and not os.path.exists(work.group(1)), out
    log = (tmp_path / "logs" / "skiff.log").read_text(errors="replace")
    for m in SANITIZER_MARKERS:
        assert m not in log, log
    return r.returncode, out, ports


def services(out):
    """The services named in the JSON answers printed by the curl steps, in order."""
    return re.findall(r'^\s*"service": "(\w+)",$', out, re.M)


def test_run_sh_route_change_over_ads(skiff_bin, tmp_path):
    rc, out, ports = run_example(skiff_bin, tmp_path)
    assert rc == 0, out
    assert services(out) == ["A", "B"], out
    assert "== done" in out
    # the control plane saw the subscriptions, the ACK of the pushed route and the NACK
    assert "<- CDS subscribe (wildcard)" in out and "<- RDS subscribe local_route" in out, out
    assert re.search(r"RDS version 2: local_route \(route\.yaml\) -> pushed to 1 stream", out), out
    assert "<- RDS ACK version 2" in out, out
    assert re.search(r"<- RDS NACK of nonce \S+ \(skiff keeps version '2'\): "
                     r"RouteConfiguration 'local_route': .*timeout", out), out
    # one keep-alive connection across the change, served by A then B, no error
    m = re.search(r"probe: one connection \S+ -> 127\.0\.0\.1:(\d+): (\d+) requests, (\d+) errors, "
                  r"served by A x\d+ then B x\d+$", out, re.M)
    assert m and int(m.group(1)) == ports["LISTEN_PORT"] and m.group(3) == "0", out
    # the admin's view: RDS at version 2 with the NACK of version 3; stats counted it
    assert re.search(r'RDS\s+version_info "2"\s.*resources: local_route@2', out), out
    assert re.search(r'last_nack: version_info "3" nonce "\S+": RouteConfiguration', out), out
    assert "server: 127.0.0.1:%d  connected: true" % ports["XDS_PORT"] in out, out
    for line in ("control_plane.connected_state: 1", "rds.update_success: 2",
                 "rds.update_rejected: 1", "cluster_manager.cds.update_success: 1",
                 "listener_manager.lds.update_success: 1", "eds.update_success: 1"):
        assert "  " + line + "\n" in out, (line, out)


def test_run_sh_file_based(skiff_bin, tmp_path):
    rc, out, ports = run_example(skiff_bin, tmp_path, "--files")
    assert rc == 0, out
    assert services(out) == ["A", "B"], out
    assert "control-plane" not in out
    assert re.search(r"served by A x\d+ then B x\d+$", out, re.M), out
    assert "listener_manager.lds.update_success: 2" in out, out
    assert "listener_manager.lds.update_rejected: 1" in out, out
    assert re.search(r'LDS\s+version_info "file-[0-9a-f]{16}"', out), out


def test_run_sh_refuses_a_busy_port(skiff_bin, tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    busy = s.getsockname()[1]
    env = dict(os.environ, SKIFF_BIN=skiff_bin, TMPDIR=str(tmp_path), ADMIN_PORT=str(busy),
               LISTEN_PORT=str(free_port()), XDS_PORT=str(free_port()),
               SERVICE_A_PORT=str(free_port()), SERVICE_B_PORT=str(free_port()))
    r = subprocess.run(["bash", str(EX / "run.sh")], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    s.close()
    out = r.stdout.decode()
    assert r.returncode == 1 and "port %d on 127.0.0.1 is in use" % busy in out, out
    assert "ADMIN_PORT=" in out and "started" not in out, out


# ---- the example's files are valid skiff config ------------------------------------------------

def validate(skiff_bin, tmp_path, cfg, name):
    p = tmp_path / name
    p.write_text(cfg if isinstance(cfg, str) else dump(cfg))
    r = subprocess.run([skiff_bin, "--validate", "-c", str(p)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    return r.returncode, r.stdout.decode(errors="replace")


def resources(path):
    out = []
    for r in yaml.safe_load(Path(path).read_text())["resources"]:
        r = dict(r)
        r.pop("@type")
        out.append(r)
    return out


def static_from_ads_resources(route_file):
    """The ADS resources as one static bootstrap: the RDS route config inlined in the
    listener, the EDS clusters made STATIC with their ClusterLoadAssignment."""
    [listener] = resources(EX / "resources" / "listener.yaml")
    [rc] = resources(route_file)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == rc["name"]
    del hcm["rds"]
    hcm["route_config"] = rc
    cla = {c["cluster_name"]: c for c in resources(EX / "resources" / "endpoints.yaml")}
    clusters = []
    for c in resources(EX / "resources" / "clusters.yaml"):
        assert c.pop("type") == "EDS"
        del c["eds_cluster_config"]
        c = dict(c, type="STATIC", load_assignment=cla[c["name"]])
        clusters.append(c)
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
            "static_resources": {"listeners": [listener], "clusters": clusters}}


def test_example_configs_validate(skiff_bin, tmp_path):
    for boot in ("bootstrap.yaml", "files/bootstrap.yaml"):
        r = subprocess.run([skiff_bin, "--validate", "-c", "examples/xds/" + boot], cwd=str(REPO),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        assert r.returncode == 0 and b"configuration OK" in r.stdout, (boot, r.stdout)
    # the resources the control plane serves (both routes), as static config
    for route in (EX / "resources" / "route.yaml", EX / "changes" / "route-b.yaml"):
        rc, out = validate(skiff_bin, tmp_path, static_from_ads_resources(route), "static.yaml")
        assert rc == 0 and "1 listener, 2 clusters" in out, (route, out)
    rc, out = validate(skiff_bin, tmp_path,
                       static_from_ads_resources(EX / "changes" / "route-bad.yaml"), "bad.yaml")
    assert rc == 1 and "timeout" in out, out
    # the file-based variant's resources, as static config
    cfg = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
           "static_resources": {"listeners": resources(EX / "files" / "listeners.yaml"),
                                "clusters": resources(EX / "files" / "clusters.yaml")}}
    rc, out = validate(skiff_bin, tmp_path, cfg, "files.yaml")
    assert rc == 0 and "1 listener, 2 clusters" in out, out


# ---- the example control plane ------------------------------------------------------------

def _atomic_write(path, text):
    """Replace a file in one step (rename), so a poller never reads it half written."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def test_control_plane_keeps_serving_over_a_broken_directory(tmp_path):
    """A file that does not parse, or a resource that does not fit its message, is reported
    and the previous snapshot keeps being served; a good change is pushed as a new version."""
    res = tmp_path / "res"
    shutil.copytree(str(EX / "resources"), str(res))
    logf = tmp_path / "cp.log"
    port = free_port()
    with open(str(logf), "w") as lf:
        p = subprocess.Popen([sys.executable, "-u", str(EX / "control_plane.py"), "--resources",
                              str(res), "--port", str(port), "--poll", "0.05", "--proto-out",
                              str(tmp_path / "py")], stdout=lf, stderr=subprocess.STDOUT)
    try:
        def wait_log(s, timeout=30):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if s in logf.read_text():
                    return True
                if p.poll() is not None:
                    break
                time.sleep(0.05)
            return False

        assert wait_log("serving "), logf.read_text()
        assert "RDS version 1: local_route (route.yaml)" in logf.read_text()
        _atomic_write(res / "route.yaml", "resources: [ {")
        assert wait_log("rejected, the previous resources keep being served"), logf.read_text()
        assert "route.yaml: not valid YAML" in logf.read_text()
        bad = yaml.safe_load((EX / "changes" / "route-b.yaml").read_text())
        bad2 = copy.deepcopy(bad)
        bad2["resources"][0]["no_such_field"] = 1
        _atomic_write(res / "route.yaml", dump(bad2))
        assert wait_log("no_such_field"), logf.read_text()
        # a second file with the same RouteConfiguration (written while route.yaml is
        # still broken, so no valid state is seen in between)
        _atomic_write(res / "route2.yaml", dump(bad))
        time.sleep(0.2)
        _atomic_write(res / "route.yaml", dump(bad))
        assert wait_log("RouteConfiguration 'local_route' is also defined in route.yaml"), \
            logf.read_text()
        (res / "route2.yaml").unlink()
        assert wait_log("RDS version 2: local_route (route.yaml) -> pushed to 0 stream(s)"), \
            logf.read_text()
        assert "CDS version 2" not in logf.read_text()  # unchanged types are not pushed
        # the directory disappears for a while: reported, nothing pushed, then back as it was
        res.rename(tmp_path / "res-away")
        assert wait_log("cannot list"), logf.read_text()
        (tmp_path / "res-away").rename(res)
        time.sleep(0.3)
        assert "RDS version 3" not in logf.read_text() and "CDS version 2" not in logf.read_text()
        assert p.poll() is None
    finally:
        p.terminate()
        p.wait(10)
    assert p.returncode == 0, logf.read_text()


def test_control_plane_refuses_a_broken_directory_at_start(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    (res / "x.yaml").write_text('resources:\n- "@type": type.googleapis.com/nope\n  name: x\n')
    tmpd = tmp_path / "tmp"
    tmpd.mkdir()
    r = subprocess.run([sys.executable, str(EX / "control_plane.py"), "--resources", str(res),
                        "--port", str(free_port())], env=dict(os.environ, TMPDIR=str(tmpd)),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = r.stdout.decode()
    assert r.returncode == 1 and "cannot serve" in out and "x.yaml: resources[0]" in out, out
    # the protoc output went to a temporary directory, removed on exit
    assert list(tmpd.iterdir()) == [], out
