"""The service over real HTTP against serve.run on the local Ray (loopback only).

Module layout (one Serve instance for the module):
1. unit checks without Ray (RLE, auth, config validation);
2. the main app: the real `rosalia.segmenter.Segmenter` (tiny random model; masks are noise, so
   only shapes, encodings and request bookkeeping are checked) on synthetic phantom studies;
3. a second app replacing it: a test double segmenter slowed down by serve.model_delay_s, to
   saturate the in-flight limit (503) and to drive autoscaling 1 -> 2 -> 1 replicas.
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys
import time


import httpx
import numpy as np
import pytest
from PIL import Image
from ray import cloudpickle  # Ray pickles with its vendored cloudpickle

from ils.config import load_config
from rosalia.contract import SegResult
from serve import codecs
from serve.auth import AuthConfigError, KeyChecker, digest, key_digests
from serve.model_deployment import ServeConfigError, validate

KEY = "test-key-123"
INSTR = "Segment the effusion in the left lung base."

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship the test double to replicas


class SlowDouble:
    """Test double of rosalia.segmenter.Segmenter: mask = image > 0.5, answer from no model."""

    def __init__(self, checkpoint=None, model_cfg=None, device=None):
        self.model_id = "test-double"

    def segment(self, images, instructions):
        return [SegResult(mask=np.asarray(im) > 0.5, answer="[SEG]", present=True, confidence=1.0) for im in images]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def phantom(index: int = 0, size: int = 128):
    from ils.phantom.sample import generate_study

    cfg = load_config(None, [f"sample.size={size}", "image.size=64"])
    return generate_study(0, index, cfg)


# ---- 1. units -----------------------------------------------------------------------------------
def test_rle_roundtrip_and_layout():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (1, 1), (16, 3)]:
        m = rng.random(shape) > 0.5
        r = codecs.rle_encode(m)
        assert r["size"] == list(shape) and sum(r["counts"]) == m.size
        assert np.array_equal(codecs.rle_decode(r), m)
    m = np.zeros((2, 3), bool)
    m[1, 0] = True  # column-major: index 1 of the flattened mask
    assert codecs.rle_encode(m)["counts"] == [1, 1, 4]
    m[0, 0] = True  # a mask starting with 1 starts with a zero-length run of 0
    assert codecs.rle_encode(m)["counts"] == [0, 2, 4]


def test_keys_and_refusal(tmp_path):
    assert key_digests(None, allow_anonymous=True, env={}) == []
    with pytest.raises(AuthConfigError, match="ILS_API_KEYS"):
        key_digests(None, allow_anonymous=False, env={})
    f = tmp_path / "keys"
    f.write_text("# comment\nfilekey\n")
    d = key_digests(str(f), False, env={"ILS_API_KEYS": "a, b,"})
    assert sorted(d) == sorted(digest(k) for k in ("a", "b", "filekey"))
    kc = KeyChecker(d)
    assert kc.check(None) == 401 and kc.check("Basic a") == 401 and kc.check("Bearer nope") == 403
    assert kc.check("Bearer filekey") == 200 and kc.check("bearer a") == 200


def test_validation_refuses_unscalable_config():
    with pytest.raises(ServeConfigError, match="target_ongoing_requests"):
        validate(load_config(None, ["serve.autoscaling.target_ongoing_requests=8", "serve.autoscaling.max_ongoing_requests=8"]))
    with pytest.raises(ServeConfigError, match="min_replicas"):
        validate(load_config(None, ["serve.autoscaling.min_replicas=3", "serve.autoscaling.max_replicas=2"]))
    validate(load_config(None, []))


def test_cli_refuses_to_start_without_keys_or_with_unscalable_config(monkeypatch, capsys):
    from ils.cli import main

    monkeypatch.delenv("ILS_API_KEYS", raising=False)
    assert main(["serve", "serve.allow_anonymous=false"]) == 2
    assert "no API key configured" in capsys.readouterr().err
    assert main(["serve", "serve.autoscaling.target_ongoing_requests=9", "serve.autoscaling.max_ongoing_requests=8"]) == 2
    assert "never scales up" in capsys.readouterr().err


# ---- 2. the main app ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    from ray import serve

    from serve.app import start_service

    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(KEY + "\n")
    cfg = load_config(None, [
        "serve.allow_anonymous=false", f"serve.api_keys_file={keys}", "serve.num_cpus=0.5",
        "serve.max_upload_bytes=300000", "serve.max_image_pixels=262144", "serve.max_instruction_chars=120",
        "serve.max_batch_size=8", "serve.batch_wait_timeout_s=0.1", "serve.autoscaling.max_replicas=1",
        "serve.autoscaling.max_ongoing_requests=16", "serve.autoscaling.target_ongoing_requests=8",
    ])
    handle = start_service(cfg, port=free_port(), ready_timeout_s=240)
    yield handle
    serve.shutdown()


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service.url, timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def test_probes_need_no_key(service):
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    r = httpx.get(f"{service.url}/readyz")
    assert r.status_code == 200 and r.json()["model_id"].startswith("rosalia-")
    spec = httpx.get(f"{service.url}/openapi.json").json()
    assert "/v1/segment" in spec["paths"] and "multipart/form-data" in spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]


def test_segment_phantom_png_multipart(client):
    study = phantom(0)
    r = client.post("/v1/segment", files={"image": ("p.png", png_bytes(study.image), "image/png")},
                    data={"instruction": INSTR}, headers={"X-Request-ID": "req-png-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "req-png-1" == r.headers["x-request-id"]
    assert body["answer"].startswith("[SEG]") and isinstance(body["present"], bool)
    assert body["message"] == ("Pleural effusion found in the left lung base (confidence %.2f)." % body["confidence"]
                               if body["present"] else "No pleural effusion found in the left lung base.")
    assert body["normalized_instruction"] == INSTR and body["instruction_reading"]["how"] == "template"
    assert isinstance(body["raw_answer"], str) and body["raw_answer_agreed"] in (True, False)
    assert (body["mask_pixels"] > 0) == body["present"]
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["lesion"] == "effusion" and body["locations"] == ["left lung base"] and body["type"] == "basic"
    assert body["mask_size"] == list(study.image.shape)
    mask = codecs.rle_decode(body["mask_rle"])
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_b64"])))) > 0
    assert mask.shape == png.shape == study.image.shape and np.array_equal(mask, png)
    assert body["mask_pixels"] == int(mask.sum())
    assert body["model_id"].startswith("rosalia-") and body["timings"]["total_s"] > 0


def test_segment_json_base64(client):
    study = phantom(1, size=64)
    img = png_bytes(study.image)
    r = client.post("/v1/segment", json={"image_b64": base64.b64encode(img).decode(), "instruction": "Segment the cardiomegaly.", "preview": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mask_size"] == [64, 64] and body["lesion"] == "cardiomegaly" and body["locations"] == []
    assert Image.open(io.BytesIO(base64.b64decode(body["preview_png_b64"]))).size == (64, 64)


def test_dicom_seg_references_upload(client):
    import pydicom

    from ils.phantom.dicom import encode

    study = phantom(2)
    dcm = encode(study)
    src = pydicom.dcmread(io.BytesIO(dcm), stop_before_pixels=True)
    r = client.post("/v1/segment?format=dicom-seg", files={"image": ("x.dcm", dcm, "application/dicom")}, data={"instruction": INSTR})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom" and r.headers["x-ils-answer"].startswith("[SEG]")
    seg = pydicom.dcmread(io.BytesIO(r.content))
    assert seg.Modality == "SEG" and (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and seg.StudyInstanceUID == src.StudyInstanceUID
    # dicom-seg needs a DICOM upload
    r = client.post("/v1/segment", files={"image": ("p.png", png_bytes(study.image))}, data={"instruction": INSTR, "format": "dicom-seg"})
    assert r.status_code == 422


def test_instructions_as_people_type_them(client):
    img = {"image": ("p.png", png_bytes(phantom(4, size=64).image))}
    r = client.post("/v1/segment", files=img, data={"instruction": "Is there fluid in the left lower lobe?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["normalized_instruction"] == "Segment the effusion in the left lung base."
    assert body["instruction"] == "Is there fluid in the left lower lobe?" and body["instruction_reading"]["how"] == "normalized"
    assert body["lesion"] == "effusion" and body["locations"] == ["left lung base"] and "[SEG]" not in body["message"]
    r = client.post("/v1/segment", files=img, data={"instruction": "Segment the nodule in the right lung."})
    assert r.status_code == 422 and r.json()["kind"] == "unsupported_lesion"
    assert "nodule" in r.json()["error"] and "effusion" in r.json()["supported_lesions"]
    r = client.post("/v1/segment", files=img, data={"instruction": "What do you see?"})
    assert r.status_code == 422 and r.json()["kind"] == "no_lesion" and r.json()["example"].startswith("Segment the")


def test_auth_errors(service):
    files = {"image": ("p.png", png_bytes(np.zeros((8, 8))))}
    r = httpx.post(f"{service.url}/v1/segment", files=files, data={"instruction": INSTR})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.headers["x-request-id"]
    r = httpx.post(f"{service.url}/v1/segment", files=files, data={"instruction": INSTR}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["request_id"] == r.headers["x-request-id"]


def test_input_errors(client):
    ok_png = png_bytes(np.zeros((16, 16)))
    cases = [
        (413, {"files": {"image": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 400_000)}, "data": {"instruction": INSTR}}),
        (413, {"files": {"image": ("wide.png", png_bytes(np.zeros((600, 600))))}, "data": {"instruction": INSTR}}),
        (415, {"files": {"image": ("x.png", b"plain text, not an image at all", "image/png")}, "data": {"instruction": INSTR}}),
        (415, {"content": b"hello", "headers": {"Content-Type": "text/plain"}}),
        (422, {"files": {"image": ("bad.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)}, "data": {"instruction": INSTR}}),
        (422, {"files": {"image": ("ok.png", ok_png)}, "data": {"instruction": "   "}}),
        (422, {"files": {"image": ("ok.png", ok_png)}, "data": {"instruction": "Segment " + "x" * 200}}),
        (422, {"json": {"image_b64": "***not base64***", "instruction": INSTR}}),
        (422, {"files": {"image": ("ok.png", ok_png)}, "data": {"instruction": INSTR, "format": "tiff"}}),
    ]
    for status, kwargs in cases:
        r = client.post("/v1/segment", **kwargs)
        assert r.status_code == status, (status, r.status_code, r.text)
        assert r.json()["request_id"] == r.headers["x-request-id"]


def test_concurrent_clients_get_their_own_answers(service):
    from serve.app import suggestions

    instructions = suggestions()[:16]
    img = png_bytes(phantom(3, size=64).image)

    async def one(i: int, c: httpx.AsyncClient):
        r = await c.post("/v1/segment", files={"image": ("p.png", img)}, data={"instruction": instructions[i]},
                         headers={"X-Request-ID": f"conc-{i}"})
        return i, r

    async def main():
        async with httpx.AsyncClient(base_url=service.url, timeout=180, headers={"Authorization": f"Bearer {KEY}"}) as c:
            return await asyncio.gather(*(one(i, c) for i in range(len(instructions))))

    results = asyncio.run(main())
    batch_sizes = []
    for i, r in results:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["request_id"] == f"conc-{i}" == r.headers["x-request-id"]
        assert body["instruction"] == instructions[i] and body["mask_size"] == [64, 64]
        batch_sizes.append(body["batch_size"])
    assert max(batch_sizes) > 1, batch_sizes  # @serve.batch grouped concurrent requests

    metrics = httpx.get(f"{service.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'ils_requests_total{status="200"}' in metrics
    assert "ils_raw_answer_agreement_ratio" in metrics
    assert 'ils_answers_total{raw_agreed="true"}' in metrics or 'ils_answers_total{raw_agreed="false"}' in metrics
    assert "ils_batch_size_bucket" in metrics and "ils_request_latency_seconds_bucket" in metrics


@pytest.fixture(scope="module")
def api_schema(service):
    """The served /openapi.json, with real images and instructions as the positive examples.

    The uploads are DICOM (synthetic phantoms): a PNG is valid for the schema but not with
    format=dicom-seg, a constraint between the content and a field that a schema cannot state."""
    import schemathesis
    from hypothesis import strategies as st

    from ils.phantom.dicom import encode
    from serve.app import suggestions

    images = [encode(phantom(5, size=64)), encode(phantom(6, size=96))]
    typed = ["Is there fluid in the left lower lobe?", "enlarged heart", "bibasilar atelectasis", "Any pneumonia?"]
    schemathesis.openapi.format("binary", st.sampled_from(images))
    schemathesis.openapi.format("byte", st.sampled_from([base64.b64encode(i).decode() for i in images]))
    schemathesis.openapi.format("ils-instruction", st.sampled_from(suggestions()[:12] + typed))
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json")


def test_openapi_contract_schemathesis(api_schema):
    """schemathesis against the real HTTP service: every operation, positive and negative data, all checks.

    (Bounded: 8 examples per operation and mode. schemathesis' own pytest plugin is not used: its
    lazy loader does not run on pytest 9.)"""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    cases: list[str] = []
    for result in api_schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case):
                cases.append(f"{mode.value} {op.method.upper()} {op.path}")
                case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE and op.path != "/v1/segment"  # no parameters to get wrong
    assert len({c.split(" ", 1)[1] for c in cases}) == 4, sorted(set(cases))  # /v1/segment, /healthz, /readyz, /metrics
    print(f"schemathesis: {len(cases)} cases, all checks passed")


# ---- 3. overload and autoscaling with a slowed-down test double ---------------------------------
def _running_replicas(app: str = "ils", deployment: str = "Model") -> int:
    from ray import serve

    st = serve.status().applications[app].deployments[deployment]
    return int(st.replica_states.get("RUNNING", 0))


@pytest.fixture(scope="module")
def slow_service(service):
    from ray import serve

    from serve.app import build_app, wait_ready

    cfg = load_config(None, [
        "serve.allow_anonymous=true", "serve.num_cpus=0.25", "serve.model_delay_s=0.4", "serve.max_queued_requests=4",
        "serve.max_batch_size=1", "serve.autoscaling.min_replicas=1", "serve.autoscaling.max_replicas=2",
        "serve.autoscaling.target_ongoing_requests=1", "serve.autoscaling.max_ongoing_requests=2",
        "serve.autoscaling.upscale_delay_s=1", "serve.autoscaling.downscale_delay_s=2",
        "serve.autoscaling.look_back_period_s=2", "serve.autoscaling.metrics_interval_s=0.5",
    ])
    serve.run(build_app(cfg, SlowDouble), name=cfg.serve.app_name, route_prefix="/")
    wait_ready(service.url, 120)
    return service.url


def test_overload_answers_503_with_retry_after(slow_service):
    img = png_bytes(np.ones((16, 16)))

    async def main():
        async with httpx.AsyncClient(base_url=slow_service, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/segment", files={"image": ("p.png", img)}, data={"instruction": INSTR}) for _ in range(14)))

    responses = asyncio.run(main())
    codes = [r.status_code for r in responses]
    assert codes.count(503) >= 1 and codes.count(200) >= 1 and set(codes) <= {200, 503}, codes
    r503 = next(r for r in responses if r.status_code == 503)
    assert int(r503.headers["retry-after"]) >= 1 and r503.json()["request_id"]


@pytest.mark.slow
def test_autoscaling_up_and_down(slow_service):
    img = png_bytes(np.ones((16, 16)))
    assert _running_replicas() == 1

    async def load(stop_at: float) -> int:
        async with httpx.AsyncClient(base_url=slow_service, timeout=60) as c:
            async def worker():
                n = 0
                while time.time() < stop_at and _running_replicas() < 2:
                    r = await c.post("/v1/segment", files={"image": ("p.png", img)}, data={"instruction": INSTR})
                    n += r.status_code == 200
                    if r.status_code == 503:
                        await asyncio.sleep(0.05)
                return n
            return sum(await asyncio.gather(*(worker() for _ in range(4))))

    t0 = time.time()
    answered = asyncio.run(load(t0 + 45))
    up_s = time.time() - t0
    assert _running_replicas() == 2, f"no second replica after {up_s:.0f} s of load ({answered} answered)"
    deadline = time.time() + 45
    while time.time() < deadline and _running_replicas() > 1:
        time.sleep(0.5)
    assert _running_replicas() == 1, "replicas did not scale back down when idle"


# ---- 4. `ils serve` end to end: ready, answers, Ctrl-C stops it cleanly --------------------------
@pytest.mark.slow
def test_ils_serve_cli_runs_until_interrupted(tmp_path):
    import os
    import signal
    import subprocess

    from ray import serve

    serve.shutdown()  # this module's Serve instance; the command starts its own Ray and Serve
    port = free_port()
    env = dict(os.environ, ILS_API_KEYS="cli-key", ILS_STATE_DIR=str(tmp_path / "state"))
    log_file = open(tmp_path / "serve.log", "w")  # a file, not a pipe: Ray logs a lot
    proc = subprocess.Popen([sys.executable, "-m", "ils.cli", "serve", f"serve.port={port}", "serve.allow_anonymous=false",
                             "ray.local_state_dir=" + str(tmp_path / "ray")], env=env, stdout=log_file,
                            stderr=subprocess.STDOUT, text=True)
    try:
        from serve.app import wait_ready

        wait_ready(f"http://127.0.0.1:{port}", 240)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/segment", files={"image": ("p.png", png_bytes(np.ones((32, 32))))},
                       data={"instruction": INSTR}, headers={"Authorization": "Bearer cli-key"}, timeout=120)
        assert r.status_code == 200 and r.json()["mask_size"] == [32, 32]
        deadline = time.time() + 60  # the command prints "ready" once its handlers are installed
        while "ils serve: ready" not in (tmp_path / "serve.log").read_text() and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
    out = (tmp_path / "serve.log").read_text()
    assert proc.returncode == 0 and "ils serve: stopped" in out

