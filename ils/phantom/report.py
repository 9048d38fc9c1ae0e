"""Free-text reports for phantom studies, written the way radiologists phrase them, plus the
structured truth of every lesion mention.

Sentence indices (`sent_idx`) count the sentences of FINDINGS followed by those of IMPRESSION,
from 0. Location words map to the vocabulary as a radiologist would read them: "right lower lobe"
/ "right base" -> right lung base, "bibasilar" -> both lung bases, "retrocardiac" -> left lung
base, "lingula" -> left mid zone, "right middle lobe" -> right mid zone, "upper lobe" -> upper
zone, "apical"/"apex" -> apical zone, "perihilar" -> both mid zones, "bilateral" -> lung; a
phrase without a location gives an empty (unspecified) location list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ils.vocab import LESION_PROSE, canonical_locations, zone_name

SIDES_KEY = {("right",): "R", ("left",): "L", ("right", "left"): "B"}

#: (sides, zone kind) -> [(adjective form, noun-phrase form, medial)], radiologists' words.
LOCATION_WORDS: dict[tuple[str, str], list[tuple[str, str, bool]]] = {
    ("R", "lung base"): [("right lower lobe", "right lower lobe", False), ("right basilar", "right base", False), ("right base", "right lung base", False)],
    ("L", "lung base"): [("left lower lobe", "left lower lobe", False), ("left basilar", "left base", False), ("retrocardiac", "retrocardiac region", True)],
    ("B", "lung base"): [("bibasilar", "lung bases", False), ("bilateral lower lobe", "bilateral lower lobes", False), ("bibasal", "bases bilaterally", False)],
    ("R", "mid zone lung"): [("right middle lobe", "right middle lobe", False), ("right mid lung", "right mid lung", False)],
    ("L", "mid zone lung"): [("lingular", "lingula", False), ("left mid lung", "left mid lung", False)],
    ("B", "mid zone lung"): [("bilateral mid lung", "mid lungs bilaterally", False)],
    ("R", "upper zone lung"): [("right upper lobe", "right upper lobe", False), ("right upper lung", "right upper lung", False)],
    ("L", "upper zone lung"): [("left upper lobe", "left upper lobe", False), ("left upper lung", "left upper lung", False)],
    ("B", "upper zone lung"): [("bilateral upper lobe", "upper lobes bilaterally", False)],
    ("R", "apical zone lung"): [("right apical", "right apex", False)],
    ("L", "apical zone lung"): [("left apical", "left apex", False)],
    ("B", "apical zone lung"): [("biapical", "lung apices", False)],
}


@dataclass
class Plan:
    """One lesion type present in a study, with how the report words it."""

    lesion: str
    certainty: str  # definite | tentative
    sides: tuple[str, ...]  # () for cardiomegaly
    kind: str | None  # zone kind of the lesion's placement
    severity: float  # 0..1: size of effusion, severity of edema, ...
    adj: str = ""  # location, adjective form
    np_: str = ""  # location, noun-phrase form
    medial: bool = False
    reported: list[str] = field(default_factory=list)
    differential: bool = False  # worded "opacity ..., likely <lesion>" (adds an opacity mention)
    edema_loc: str = ""  # perihilar | bilateral | "" (unspecified)


@dataclass
class Mention:
    sent_idx: int
    lesion: str
    present: bool
    certainty: str | None
    locations: list[str]
    entity: str


@dataclass
class Report:
    text: str
    sentences: list[str]
    mentions: list[Mention]


def zones_of(sides: tuple[str, ...], kind: str) -> list[str]:
    return canonical_locations(zone_name(s, kind) for s in sides)


def choose_words(plan: Plan, rng: np.random.Generator) -> None:
    """Pick the location words of a plan and its canonical reported locations."""
    if plan.lesion == "cardiomegaly":
        plan.reported = ["heart"]
        return
    if plan.lesion == "edema":
        plan.edema_loc = str(rng.choice(["perihilar", "perihilar", "bilateral", ""]))
        plan.reported = (
            zones_of(("right", "left"), "mid zone lung") if plan.edema_loc == "perihilar"
            else ["lung"] if plan.edema_loc == "bilateral" else []
        )
        return
    if plan.lesion == "effusion":
        plan.reported = zones_of(plan.sides, "lung base")
        return
    options = LOCATION_WORDS[(SIDES_KEY[plan.sides], plan.kind)]
    plan.adj, plan.np_, plan.medial = options[int(rng.integers(len(options)))]
    plan.reported = zones_of(plan.sides, plan.kind)


def _cap(s: str) -> str:
    s = " ".join(s.split())
    return s[:1].upper() + s[1:]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _size_word(sev: float) -> str:
    return "small" if sev < 0.35 else "moderate" if sev < 0.7 else "large"


def _sev_word(sev: float) -> str:
    return "mild" if sev < 0.4 else "moderate" if sev < 0.75 else "severe"


def _side_word(sides: tuple[str, ...]) -> str:
    return "bilateral" if len(sides) == 2 else sides[0]


def positive_sentence(p: Plan, rng: np.random.Generator) -> tuple[str, list[tuple[str, str, list[str], str]]]:
    """(sentence, [(lesion, certainty, locations, entity)]) for one planned lesion."""
    noun = LESION_PROSE[p.lesion]
    tent = p.certainty == "tentative"
    if p.lesion == "effusion":
        side, size = _side_word(p.sides), _size_word(p.severity)
        both = len(p.sides) == 2
        plural = "effusions" if both else "effusion"
        if tent:
            s = _pick(rng, [
                f"Possible {size} {side} pleural {plural}.",
                f"A {size} {side} pleural {plural} cannot be excluded." if not both else "Small bilateral pleural effusions cannot be excluded.",
                f"Blunting of the {'costophrenic angles' if both else side + ' costophrenic angle'} may represent a small {'effusion' if not both else 'bilateral effusions'}.",
            ])
        elif size == "small" and rng.random() < 0.35:
            s = ("Blunting of both costophrenic angles consistent with small bilateral pleural effusions." if both
                 else f"Blunting of the {side} costophrenic angle consistent with a small pleural effusion.")
        else:
            s = _pick(rng, [
                f"{size} {side} pleural {plural}.",
                f"There {'are' if both else 'is a'} {size} {side} {plural}.",
                f"{size} {side} pleural {plural} with blunting of the costophrenic {'angles' if both else 'angle'}.",
                f"Layering {size} {side} pleural {plural}.",
            ])
        return _cap(s), [(p.lesion, p.certainty, p.reported, "pleural effusion")]
    if p.lesion == "cardiomegaly":
        if tent:
            s = _pick(rng, ["Possible mild cardiomegaly.", "The heart is likely mildly enlarged.", "Cardiomegaly cannot be excluded."])
        else:
            s = _pick(rng, ["The heart is enlarged.", "Cardiomegaly.", "Moderate cardiomegaly.", "Enlarged cardiac silhouette.",
                            "The cardiac silhouette is enlarged."])
        return s, [(p.lesion, p.certainty, p.reported, "cardiomegaly" if "ardiomegaly" in s else "enlarged heart")]
    if p.lesion == "edema":
        sev = _sev_word(p.severity)
        loc = p.edema_loc
        if tent:
            s = {"perihilar": "Perihilar haziness may represent mild pulmonary edema.",
                 "bilateral": "Possible mild bilateral interstitial edema.",
                 "": "Possible mild pulmonary edema."}[loc]
        else:
            s = _pick(rng, {
                "perihilar": [f"{sev} perihilar edema.", f"Perihilar haziness consistent with {sev} pulmonary edema."],
                "bilateral": [f"{sev} bilateral interstitial edema.", f"Bilateral perihilar and interstitial opacities consistent with {sev} pulmonary edema."],
                "": [f"{sev} pulmonary edema.", f"{sev} interstitial edema.", f"Pulmonary vascular congestion with {sev} interstitial edema."],
            }[loc])
            if "opacities consistent" in s:  # "bilateral" but the words say perihilar: keep the truth honest
                s = f"{sev} bilateral interstitial edema."
        return _cap(s), [(p.lesion, p.certainty, p.reported, "edema")]
    adj, np_ = p.adj, p.np_
    if p.differential:
        hedge = (_pick(rng, ["consistent with"]) if not tent else _pick(rng, ["which may represent", "likely", "concerning for", "possibly",
                                                                                "; differential includes", "; differential diagnosis includes"]))
        s = _cap(f"{adj} opacity{'' if hedge.startswith(';') else ','} {hedge} {noun}.")
        return s, [("opacity", "definite", p.reported, f"{adj} opacity"), (p.lesion, p.certainty, p.reported, noun)]
    if tent:
        forms = [f"Possible {adj} {noun}.", f"{noun} in the {np_} cannot be excluded.", f"Likely {adj} {noun}.",
                 f"Findings in the {np_} may represent {noun}.", f"Findings in the {np_} are suspicious for {noun}.",
                 f"Question of {adj} {noun}."]
        if p.lesion == "pneumonia":  # real reports' hedges for infection ("infection" is tentative pneumonia)
            forms += [f"Please correlate clinically for {adj} pneumonia.", f"Findings in the {np_} are concerning for infection."]
        s = _pick(rng, forms)
        return _cap(s), [(p.lesion, p.certainty, p.reported, "infection" if "infection" in s else noun)]
    size = _pick(rng, ["", "", "small ", "patchy "]) if p.lesion != "atelectasis" else ""
    forms = {
        "consolidation": [f"{size}{adj} airspace consolidation.", f"There is consolidation in the {np_}.",
                          f"Focal consolidation is seen in the {np_}.", f"Dense {adj} consolidation.",
                          f"Persistent {adj} consolidation."],
        "pneumonia": [f"{adj} pneumonia.", f"Findings in the {np_} are consistent with pneumonia.", f"There is {adj} pneumonia.",
                      f"Improved but persistent {adj} pneumonia."],
        "atelectasis": [f"{adj} atelectasis.", f"Subsegmental atelectasis in the {np_}.", f"{adj} plate-like atelectasis.",
                        f"There is atelectasis at the {np_}.", f"{adj} atelectasis or scarring.",
                        f"{adj} atelectasis is unchanged."],
        "opacity": [f"{adj} opacity.", f"Patchy opacity in the {np_}.", f"There is an ill-defined opacity in the {np_}.",
                    f"Hazy {adj} opacity.", f"{size}{adj} airspace opacity."],
    }[p.lesion]
    s = _cap(_pick(rng, forms))
    return s, [(p.lesion, p.certainty, p.reported, noun)]


def impression_sentence(p: Plan, rng: np.random.Generator) -> tuple[str, list[tuple[str, str, list[str], str]]]:
    noun = LESION_PROSE[p.lesion]
    tent = p.certainty == "tentative"
    if p.lesion == "cardiomegaly":
        return ("Possible cardiomegaly." if tent else "Cardiomegaly."), [(p.lesion, p.certainty, p.reported, "cardiomegaly")]
    if p.lesion == "effusion":
        s = f"{'Possible ' if tent else ''}{_side_word(p.sides)} pleural effusion{'s' if len(p.sides) == 2 else ''}."
        return _cap(s), [(p.lesion, p.certainty, p.reported, "pleural effusion")]
    if p.lesion == "edema":
        loc = {"perihilar": "perihilar ", "bilateral": "bilateral ", "": ""}[p.edema_loc]
        return _cap(f"{'possible ' if tent else ''}{loc}pulmonary edema."), [(p.lesion, p.certainty, p.reported, "pulmonary edema")]
    s = _cap(f"{'possible ' if tent else ''}{p.adj} {noun}.")
    return s, [(p.lesion, p.certainty, p.reported, noun)]


#: Negated statements: (sentence, [lesions it negates]); "pneumothorax" is not in the vocabulary.
NEGATIONS: dict[str, list[str]] = {
    "effusion": ["No pleural effusion.", "No pleural effusion or pneumothorax.", "There is no pleural effusion.",
                 "Previously seen pleural effusion has resolved."],
    "consolidation": ["No focal consolidation.", "The lungs are clear without focal consolidation.", "There is no consolidation."],
    "pneumonia": ["No evidence of pneumonia.", "No radiographic evidence of pneumonia.", "Interval resolution of the previously seen pneumonia."],
    "edema": ["No pulmonary edema.", "No evidence of pulmonary edema.", "There is no pulmonary vascular congestion or edema."],
    "cardiomegaly": ["No cardiomegaly.", "The cardiac silhouette is not enlarged.", "Heart size is normal.",
                     "Heart size and pulmonary vascularity are within normal limits.", "Heart size is within normal limits."],
    "opacity": ["No focal opacity.", "No focal airspace opacity."],
    "atelectasis": ["No atelectasis.", "No focal atelectasis."],
}
COMBINED: list[tuple[str, tuple[str, ...]]] = [
    ("No focal consolidation, pleural effusion, or pneumothorax.", ("consolidation", "effusion")),
    ("No pleural effusion, pulmonary edema, or pneumothorax.", ("effusion", "edema")),
    ("There is no focal consolidation or pulmonary edema.", ("consolidation", "edema")),
]
#: Real reports' sentences that name lesion words but report none of them now (no truth mention):
#: history and old disease, and vascular congestion (not edema, ilsgen/report/lexicon.py).
DISTRACTORS: list[str] = ["History of pneumonia.", "Old granulomatous disease.",
                          "Calcified granulomas consistent with prior granulomatous infection.",
                          "Mild central pulmonary vascular congestion."]
NEG_PROB = {"effusion": 0.8, "consolidation": 0.55, "edema": 0.35, "cardiomegaly": 0.45, "pneumonia": 0.25, "opacity": 0.2, "atelectasis": 0.1}
NORMAL_IMPRESSIONS = ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.", "No acute cardiopulmonary abnormality."]
INDICATIONS = ["___ with cough.", "___ with shortness of breath.", "___ with fever and cough.", "___ with chest pain.",
               "___-year-old with dyspnea.", "Preoperative evaluation."]


def compose(plans: list[Plan], rng: np.random.Generator) -> Report:
    """Write a report for the planned lesions; every mention becomes a structured Mention."""
    present = {p.lesion for p in plans}
    lung_lines: list[tuple[str, list]] = []
    pleura_lines: list[tuple[str, list]] = []
    heart_lines: list[tuple[str, list]] = []
    other_lines: list[tuple[str, list]] = []
    for p in plans:
        s, ms = positive_sentence(p, rng)
        (pleura_lines if p.lesion == "effusion" else heart_lines if p.lesion == "cardiomegaly" else lung_lines).append((s, ms))
    if any(p.differential for p in plans):
        present.add("opacity")
    absent = [l for l in NEG_PROB if l not in present and rng.random() < NEG_PROB[l]]
    for text, pair in COMBINED:
        if set(pair) <= set(absent) and rng.random() < 0.4:
            absent = [a for a in absent if a not in pair]
            pleura_lines.append((text, [(a, None, [], "pleural effusion" if a == "effusion" else a) for a in pair]))
            break
    for a in absent:
        s = _pick(rng, NEGATIONS[a])
        entity = {"effusion": "pleural effusion", "edema": "edema" if "edema" in s else "vascular congestion",
                  "cardiomegaly": "cardiomegaly" if "cardiomegaly" in s else "heart size" if "size" in s else "cardiac silhouette"}.get(a, a)
        line = (s, [(a, None, [], entity)])
        (pleura_lines if a == "effusion" else heart_lines if a == "cardiomegaly" else lung_lines).append(line)
    if not (present - {"cardiomegaly", "effusion"}) and rng.random() < 0.7:
        lung_lines.insert(0, (_pick(rng, ["The lungs are clear.", "Lungs are well expanded and clear."]), []))
    if "cardiomegaly" not in present and rng.random() < 0.6:
        heart_lines.append((_pick(rng, ["The cardiomediastinal silhouette is within normal limits.", "Mediastinal and hilar contours are unremarkable."]), []))
    if "effusion" not in present and not any("pneumothorax" in s for s, _ in pleura_lines) and rng.random() < 0.6:
        pleura_lines.append(("No pneumothorax.", []))
    if rng.random() < 0.3:
        other_lines.append(("No acute osseous abnormality.", []))
    if rng.random() < 0.35:
        other_lines.append((_pick(rng, DISTRACTORS), []))
    findings = lung_lines + pleura_lines + heart_lines + other_lines
    impression: list[tuple[str, list]] = []
    if plans:
        order = sorted(plans, key=lambda p: (p.certainty != "definite", p.lesion))
        for p in order[: int(rng.integers(1, 3))]:
            impression.append(impression_sentence(p, rng))
    else:
        impression.append((_pick(rng, NORMAL_IMPRESSIONS), []))
    sentences: list[str] = []
    mentions: list[Mention] = []
    for idx, (s, ms) in enumerate(findings + impression):
        sentences.append(s)
        for lesion, cert, locs, entity in ms:
            mentions.append(Mention(idx, lesion, cert is not None, cert, list(locs), entity))
    nf = len(findings)
    text = (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA)\n\n"
        f" INDICATION:  {_pick(rng, INDICATIONS)}\n\n"
        " TECHNIQUE:  PA view of the chest.\n\n"
        f" COMPARISON:  {_pick(rng, ['None.', '___.'])}\n\n"
        " FINDINGS:\n \n " + " ".join(sentences[:nf]) + "\n \n"
        " IMPRESSION:\n \n " + " ".join(sentences[nf:]) + "\n"
    )
    return Report(text, sentences, mentions)
