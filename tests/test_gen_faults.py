"""ilsgen under faults: transient vs permanent failures, one run per output, S3 outage, a killed Ray worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from ils.cli import main as ils_main
from ils.config import load_config
from ils.schema import PAIR, STUDY, STUDY_STATUS
from ils.store import Store
from ilsgen.llm_loopback import start

SIZE = 128


def _status(run: Store) -> list[dict]:
    return run.read_parquet("status", schema=STUDY_STATUS).to_pylist()


def _sample(root: Path, n: int, *store: str) -> None:
    assert ils_main(["sample", "--n", str(n), "--seed", "4", "--out", "ph", "sample.size=256", f"image.size={SIZE}",
                     *store]) == 0


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """8 phantoms plus one undecodable image (a permanent failure)."""
    root = tmp_path_factory.mktemp("faults")
    _sample(root, 8, f"store.uri={root}")
    store = Store(str(root))
    rows = store.read_parquet("ph/manifest.parquet").to_pylist()
    store.write_bytes("ph/images/garbage.dcm", b"not a dicom at all" * 10)
    rows.append({"study_id": "99000001", "image_uri": "images/garbage.dcm", "report": "FINDINGS: Left effusion."})
    store.write_parquet("ph/manifest_broken.parquet", pa.Table.from_pylist(rows, schema=STUDY))
    return root, len(rows)


def test_transient_failures_are_retried_permanent_ones_not(phantoms):
    from ilsgen.failures import is_transient
    from ilsgen.pipeline import run_generation
    from ilsgen.report.llm import LLMReportError

    assert is_transient(LLMReportError("timeout")) and is_transient(OSError("AWS Error NETWORK_CONNECTION curlCode: 7"))
    assert not is_transient(ValueError("cannot decode")) and not is_transient(FileNotFoundError("x"))
    root, n = phantoms
    server, llm = start(latency=0.0)
    try:
        cfg = load_config(None, [f"store.uri={root}", f"image.size={SIZE}", "gen.report.batch_size=4", "gen.report.backend=llm",
                                 f"gen.report.llm.base_url=http://127.0.0.1:{server.server_address[1]}/v1",
                                 "gen.report.llm.max_retries=0", "gen.report.llm.requests_per_second=0",
                                 "gen.report.llm.fallback_to_rules=false", "gen.max_errored_fraction=1.0",
                                 "gen.anomaly_fit_studies=2"])
        llm.fail = True  # the LLM endpoint is down: every report fails after its retries
        first = run_generation(cfg, "ph/manifest_broken.parquet", "run_t", engine="plain")
        assert first["studies"] == {"failed": n}
        run = Store(str(root)).child("run_t")
        rows = {r["study_id"]: r for r in _status(run)}
        assert rows["99000001"]["stage"] == "decode" and rows["99000001"]["transient"] is False
        assert all(r["transient"] and r["stage"] == "report" for k, r in rows.items() if k != "99000001")
        llm.fail = False
        llm.stats()
        second = run_generation(cfg, "ph/manifest_broken.parquet", "run_t", engine="plain")
        assert second["studies"] == {"ok": n - 1, "failed": 1}
        assert llm.stats()["requests"] == n - 1  # only the transient failures were done again
        ids = [r["study_id"] for r in _status(run)]
        assert len(ids) == len(set(ids)) == n
        # a third run has nothing to do: the permanent failure stays finished
        third = run_generation(cfg, "ph/manifest_broken.parquet", "run_t", engine="plain")
        assert third["studies"] == second["studies"] and llm.stats()["requests"] == 0
    finally:
        server.shutdown()


def test_a_second_run_on_the_same_output_refuses(phantoms):
    from ilsgen.pipeline import run_generation
    from ilsgen.run_lock import LOCK, RunLock, RunLocked

    root, _ = phantoms
    cfg = load_config(None, [f"store.uri={root}", f"image.size={SIZE}"])
    run = Store(str(root)).child("run_lock")
    with RunLock(run):
        with pytest.raises(RunLocked, match="another `ils gen` is writing"):
            run_generation(cfg, "ph/manifest.parquet", "run_lock", engine="plain")
        assert ils_main(["gen", "--engine", "plain", "--input", "ph/manifest.parquet", "--out", "run_lock",
                         f"store.uri={root}", f"image.size={SIZE}"]) == 2
    assert not run.exists(LOCK)
    # a lock left by a process that is gone is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run.write_text(LOCK, json.dumps({"token": "x", "host": socket.gethostname(), "pid": int(dead.stdout), "heartbeat": time.time()}))
    assert run_generation(cfg, "ph/manifest.parquet", "run_lock", engine="plain")["studies"] == {"ok": 8}
    assert not run.exists(LOCK)


class _Proxy:
    """A TCP forwarder on a fixed loopback port that can be stopped and started (an S3 outage)."""

    def __init__(self, target_port: int):
        self.target = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread, frees the port
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.slow
def test_s3_outage_mid_run_stops_clearly_and_resumes(s3_bucket, monkeypatch, tmp_path):
    """The S3 endpoint goes away after the first batch is published, then comes back."""
    from ils.errors import UserError
    from ilsgen import run_layout
    from ilsgen.pipeline import run_generation

    endpoint, bucket = s3_bucket
    proxy = _Proxy(int(endpoint.rsplit(":", 1)[1]))
    proxy.start()
    store = [f"store.uri=s3://{bucket}/w", f"store.endpoint=http://127.0.0.1:{proxy.port}"]
    _sample(tmp_path, 8, *store)
    cfg = load_config(None, [*store, f"image.size={SIZE}", "gen.report.batch_size=2", "gen.anomaly_fit_studies=2"])
    real = run_layout.write_shards
    calls = []

    def write_then_outage(run, rows):
        part = real(run, rows)
        calls.append(part)
        if len(calls) == 1:
            proxy.stop()  # deterministic: right after the first batch is published
        return part

    monkeypatch.setattr(run_layout, "write_shards", write_then_outage)
    try:
        with pytest.raises(UserError) as info:
            run_generation(cfg, "ph/manifest.parquet", "run", engine="plain")
        assert "run the same command again" in str(info.value) or "resume" in str(info.value)
        proxy.start()
        summary = run_generation(cfg, "ph/manifest.parquet", "run", engine="plain")
    finally:
        proxy.stop()
    proxy.start()
    assert summary["studies"] == {"ok": 8}
    run = Store.from_config(cfg.store).child("run")
    ids = [r["study_id"] for r in _status(run)]
    assert len(ids) == len(set(ids)) == 8
    pairs = run.read_parquet("pairs", schema=PAIR).to_pylist()
    assert pairs and len({p["pair_id"] for p in pairs}) == len(pairs)
    proxy.stop()


@pytest.mark.slow
def test_sigkill_of_a_ray_worker_mid_run_loses_and_duplicates_nothing(tmp_path):
    import psutil

    _sample(tmp_path, 16, f"store.uri={tmp_path}")
    args = [sys.executable, "-m", "ils.cli", "gen", "--input", "ph/manifest.parquet", "--out", "run_k", f"store.uri={tmp_path}",
            f"image.size={SIZE}", "gen.report.batch_size=2", "gen.anomaly_fit_studies=2", "gen.fused_concurrency=1"]
    log = open(tmp_path / "gen.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    status_dir = tmp_path / "run_k" / "status"
    killed = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and killed is None and proc.poll() is None:
            if len(list(status_dir.glob("part-*.parquet"))) >= 1:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    try:
                        title = " ".join(child.cmdline())
                    except psutil.Error:
                        continue
                    if title.startswith("ray::") and ("MapWorker" in title or "ChainStep" in title):
                        os.kill(child.pid, signal.SIGKILL)
                        killed = title
                        break
            time.sleep(0.05)
        assert killed, "no pipeline worker was found to kill"
        assert proc.wait(timeout=300) == 0, (tmp_path / "gen.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    run = Store(str(tmp_path)).child("run_k")
    ids = [r["study_id"] for r in _status(run)]
    assert len(ids) == len(set(ids)) == 16
    assert {r["status"] for r in _status(run)} == {"ok"}
    pairs = run.read_parquet("pairs", schema=PAIR).to_pylist()
    assert pairs and len({p["pair_id"] for p in pairs}) == len(pairs)
