"""One decision per answer (ils.answers): the served answer never contradicts the presence decision."""

from __future__ import annotations

import pytest

from ils.answers import agrees, decide, message
from ils.templates import parse_answer

CASES = [
    # (instruction, generation, decided presence)
    ("Segment the cardiomegaly.", "[SEG]", False),
    ("Segment the opacity in the right upper zone lung and predict its type.", "[SEG] There is no opacity in the right upper zone lung.", True),
    ("Segment the opacity.", "[SEG] It is highly suggestive of edema located in the right lung base, left mid zone lung, and left mid zone lung.", True),
    ("Segment the effusion in the left lung base.", "[SEG] gibberish words", False),
    ("Segment the effusion in the left lung base.", "[SEG] gibberish words", True),
    ("Segment the opacity in the lung and predict its type.", "[SEG] There is no opacity in the lung. It possibly reflects atelectasis.", True),
]


@pytest.mark.parametrize("instruction,generated,present", CASES)
def test_decided_answer_agrees_and_keeps_the_generation(instruction, generated, present):
    d = decide(instruction, generated, present, 0.7)
    assert d.raw_answer == generated and d.agreed is False
    assert d.answer.startswith("[SEG]") and parse_answer(instruction, d.answer).presence is present
    assert agrees(instruction, d.answer, present) and not agrees(instruction, generated, present)
    assert d.message.startswith("No ") != present


def test_agreeing_generation_is_kept_and_parts_are_reused():
    d = decide("Segment the opacity in the right upper zone lung and predict its type.", "[SEG] It possibly reflects pneumonia.", True, 0.61)
    assert d.agreed is True and d.answer == d.raw_answer and d.inferred == "pneumonia"
    assert d.message == "Opacity in the right upper zone, possibly pneumonia (confidence 0.61)."
    # a contradicting generation whose locations parse: the rebuilt answer keeps them (canonical order, no repeats)
    d = decide("Segment the edema.", "[SEG] There is no edema. located in the left lung base and right lung base.", True, 0.8)
    assert d.answer == "[SEG] It is located in the right lung base and left lung base." and d.inferred is None
    # an off-template instruction: nothing to rebuild from, the agreement is unknown
    assert decide("what is this", "[SEG]", True, 0.9).agreed is None


def test_messages_in_plain_words():
    assert message("basic", "effusion", True, 0.943, ["left lung base"]) == "Pleural effusion found in the left lung base (confidence 0.94)."
    assert message("basic", "effusion", False, 0.1, ["left lung base"]) == "No pleural effusion found in the left lung base."
    assert message("global", "cardiomegaly", True, 0.9) == "Cardiomegaly found (confidence 0.90)."
    assert message("lesion_inference", "opacity", True, 0.5, ["right upper zone lung"], "edema", "definite") == \
        "Opacity in the right upper zone, highly suggestive of edema (confidence 0.50)."
    assert message("global", "edema", True, 0.5, ["lung"]) == "Edema found in the lungs (confidence 0.50)."
