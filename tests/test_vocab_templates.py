"""The vocabulary and the instruction/answer templates: every pair text parses back to its fields."""

from __future__ import annotations

import itertools

import pytest

from ils.templates import SEG_TOKEN, answer, instruction, parse_answer, parse_instruction
from ils.vocab import LESIONS, LOCATIONS, ZONES, canonical_locations, join_locations, region_bit, split_locations


def test_join_and_split_locations_round_trip():
    for locs in (["left lung base"], ["right lung", "left upper zone lung"], ["heart", "lung", "right mid zone lung"]):
        assert split_locations(join_locations(locs)) == locs
    assert join_locations(["a", "b", "c"]) == "a, b, and c"
    with pytest.raises(ValueError):
        split_locations("left elbow")


def test_canonical_locations_collapse_full_sets():
    right = [z for z in ZONES if z.startswith("right")]
    assert canonical_locations(right) == ["right lung"]
    assert canonical_locations(list(ZONES)) == ["lung"]
    assert canonical_locations(["left lung", "left lung base"]) == ["left lung"]
    assert canonical_locations(["left lung base", "heart", "left lung base"]) == ["heart", "left lung base"]
    with pytest.raises(ValueError):
        canonical_locations(["spleen"])


def test_region_bits_compose():
    assert region_bit("lung") == region_bit("left lung") | region_bit("right lung")
    assert region_bit("heart") & region_bit("lung") == 0
    assert len({region_bit(z) for z in ZONES}) == len(ZONES)


@pytest.mark.parametrize("lesion", LESIONS)
def test_basic_and_global_pairs_parse_back(lesion):
    locs = ["left lung base", "right mid zone lung"]
    q = instruction("basic", lesion, locs)
    assert q == f"Segment the {lesion} in the left lung base and right mid zone lung."
    pos = parse_answer(q, answer("basic", lesion, True, locs))
    neg = parse_answer(q, answer("basic", lesion, False, locs))
    assert (pos.type, pos.lesion, pos.locations, pos.presence) == ("basic", lesion, tuple(locs), True)
    assert neg.presence is False
    g = instruction("global", lesion)
    a = answer("global", lesion, True, locs)
    assert a.startswith(SEG_TOKEN)
    parsed = parse_answer(g, a)
    assert parsed.presence is True
    assert parsed.locations == (() if lesion == "cardiomegaly" else tuple(locs))
    assert parse_answer(g, answer("global", lesion, False)).presence is False


@pytest.mark.parametrize("inferred,certainty", itertools.product(["pneumonia", "atelectasis", "edema"], ["definite", "tentative"]))
def test_lesion_inference_answers_carry_type_and_certainty(inferred, certainty):
    q = instruction("lesion_inference", "opacity", ["right lung base"])
    p = parse_answer(q, answer("lesion_inference", "opacity", True, ["right lung base"], inferred, certainty))
    assert (p.type, p.lesion, p.presence, p.inferred, p.certainty) == ("lesion_inference", "opacity", True, inferred, certainty)
    assert parse_answer(q, answer("lesion_inference", "opacity", False, ["right lung base"])).presence is False


def test_unparseable_answer_and_instruction():
    q = instruction("basic", "edema", ["lung"])
    assert parse_answer(q, "[SEG] purple monkey dishwasher").presence is None
    with pytest.raises(ValueError):
        parse_instruction("Draw me a sheep.")
    with pytest.raises(ValueError):
        answer("lesion_inference", "opacity", True, ["lung"])  # needs the inferred type


def test_every_location_fits_an_instruction():
    for loc in LOCATIONS:
        assert parse_instruction(instruction("basic", "opacity", [loc])).locations == (loc,)
