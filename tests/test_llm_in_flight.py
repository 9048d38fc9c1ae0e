"""Many LLM requests in flight: concurrency reached, input order kept, nothing sent twice."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ils.config import LLMConfig, ReportConfig, load_config
from ilsgen.llm_loopback import start
from ilsgen.report import make_report_backend
from ilsgen.report.llm_client import in_flight, structure_many


def _cfg(base_url: str, **kw) -> ReportConfig:
    llm = dict(base_url=base_url, model="m", max_retries=1, backoff_s=0.01, timeout_s=5.0, requests_per_second=0.0)
    llm.update(kw)
    return ReportConfig(backend="llm", llm=LLMConfig(**llm))


@pytest.fixture
def loopback():
    server, state = start(latency=0.5)  # long enough for every thread to arrive on a busy machine
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def _peak(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats") as resp:
        return json.loads(resp.read())


def test_many_in_flight_and_input_order(loopback):
    url, _ = loopback
    backend = make_report_backend(_cfg(url + "/v1"))
    items = [(f"s{i}", f"FINDINGS: Report number {i}. Small effusion.") for i in range(16)]
    results = structure_many(backend, items, max_in_flight=8)
    stats = _peak(url)  # the server saw 8 requests at once (each is held 0.5 s), never more
    assert stats["requests"] == 16 and stats["peak"] == 8
    for (sid, report), res in zip(items, results):
        assert res.source == "llm" and res.rows[0]["study_id"] == sid
        assert res.rows[0]["sentence"] == report.split(": ", 1)[1].split(". ")[0] + "."
    assert backend.stats()["llm_ok"] == 16


def test_one_in_flight_is_sequential(loopback):
    url, _ = loopback
    backend = make_report_backend(_cfg(url + "/v1"))
    structure_many(backend, [(f"s{i}", "FINDINGS: Effusion.") for i in range(3)], max_in_flight=1)
    assert _peak(url) == {"requests": 3, "peak": 1}


class _Fail(BaseHTTPRequestHandler):
    seen: list[str] = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        _Fail.seen.append(body["messages"][-1]["content"])
        payload = b'{"error": {"message": "boom"}}'
        self.send_response(500)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_failing_studies_fail_alone_and_are_not_sent_twice(tmp_path):
    """No fallback: every study fails on its own after its retries; the batch is not retried."""
    from ilsgen.steps import ReportStep

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fail)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        cfg = load_config(None, [f"store.uri={tmp_path}", "gen.report.backend=llm", f"gen.report.llm.base_url={url}",
                                 "gen.report.llm.max_retries=1", "gen.report.llm.backoff_s=0.01",
                                 "gen.report.llm.requests_per_second=0", "gen.report.llm.fallback_to_rules=false",
                                 "gen.report.llm.max_in_flight=4"])
        assert in_flight(cfg.gen.report) == 4
        step = ReportStep(cfg)
        n = 6
        batch = {"study_id": np.array([f"{i}" for i in range(n)], dtype=object),
                 "report": np.array([f"FINDINGS: Distinct sentence {i}." for i in range(n)], dtype=object),
                 "status": np.array(["ok"] * n, dtype=object), "stage": np.array([None] * n, dtype=object),
                 "reason": np.array([None] * n, dtype=object), "timings": np.array(["{}"] * n, dtype=object)}
        _Fail.seen.clear()
        out = step(batch)
        assert list(out["status"]) == ["failed"] * n and set(out["stage"]) == {"report"}
        assert all("LLMReportError" in r for r in out["reason"])
        # each report exactly max_retries + 1 = 2 times: no batch-level retry re-sent the others
        assert len(_Fail.seen) == 2 * n
        assert all(sum(f"sentence {i}." in s for s in _Fail.seen) == 2 for i in range(n))
    finally:
        server.shutdown()


def test_ils_report_structures_files_at_once_in_order(loopback, tmp_path, capsys):
    from ils.cli import main as ils_main

    url, _ = loopback
    files = []
    for i in range(6):
        f = tmp_path / f"r{i}.txt"
        f.write_text(f"FINDINGS: Effusion number {i}.")
        files.append(str(f))
    code = ils_main(["report", "--backend", "llm", *files, f"gen.report.llm.base_url={url}/v1",
                     "gen.report.llm.requests_per_second=0", "gen.report.llm.max_in_flight=6"])
    assert code == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    assert [l["file"] for l in lines] == files and _peak(url)["peak"] == 6
