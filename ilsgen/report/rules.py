"""The offline `rules` report backend: sections, sentences, lesion synonyms, medspaCy ConText.

Per sentence: lesion mentions come from the synonym lexicon (ilsgen.report.lexicon), negation and
uncertainty from medspaCy's ConText (default rules + the lexicon's extra rules; built on
spacy.blank("en"), no model download), locations from ilsgen.report.locations, attached to the
nearest mention in the same sentence. Historical/hypothetical mentions ("history of", "rule out")
are dropped. Rows stay one per mention (as the FINDING schema and SPEC section 2 define); see
`merge_mentions` for how repeated and contradicting mentions are combined.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

from ils.vocab import LESIONS, canonical_locations
from ilsgen.report.lexicon import CONTEXT_RULES, LESION_PATTERNS
from ilsgen.report.locations import find_locations
from ilsgen.report.sections import numbered_sentences
from ilsgen.report.types import ReportResult

log = logging.getLogger(__name__)

_NLP_LOCK = threading.Lock()
_NLP = None  # one spaCy pipeline per process, built on first use


def build_nlp():
    """spaCy blank English + medspaCy target matcher + ConText (offline, no model download)."""
    import spacy
    from medspacy.context import ConTextRule
    from medspacy.ner import TargetRule

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer", config={"punct_chars": [".", "!", "?"]})
    matcher = nlp.add_pipe("medspacy_target_matcher")
    matcher.add([TargetRule(f"{cat}:{i}", cat, pattern=rf"(?i)\b(?:{pat})\b") for i, (cat, pat) in enumerate(LESION_PATTERNS)])
    context = nlp.add_pipe("medspacy_context", config={"rules": "default"})
    context.add([ConTextRule(lit, cat, direction=d, max_scope=scope) for lit, cat, d, scope in CONTEXT_RULES])
    return nlp


def get_nlp():
    global _NLP
    with _NLP_LOCK:
        if _NLP is None:
            _NLP = build_nlp()
        return _NLP


def _attach_locations(sentence: str, mentions: list[tuple[int, int]]) -> list[list[str]]:
    """Each location phrase goes to the nearest mention (a phrase before a mention wins ties)."""
    out: list[list[str]] = [[] for _ in mentions]
    if not mentions:
        return out
    for start, end, locs in find_locations(sentence):
        best, best_d = 0, None
        for i, (ms, me) in enumerate(mentions):
            if start < me and ms < end:
                d = 0.0
            elif end <= ms:
                d = ms - end - 0.5  # before the mention: modifier position, slight preference
            else:
                d = start - me
            if best_d is None or d < best_d:
                best, best_d = i, d
        out[best].extend(locs)
    return out


#: Lesions that describe an appearance another lesion may explain.
_DESCRIPTIVE = ("opacity", "consolidation")
#: Lesions that explain an opacity of the previous sentence ("... The appearance suggests atelectasis.").
_EXPLAINING = ("atelectasis", "pneumonia", "consolidation")


def _lesion_of(label: str) -> str:
    return label.rpartition(":")[2]


def _inherit_locations(ents, locs: list[list[str]], before: list[str]) -> list[list[str]]:
    """A lung lesion without its own location takes that of the nearest preceding lung mention of the
    sentence ("left basilar opacity likely reflects atelectasis", "left effusion with adjacent
    atelectasis"), else that of an opacity/consolidation of the previous sentence (`before`:
    "Opacities in the lingula. The appearance suggests atelectasis.")."""
    out = [list(l) for l in locs]
    for i in range(len(out)):
        lesion = _lesion_of(ents[i].label_)
        if out[i] or lesion == "cardiomegaly" or not _is_present(ents[i]):
            continue
        for j in range(i - 1, -1, -1):
            if out[j] and _lesion_of(ents[j].label_) != "cardiomegaly":
                out[i] = list(out[j])
                break
        else:
            if lesion in _EXPLAINING:
                out[i] = list(before)
    return out


def _is_present(ent) -> bool:
    return not (ent._.is_negated or ent.label_.startswith("NORMAL:"))


class RulesReportBackend:
    """`structure(study_id, report)` -> FINDING rows with source "rules". Picklable; lazy spaCy."""

    source = "rules"

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cfg = state["cfg"]

    def mentions(self, report: str) -> list[dict[str, Any]]:
        """Every lesion mention, sentence by sentence, before merging."""
        if not isinstance(report, str):
            raise TypeError(f"report must be a string, not {type(report).__name__}")
        nlp = get_nlp()
        rows: list[dict[str, Any]] = []
        before: list[str] = []  # locations of the previous sentence's opacity/consolidation
        for sent_idx, _section, sentence in numbered_sentences(report):
            with warnings.catch_warnings():  # medspaCy: W036 "matcher has no patterns" on every call
                warnings.simplefilter("ignore", UserWarning)
                doc = nlp(sentence)
            ents = [e for e in doc.ents if e.label_ != "IGNORE"]
            spans = [(e.start_char, e.end_char) for e in ents]
            locs = _inherit_locations(ents, _attach_locations(sentence, spans), before)
            before = canonical_locations(l for e, ls in zip(ents, locs) if _lesion_of(e.label_) in _DESCRIPTIVE
                                         and _is_present(e) for l in ls if l != "heart")
            for ent, ent_locs in zip(ents, locs):
                if ent._.is_historical or ent._.is_hypothetical or ent._.is_family:
                    continue
                kind, _, lesion = ent.label_.rpartition(":")  # "", NORMAL or TENTATIVE (lexicon.py)
                if lesion not in LESIONS:
                    continue
                present = not (kind == "NORMAL" or ent._.is_negated)
                tentative = ent._.is_uncertain or kind == "TENTATIVE"
                certainty = ("tentative" if tentative else "definite") if present else None
                locations = ["heart"] if lesion == "cardiomegaly" else canonical_locations(
                    l for l in ent_locs if l != "heart")
                rows.append({"lesion": lesion, "present": present, "certainty": certainty,
                             "locations": locations, "sent_idx": sent_idx, "sentence": sentence,
                             "entity": ent.text})
        return rows

    def structure(self, study_id: str, report: str) -> list[dict[str, Any]]:
        rows = merge_mentions(self.mentions(report or ""))
        for i, row in enumerate(rows):
            row.update(study_id=study_id, finding_idx=i, source=self.source)
        return rows

    def structure_ex(self, study_id: str, report: str):
        """Rows and their source, like LLMReportBackend.structure_ex."""
        return ReportResult(self.structure(study_id, report), self.source)

    def stats(self) -> dict[str, int]:
        return {}


def merge_mentions(mentions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Combine mentions sensibly, keeping one row per mention (the FINDING schema, SPEC section 2).

    - one row per (sentence, lesion, presence): locations united, "definite" beats "tentative";
    - an absent mention contradicted by a present one (no location, or an overlapping one) is dropped;
    - a present mention without a location takes the locations of the lesion's other present
      mentions (an impression repeating "Right pleural effusion" as "Effusion").
    """
    merged: dict[tuple[int, str, bool], dict[str, Any]] = {}
    for m in mentions:
        key = (m["sent_idx"], m["lesion"], m["present"])
        if key not in merged:
            merged[key] = dict(m, locations=list(m["locations"]))
            continue
        cur = merged[key]
        cur["locations"] = canonical_locations(cur["locations"] + m["locations"])
        if m["present"] and m["certainty"] == "definite":
            cur["certainty"] = "definite"
    present_locs: dict[str, list[str]] = {}
    for (_, lesion, present), row in merged.items():
        if present and row["locations"]:
            present_locs[lesion] = canonical_locations(present_locs.get(lesion, []) + row["locations"])
    out = []
    for (_, lesion, present), row in merged.items():
        if present and not row["locations"] and lesion in present_locs:
            row["locations"] = list(present_locs[lesion])
        if not present and any(k[1] == lesion and k[2] for k in merged):
            pos = present_locs.get(lesion, [])
            if not row["locations"] or not pos or set(row["locations"]) & set(pos):
                continue
        out.append(row)
    out.sort(key=lambda r: (r["sent_idx"], LESIONS.index(r["lesion"])))
    return out
