"""The real-report yardstick: IU loader (odd split enforced), MeSH scoring, `ils report-eval`,
and the rules/LLM-prompt agreement on the real-report cases."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest

from ils.errors import UserError
from ilsgen.report import make_report_backend, prompt
from ilsgen.report.iu import LoadStats, default_tgz, load_reports
from ilsgen.report.yardstick import balanced_subset, score, truth_of

XML = """<?xml version="1.0" encoding="utf-8"?><eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="INDICATION">Cough</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation><MeSH>{tags}</MeSH></eCitation>"""


def _xml(findings: str, impression: str, *tags: str) -> str:
    return XML.format(findings=findings, impression=impression, tags="".join(f"<major>{t}</major>" for t in tags))


REPORTS = {
    1: _xml("Small right pleural effusion. Heart size is normal.", "Right effusion.", "Pleural Effusion/right/small"),
    3: _xml("Heart size and pulmonary vascular engorgement appear within limits of normal. Old granulomatous disease.",
            "No acute disease.", "Granulomatous Disease"),
    5: _xml("Left basilar opacity, may be secondary to atelectasis. Differential includes pneumonia.",
            "Scarring or atelectasis at the left base.", "Opacity/lung/base/left", "Pulmonary Atelectasis/base/left"),
    7: _xml("Mild cardiomegaly with central vascular congestion.", "Cardiomegaly.", "Cardiomegaly/mild",
            "Pulmonary Congestion/mild", "Pulmonary Edema"),
}


@pytest.fixture()
def iu_dir(tmp_path):
    for n, text in REPORTS.items():
        (tmp_path / f"{n}.xml").write_text(text)
    (tmp_path / "2.xml").write_text("<not xml")  # held-out files must never be parsed
    (tmp_path / "4.xml").write_text(_xml("Large effusion.", "Effusion.", "Pleural Effusion"))
    return tmp_path


def test_loader_reads_only_odd_files(iu_dir, tmp_path_factory):
    stats = LoadStats("odd")
    reports = load_reports(iu_dir, stats=stats)
    assert [r.number for r in reports] == [1, 3, 5, 7]
    assert stats.skipped_other_split == 2 and stats.read == 4
    assert reports[0].text.splitlines()[1] == "FINDINGS: Small right pleural effusion. Heart size is normal."
    assert reports[0].tags == [["Pleural Effusion", "right", "small"]]
    # the same from a tgz; the broken even file is skipped by name there too
    tgz = tmp_path_factory.mktemp("tgz") / "reports.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for p in sorted(iu_dir.iterdir()):
            tar.add(p, arcname=f"ecgen-radiology/{p.name}")
    assert [r.number for r in load_reports(tgz, limit=2)] == [1, 3]
    with pytest.raises(ValueError, match="2.xml"):  # asking for the held-out split explicitly does read it
        load_reports(iu_dir, split="even")
    with pytest.raises(UserError):
        load_reports(iu_dir, split="all")
    with pytest.raises(UserError):
        load_reports(iu_dir / "missing.tgz")


def test_truth_mapping_and_scores(iu_dir):
    reports = load_reports(iu_dir)
    assert truth_of(reports[0]) == ({"effusion"}, {"effusion": {"right"}})
    assert truth_of(reports[3])[0] == {"cardiomegaly", "edema"}  # Pulmonary Congestion maps to nothing
    rules = make_report_backend(None)
    res = score(reports, lambda r: rules.structure(r.report_id, r.text))
    les = res["lesions"]
    assert (les["effusion"]["tp"], les["effusion"]["fp"], les["effusion"]["fn"]) == (1, 0, 0)
    assert les["cardiomegaly"]["tp"] == 1 and les["cardiomegaly"]["fp"] == 0  # the normal statement is no finding
    assert les["edema"]["fn"] == 1 and les["edema"]["fp"] == 0  # congestion is not edema
    assert les["pneumonia"]["fp"] == 0  # hedged differential and old granulomatous disease
    assert les["atelectasis"]["tp"] == 1  # "scarring or atelectasis" is a definite alternative
    assert res["side"] == {"n": 2, "agree": 2, "agreement": 1.0, "parsed_without_side": 0, "disagreements": {}}
    assert res["modes"]["any"]["lesions"]["pneumonia"]["fp"] == 1  # the hedge counts when hedged = present
    assert res["confusions"][0] == {"lesion": "edema", "kind": "fn", "count": 1, "report_ids": ["iu-7"]}
    assert les["pneumonia"]["f1"] is None and res["macro_over"] == 4  # no truth, no parse: not scored as 0
    assert [r.number for r in balanced_subset(reports, 2)] == [1, 3]  # one tagged, one without a headline tag
    # a parser that says nothing scores zero: the figures come from the rows
    empty = score(reports, lambda r: [])
    assert empty["macro_f1"] == 0.0 and empty["side"]["n"] == 0


def test_report_eval_cli_on_iu_tgz(tmp_path):
    """`ils report-eval` on the first 12 odd-numbered real IU reports of the installed torchxrayvision tgz."""
    if default_tgz() is None:
        pytest.skip("torchxrayvision is not installed (requirements/data.txt, --no-deps): no IU reports")
    out = tmp_path / "iu.json"
    proc = subprocess.run([sys.executable, "-m", "ils.cli", "report-eval", "--limit", "12", "--out", str(out),
                           f"store.uri={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "odd split" in proc.stdout and "macro F1" in proc.stdout
    res = json.loads(out.read_text())
    assert res["reports"] == 12 and res["split"] == "odd" and res["backend"] == "rules"
    assert res["load"]["read"] >= 12 and res["load"]["skipped_other_split"] > 1900  # even files never read
    assert set(res["lesions"]) == {"cardiomegaly", "effusion", "atelectasis", "edema", "pneumonia"}
    assert "iu-2" not in json.dumps(res)


def test_llm_few_shot_answers_agree_with_rules():
    """The prompt's worked examples say what the rules backend says: one decision, two backends."""
    rules = make_report_backend(None)
    for sentences, findings in prompt.FEW_SHOT:
        got = {(r["sent_idx"], r["lesion"], r["present"], r["certainty"], tuple(r["locations"]))
               for r in rules.structure("s", "FINDINGS: " + " ".join(sentences))}
        want = {(f["sent_idx"], f["lesion"], f["present"], f["certainty"] if f["present"] else None,
                 tuple(f["locations"])) for f in findings}
        assert got == want
    msgs = prompt.messages(["Small effusion."])
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * len(prompt.FEW_SHOT) + ["user"]
    assert "NOT edema" in msgs[0]["content"] and len(prompt.messages(["x"], few_shot=False)) == 2


def test_report_types_have_one_home():
    """rules no longer imports the llm module for ReportResult (no import cycle)."""
    code = ("import sys, ilsgen.report.rules as r; from ilsgen.report.types import ReportResult; "
            "assert 'ilsgen.report.llm' not in sys.modules; assert r.ReportResult is ReportResult")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    from ilsgen.report.llm import ReportResult as FromLLM
    from ilsgen.report.types import ReportResult

    assert FromLLM is ReportResult
