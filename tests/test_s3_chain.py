"""Nothing local in cluster mode (issue 6, item 3): the whole demo chain through S3 only.

`ils demo` (sample -> gen -> export -> gen-eval -> train -> eval -> serve one request) runs in a
subprocess with `store.uri=s3://BUCKET/run` on moto (loopback) and tiny sizes.

What "no writable local data folder" means here, precisely:

- The process runs in a private mount namespace (`unshare --mount`, when this machine allows it;
  CI runs as root) in which the whole root file system is READ-ONLY, except two folders:
  `TMPDIR` (Ray's temp/session dir, Python's `tempfile` scratch) and `ILS_STATE_DIR` =
  `ray.local_state_dir` (runtime state: Ray's HOME and auth token, ultralytics settings, torch
  extensions, matplotlib's font cache; see ils.runtime.loopback_env). /dev/shm (Ray's object store: memory, not disk) is left as it is.
  Its working directory and HOME are read-only folders as well. Any stage that tries to write
  elsewhere fails the run. Without namespaces the same test runs with only the read-only
  working directory and HOME (weaker; the scan below still applies).
- Scratch in TMPDIR is allowed while a step runs (torch and HF write checkpoint *folders*, which
  go through a temporary folder to and from the store) but must be gone afterwards: once the
  chain ends, the test scans both writable folders and fails on any project output left there
  (Parquet, PNG, DICOM, npz cache, torch/safetensors weights, tokenizer files, report/summary
  JSON, the MIMIC-ILS export).
- Every output is then found in S3: manifest, pairs, masks, export JSON, quality report, Ray
  Train checkpoints, the exported model, the rosalia-cache, eval report.json + png; and the
  served answer came back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.slow

N_STUDIES = 10
#: File names/suffixes that are project data (never runtime state).
DATA_SUFFIXES = (".parquet", ".png", ".dcm", ".npz", ".pt", ".pth", ".safetensors", ".bin", ".gguf", ".npy")
DATA_NAMES = ("report.json", "summary.json", "quality.json", "mimic_ils.json", "manifest.parquet", "state.json",
              "tokenizer.json", "tokenizer_config.json", "config.yaml", "run.json", "model.pt")


def _sandbox_prefix(writable: list[Path]) -> list[str]:
    """A command prefix that makes / read-only except `writable` (empty when not possible here)."""
    unshare = shutil.which("unshare")
    if not unshare or os.environ.get("ILS_TEST_NO_SANDBOX"):
        return []
    binds = " && ".join(f"mount --bind {shlex_quote(p)} {shlex_quote(p)}" for p in writable)
    script = f"{binds} && mount -o remount,bind,ro / && exec \"$@\""
    prefix = [unshare, "--mount", "--map-root-user", "--propagation", "private", "sh", "-c", script, "sh"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else []


def shlex_quote(p: Path) -> str:
    import shlex

    return shlex.quote(str(p))


def _leftovers(folder: Path) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.endswith(DATA_SUFFIXES) or name in DATA_NAMES:
                out.append(os.path.join(dirpath, name))
    return sorted(out)


def test_demo_chain_reads_and_writes_only_s3(s3_bucket, tmp_path):
    import boto3

    endpoint, bucket = s3_bucket
    # Short paths: Ray's socket paths must stay under 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="ilss3-", dir="/tmp"))
    scratch, state, ro = base / "tmp", base / "state", base / "ro"
    for p in (scratch, state, ro):
        p.mkdir()
    ro.chmod(0o555)
    try:
        sandbox = _sandbox_prefix([scratch, state])
        from ils.runtime import loopback_env

        # The loopback settings of this test process point into the repository (conftest): drop
        # them, so that the run derives them from ILS_STATE_DIR as a fresh cluster process would.
        own = set(loopback_env())
        env = {k: v for k, v in os.environ.items() if k not in own and not k.startswith(("RAY_", "ILS_"))}
        env.update(
            HOME=str(ro), TMPDIR=str(scratch), ILS_STATE_DIR=str(state),
            OMP_NUM_THREADS="1",
            AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            AWS_DEFAULT_REGION="us-east-1", PYTHONDONTWRITEBYTECODE="1",
        )
        overrides = [
            f"store.uri=s3://{bucket}/run", f"store.endpoint={endpoint}", f"ray.local_state_dir={state}",
            "ray.num_cpus=2", "ray.object_store_memory_mb=300",
            f"sample.n={N_STUDIES}", "sample.size=256", "image.size=128", "gen.anomaly_fit_studies=8",
            "gen.report.batch_size=5",
            "train.max_steps=4", "train.batch_size=4", "train.warmup_steps=1", "train.checkpoint_every=2",
            "train.eval_every=2", "train.log_every=1", "train.val_max_batches=1",
            "eval.batch_size=8", "eval.max_examples=2",
            f"serve.port={free_port()}", "serve.autoscaling.min_replicas=1", "serve.autoscaling.max_replicas=1",
        ]
        cmd = [*sandbox, sys.executable, "-m", "ils.cli", "demo", *overrides]
        proc = subprocess.run(cmd, cwd=ro, env=env, capture_output=True, text=True, timeout=1500)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"ils demo failed ({'sandboxed' if sandbox else 'no sandbox'}):\n{out[-6000:]}"

        # Every output is in S3.
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

        # The served answer came back: the demo keeps the reply in the store and ends with its message.
        reply = json.loads(s3.get_object(Bucket=bucket, Key="run/demo/served.json")["Body"].read())
        assert isinstance(reply["answer"], str) and reply["answer"] and reply["model_id"], reply
        assert f"served answer: {reply['message']}" in proc.stdout and "[SEG]" not in reply["message"]
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="run/")
                for o in page.get("Contents", [])]
        rel = [k[len("run/"):] for k in keys]

        def some(prefix: str, suffix: str = "") -> list[str]:
            return [k for k in rel if k.startswith(prefix) and k.endswith(suffix)]

        assert "phantoms/manifest.parquet" in rel
        assert len(some("phantoms/images/", ".dcm")) == N_STUDIES
        assert some("gen/pairs/", ".parquet") and some("gen/status/", ".parquet")
        assert some("gen/masks/", ".png"), "no fused masks in S3"
        assert "gen/summary.json" in rel and "gen/quality.json" in rel
        assert "gen/export/mimic_ils.json" in rel and some("gen/export/lesion_mask/", ".png")
        assert some("gen/rosalia-cache/", ".npz"), "the decoded-pairs cache should live in the run"
        # the run is keyed by its output (rosalia.train_run): train-runs/checkpoints-<hash>/
        assert [k for k in some("train-runs/checkpoints-", "trainable.pt") if "/checkpoint_" in k], "Ray Train checkpoints should be in S3"
        assert some("checkpoints/"), "the exported model should be in S3"
        assert "eval/report.json" in rel and "eval/report.png" in rel
        report = json.loads(s3.get_object(Bucket=bucket, Key="run/eval/report.json")["Body"].read())
        assert report["n_samples"] > 0

        # Nothing that is project data stayed on the local disk's writable folders.
        left = _leftovers(scratch) + _leftovers(state)
        assert not left, f"project outputs left on local disk: {left[:20]}"
        assert not any(ro.iterdir())
        print(f"ils demo over S3 ({'read-only root, sandboxed' if sandbox else 'read-only cwd and HOME only'}): "
              f"{len(rel)} objects in s3://{bucket}/run")
    finally:
        ro.chmod(0o755)
        if os.environ.get("ILS_TEST_KEEP"):  # debugging: keep the writable folders to look at
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def test_submit_train_and_eval_via_jobs_api(s3_bucket, tmp_path, capsys):
    """`ils submit train` then `ils submit eval` (--wait) on a one-node loopback cluster, store on S3.

    The node helpers come from tests/test_multinode.py (own process group, token auth, loopback
    only). The training data is a small SYNTHETIC run (rosalia.data.synthetic_run) written
    straight into S3, so this test covers the submission path, not generation.
    """
    import secrets

    from ils import jobs
    from ils.cli import main
    from ils.store import S3Options, Store
    from rosalia.data import synthetic_run
    from test_multinode import RayNode, _node_env, _node_ports

    endpoint, bucket = s3_bucket
    store_args = [f"store.uri=s3://{bucket}/run", f"store.endpoint={endpoint}"]
    store = Store(f"s3://{bucket}/run", S3Options(endpoint))
    synthetic_run(store.child("gen"), 10, seed=0, size=64, split_every=3)

    token = secrets.token_hex(16)
    env = _node_env(tmp_path, token, endpoint)
    env["OMP_NUM_THREADS"] = "1"
    short = Path(tempfile.mkdtemp(prefix="ilsjob-", dir="/tmp"))  # Ray's socket paths stay short
    gcs, dash = free_port(), free_port()
    head = RayNode(
        ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         f"--temp-dir={short / 'h'}", f"--ray-client-server-port={free_port()}", *_node_ports(),
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats",
         "--object-store-memory=200000000"],
        env, tmp_path / "head.log",
    )
    try:
        head.wait_port(gcs)
        head.wait_port(dash)
        url = f"http://127.0.0.1:{dash}"
        token_file = tmp_path / "token"
        token_file.write_text(token)
        common = ["--address", url, "--token-file", str(token_file), "--wait", "--timeout", "600"]
        tiny = [*store_args, "train.max_steps=2", "train.batch_size=2", "train.warmup_steps=1",
                "train.checkpoint_every=2", "train.log_every=1", "train.name=jobs"]
        for job, args in (("train", "--data gen --out checkpoints"),
                          ("eval", "--checkpoint checkpoints --data gen --out eval --limit 6 --no-text")):
            capsys.readouterr()
            rc = main(["submit", job, *common, "--args", args, *tiny])
            out = capsys.readouterr().out
            job_id = out.split()[0]
            head.snapshot()
            assert rc == 0, f"{job} job {job_id}: {out!r}\n{jobs.logs(jobs.client(url, token), job_id)[-4000:]}"
    finally:
        head.stop()
        shutil.rmtree(short, ignore_errors=True)

    assert store.list("train-runs/jobs", suffix="trainable.pt"), "Ray Train checkpoint should be in S3"
    assert store.list("checkpoints"), "exported model should be in S3"
    report = json.loads(store.read_text("eval/report.json"))
    assert report["n_samples"] == 6
