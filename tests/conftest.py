"""Shared fixtures: loopback-only settings for every test, a local Ray, S3 on loopback (moto)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ils.runtime import apply_loopback_env

ROOT = Path(__file__).resolve().parent.parent
# Applied at import time, before any test imports Ray, torch or boto3.
apply_loopback_env(os.environ.get("ILS_STATE_DIR") or str(ROOT / ".ils-ray" / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto_server) on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_env(s3_server):
    """Environment for S3 clients: fake credentials, the loopback endpoint."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


@pytest.fixture
def s3_bucket(s3_env):
    """A fresh bucket on the loopback S3 server; yields (endpoint, bucket name)."""
    import uuid

    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1").create_bucket(Bucket=name)
    return s3_env, name


@pytest.fixture(scope="session")
def ray_local():
    """One local, loopback-only Ray for the session (2 CPUs)."""
    from ils.config import load_config
    from ils.runtime import init_ray

    cfg = load_config(None, ["ray.num_cpus=2"])
    ray = init_ray(cfg)
    yield ray
    ray.shutdown()
