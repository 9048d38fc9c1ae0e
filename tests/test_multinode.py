"""Multi-node Ray on one machine: a head (`cpu_node`) and a second node (`gpu_node`) joined with
`ray start --address`, token auth on, the store on S3 (moto on loopback). `ils gen` goes in
through the Jobs API (`ils submit`); the Ray state API then shows which node ran each stage.

Only the processes this test starts are stopped: each node runs `ray start --block` in its own
session with its own --temp-dir; teardown signals that process group and kills any survivor
among the recorded descendants (never a plain `ray stop`, which would stop every Ray of the user).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, wait_port

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
N_STUDIES = 8


# `ray start` for a loopback-only cluster. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the loopback
# env) every Ray process binds 127.0.0.1, but the CLI refuses to join a second node; with it on,
# the CLI rewrites --node-ip-address=127.0.0.1 to the machine's external address and the agents
# listen on all interfaces. So the CLI process alone allows joining and keeps 127.0.0.1; the node's
# own processes inherit the env (=0) and stay on loopback (the test checks the listening sockets).
LAUNCHER = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""


class RayNode:
    """One `ray start --block` process group that this test owns."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "start", "--block", *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.pids: set[int] = set()
        self.log_path = log

    def check_alive(self) -> None:
        """Fail at once, with the log, when `ray start` has exited."""
        if self.proc.poll() is not None:
            self.log.flush()
            raise AssertionError(f"ray start exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")

    def wait_port(self, port: int, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_alive()
            try:
                wait_port(port, timeout=1.0)
                return
            except TimeoutError:
                pass
        raise TimeoutError(f"nothing listens on 127.0.0.1:{port}; log: {self.log_path}")

    def snapshot(self) -> None:
        """Record this node's descendants (raylet, GCS, dashboard, workers, job drivers)."""
        import psutil

        try:
            self.pids |= {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> None:
        import psutil

        self.snapshot()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # ray start --block cleans up its node
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # our session only
        except (ProcessLookupError, PermissionError):
            pass
        for pid in self.pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


def _node_env(tmp: Path, token: str, s3_endpoint: str) -> dict[str, str]:
    from ils.runtime import BOOTSTRAP, loopback_env

    env = dict(os.environ)
    env.update(loopback_env(str(tmp / "state")))
    home = tmp / "home"
    (home / ".ray").mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text(BOOTSTRAP)
    env.update(
        HOME=str(home),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # As a Kubernetes Secret would: credentials in the node environment, never in files.
        AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        AWS_DEFAULT_REGION="us-east-1",
    )
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    return env


def _non_loopback_listeners(nodes: list[RayNode]) -> list[tuple[str, str, int]]:
    """(process name, ip, port) of every listening socket of our nodes not bound to loopback."""
    import psutil

    found = []
    for node in nodes:
        node.snapshot()
        for pid in node.pids | {node.proc.pid}:
            try:
                proc = psutil.Process(pid)
                conns = proc.net_connections(kind="inet")
                name = proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for c in conns:
                if c.status == psutil.CONN_LISTEN and c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
                    found.append((name, c.laddr.ip, c.laddr.port))
    return found


def _node_ports() -> list[str]:
    """Free ports for the per-node services that otherwise default to fixed numbers."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _nodes(dash: str, token: str) -> dict[str, dict]:
    code, body = _get(f"{dash}/api/v0/nodes?limit=100&detail=1", token)
    assert code == 200, body[:300]
    rows = json.loads(body)["data"]["result"]["result"]
    return {r["node_id"]: r for r in rows if r["state"] == "ALIVE"}


def _actors(dash: str, token: str) -> list[dict]:
    code, body = _get(f"{dash}/api/v0/actors?limit=1000&detail=1", token)
    assert code == 200, body[:300]
    return json.loads(body)["data"]["result"]["result"]


@pytest.fixture
def two_nodes(tmp_path, s3_env):
    """(dashboard URL, token, {"cpu_node": node_id, "gpu_node": node_id}, nodes)."""
    token = secrets.token_hex(16)
    env = _node_env(tmp_path, token, s3_env)
    # Ray's socket paths must stay under 107 bytes: a short temp root of our own.
    short = Path(tempfile.mkdtemp(prefix="ilsmn-", dir="/tmp"))
    gcs, dash = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
              "--object-store-memory=150000000"]
    head = RayNode(
        ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         f"--temp-dir={short / 'h'}", "--resources", json.dumps({"cpu_node": 1}),
         f"--ray-client-server-port={free_port()}", *_node_ports(), *common],
        env, tmp_path / "head.log",
    )
    nodes = [head]
    try:
        head.wait_port(gcs)
        head.wait_port(dash)
        worker = RayNode(
            [f"--address=127.0.0.1:{gcs}", f"--temp-dir={short / 'g'}", "--resources", json.dumps({"gpu_node": 1}),
             *_node_ports(), *common],
            env, tmp_path / "gpu.log",
        )
        nodes.append(worker)
        url = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        by_res: dict[str, str] = {}
        while time.time() < deadline:
            try:
                alive = _nodes(url, token)
            except (AssertionError, OSError, KeyError):
                alive = {}
            by_res = {res: nid for nid, n in alive.items() for res in ("cpu_node", "gpu_node") if res in (n.get("resources_total") or {})}
            if len(by_res) == 2:
                break
            worker.check_alive()
            time.sleep(1)
        assert len(by_res) == 2, f"both nodes should join: {by_res} (logs in {tmp_path})"
        yield url, token, by_res, nodes
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(short, ignore_errors=True)


def test_gen_on_two_nodes_via_jobs_api(two_nodes, s3_bucket, tmp_path, capsys):
    from ils import jobs
    from ils.cli import main
    from ils.store import Store
    from ils.config import load_config

    url, token, node_of, nodes = two_nodes
    endpoint, bucket = s3_bucket
    store = [f"store.uri=s3://{bucket}/run", f"store.endpoint={endpoint}"]

    # Token mode is on: the Jobs API refuses a request without the token.
    code, _ = _get(f"{url}/api/jobs/", None)
    assert code == 401
    assert main(["submit", "gen", "--address", url, "--token-file", str(tmp_path / "nope"), *store]) == 2
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token")
    assert main(["submit", "gen", "--address", url, "--token-file", str(bad), *store]) == 2
    assert "Jobs API" in capsys.readouterr().err

    # A tiny phantom set straight into S3 (the test process is the "laptop").
    assert main(["sample", "--n", str(N_STUDIES), "--size", "256", *store, "image.size=128", "sample.val_fraction=0", "sample.test_fraction=0"]) == 0
    token_file = tmp_path / "token"
    token_file.write_text(token)
    gpu = "{gpu_node: 0.001}"
    cpu = "{cpu_node: 0.001}"
    overrides = [
        *store, "image.size=128", "gen.out=gen", "gen.layout=stages", "gen.anomaly_fit_studies=8",
        "gen.decode.num_cpus=0.1", f"gen.decode.resources={cpu}",
        "gen.report.num_cpus=0.1", "gen.report.batch_size=2", f"gen.report.resources={cpu}",
        "gen.anatomy.num_cpus=0.1", f"gen.anatomy.resources={gpu}",
        "gen.anomaly.num_cpus=0.1", f"gen.anomaly.resources={gpu}",
        "gen.detect.num_cpus=0.1", f"gen.detect.resources={gpu}",
        "gen.task_num_cpus=0.1",
    ]
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = main(["submit", "gen", "--address", url, "--token-file", str(token_file), "--wait", "--timeout", "600", *overrides])
    out = capsys.readouterr().out
    job_id = out.split()[0]
    jsc = jobs.client(url, token)
    for node in nodes:
        node.snapshot()
    print(f"job {job_id}: {time.perf_counter() - t0:.1f} s from submit to end")
    assert rc == 0, f"job {job_id} ended {out!r}; logs:\n{jobs.logs(jsc, job_id)[-4000:]}"

    # The summary in S3 counts every study as finished.
    cfg = load_config(None, [*store])
    summary = json.loads(Store.from_config(cfg.store).child("gen").read_text("summary.json"))
    assert summary["studies"].get("ok", 0) + summary["studies"].get("failed", 0) == N_STUDIES
    assert summary["studies"].get("ok", 0) >= N_STUDIES - 1, summary["studies"]

    # Placement: the Ray Data actor pools of each stage ran on the node that has its resource.
    placed: dict[str, set[str]] = {}
    for actor in _actors(url, token):
        name = actor.get("repr_name") or actor.get("class_name") or ""
        for step in ("DecodeStep", "ReportStep", "AnatomyStep", "AnomalyStep", "DetectStep"):
            if step in name:
                placed.setdefault(step, set()).add(actor["node_id"])
    assert set(placed) == {"DecodeStep", "ReportStep", "AnatomyStep", "AnomalyStep", "DetectStep"}, placed
    for step in ("AnatomyStep", "AnomalyStep", "DetectStep"):
        assert placed[step] == {node_of["gpu_node"]}, (step, placed[step], node_of)
    for step in ("DecodeStep", "ReportStep"):
        assert placed[step] == {node_of["cpu_node"]}, (step, placed[step], node_of)
    # Loopback only: every socket our nodes listen on is bound to 127.0.0.1 (or ::1).
    wild = _non_loopback_listeners(nodes)
    assert not wild, f"listening beyond loopback: {wild}"
    # Every study went through both nodes: decoded/structured on one, imaged on the other.
    assert {n for ids in placed.values() for n in ids} == set(node_of.values())
