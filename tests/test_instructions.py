"""Instructions as people type them (ils.instructions.normalize): canonical template or a clear refusal."""

from __future__ import annotations

import pytest

from ils.instructions import InstructionError, normalize
from ils.templates import parse_instruction

READS = [
    ("Is there fluid in the left chest?", "Segment the effusion in the left lung."),
    ("Segment the pleural effusion in the left lower lobe.", "Segment the effusion in the left lung base."),
    ("Is the heart enlarged?", "Segment the cardiomegaly."),
    ("enlarged heart", "Segment the cardiomegaly."),
    ("bibasilar atelectasis", "Segment the atelectasis in the right lung base and left lung base."),
    ("Opacity in the lingula: what type is it?", "Segment the opacity in the left mid zone lung and predict its type."),
    ("show me the edema in both lungs", "Segment the edema in the lung."),
    ("Where is the consolidative opacity in the RLL?", "Segment the consolidation in the right lung base."),
    ("blunting of the right costophrenic angle", "Segment the effusion in the right lung base."),
    ("Any pneumonia?", "Segment the pneumonia."),
    ("  segment the EFFUSION in the left lung base ", "Segment the effusion in the left lung base."),
]


@pytest.mark.parametrize("typed,canonical", READS)
def test_typed_instructions_read_as_templates(typed, canonical):
    r = normalize(typed)
    assert r.canonical == canonical
    q = parse_instruction(r.canonical)
    assert (q.type, q.lesion, q.locations) == (r.type, r.lesion, r.locations)


def test_template_instructions_pass_unchanged_and_matches_are_reported():
    r = normalize("Segment the opacity in the right upper zone lung and predict its type.")
    assert r.how == "template" and r.canonical == "Segment the opacity in the right upper zone lung and predict its type."
    r = normalize("Is there fluid in the left lower lobe?")
    assert r.how == "normalized" and ("fluid", "pleural effusion") in r.matched and ("left lower lobe", "left lung base") in r.matched
    assert r.as_dict()["matched"][0] == {"typed": "fluid", "read_as": "pleural effusion"}


@pytest.mark.parametrize("typed,kind,says", [
    ("Segment the nodule in the right lung.", "unsupported_lesion", "'nodule' is not a finding"),
    ("Is there a pneumothorax?", "unsupported_lesion", "pleural effusion"),
    ("pericardial effusion?", "unsupported_lesion", "'pericardial effusion'"),
    ("rib fracture on the left", "unsupported_lesion", "fracture"),
    ("What do you see in the left lung?", "no_lesion", "for example: 'Segment the"),
    ("effusion and edema", "several_lesions", "one at a time"),
])
def test_refusals_name_the_supported_findings(typed, kind, says):
    with pytest.raises(InstructionError) as err:
        normalize(typed)
    assert err.value.kind == kind and says in str(err.value)


def test_paraphrases_read_back_to_their_template():
    from ils.paraphrase import paraphrases

    cases = [("basic", "effusion", ["left lung base"]), ("basic", "edema", ["right lung base", "left lung base"]),
             ("global", "cardiomegaly", []), ("global", "pneumonia", []), ("lesion_inference", "opacity", ["left mid zone lung"]),
             ("basic", "consolidation", ["lung"])]
    for type_, lesion, locs in cases:
        out = paraphrases(type_, lesion, locs, key="pair-1")
        canonical = normalize(f"Segment the {lesion}.").canonical if type_ == "global" else None
        assert len(out) == 3 and len(set(out)) == 3, out
        assert paraphrases(type_, lesion, locs, key="pair-1") == out  # deterministic per pair
        for text in out:
            r = normalize(text)
            assert r.how == "normalized" and (r.type, r.lesion, list(r.locations)) == (type_, lesion, locs), text
            assert canonical is None or r.canonical == canonical
