"""Lesion synonyms and ConText modifier rules for the offline `rules` report backend.

Mapping (documented choice):
  effusion      pleural effusion(s), effusion(s), pleural fluid, layering fluid, hydrothorax,
                blunting of the costophrenic angle(s)            (not: pericardial effusion)
  cardiomegaly  cardiomegaly, enlarged cardiac silhouette / heart (size), cardiac enlargement,
                heart size is enlarged;  "heart size is normal" and alike = cardiomegaly absent.
                The *cardiomediastinal* silhouette is not the heart alone (CheXpert's "enlarged
                cardiomediastinum" is a separate label): it names no cardiomegaly finding.
  consolidation consolidation(s), consolidative opacity/process, consolidated, airspace disease
  pneumonia     pneumonia, bronchopneumonia, pneumonic, infection, infectious process
  atelectasis   atelectasis, atelectatic, collapse, volume loss
  edema         (pulmonary / interstitial / alveolar) edema, vascular congestion / engorgement /
                redistribution, fluid overload, cephalization    (not: soft tissue edema)
  opacity       opacity/opacities, opacification, density/densities, haziness, infiltrate(s)
Each pattern is a case-insensitive regular expression over one sentence. The category "IGNORE"
claims look-alikes so that the longest match wins; "NORMAL:<lesion>" marks an explicit normal
statement (the lesion is absent).
"""

from __future__ import annotations

_DEG = r"(?:(?:very |only )?(?:mild(?:ly)?|moderate(?:ly)?|marked(?:ly)?|severe(?:ly)?|slight(?:ly)?|minimal(?:ly)?|substantial(?:ly)?|massive(?:ly)?|borderline|top[- ]normal to|at least|again|still|now|newly) )*"
_BE = r"(?:(?:is|are|appears?|remains?|seems?|looks?)(?: to be)? )?(?:(?:likely|probably|possibly|perhaps|questionably) )?"

LESION_PATTERNS: list[tuple[str, str]] = [
    ("cardiomegaly", r"cardiomegaly"),
    ("cardiomegaly", rf"(?:cardiac|heart) (?:silhouette|size|shadow|contours?) {_BE}{_DEG}(?:enlarged|increased|prominent)"),
    ("cardiomegaly", rf"(?:the )?heart {_BE}{_DEG}(?:enlarged|increased in size)"),
    ("cardiomegaly", rf"{_DEG}enlarged (?:cardiac silhouette|heart(?: size)?|cardiac (?:size|shadow))"),
    ("cardiomegaly", r"(?:enlargement of the (?:cardiac silhouette|heart)|cardiac enlargement)"),
    ("NORMAL:cardiomegaly", rf"(?:heart|cardiac) (?:size|silhouette)(?: and (?:mediastin\w+|hil\w+)(?: contours?| silhouettes?)?)? {_BE}(?:within normal limits|normal|unremarkable|not enlarged)"),
    ("NORMAL:cardiomegaly", r"normal (?:heart size|cardiac (?:size|silhouette))"),
    ("NORMAL:cardiomegaly", rf"(?:cardiac and mediastinal|mediastinal and cardiac|heart and mediastinal) (?:silhouettes?|contours?)(?: and hil\w+ contours?)? {_BE}(?:within normal limits|normal|unremarkable)"),
    ("effusion", r"(?:pleural )?effusions?"),
    ("effusion", r"(?:pleural|layering) fluid|hydrothora(?:x|ces)"),
    ("effusion", r"(?:blunting|blunted) (?:of )?(?:the )?(?:(?:left|right|bilateral|both) )?(?:costophrenic|cp) (?:angles?|sulc[iu]s)"),
    ("effusion", r"(?:costophrenic|cp) (?:angles?|sulc[iu]s) (?:(?:is|are) )?(?:blunting|blunted)"),
    ("NORMAL:effusion", r"(?:costophrenic|cp) (?:angles?|sulc[iu]s) (?:(?:is|are|remain) )?(?:sharp|clear|preserved)"),
    ("IGNORE", r"pericardial effusions?|pericardial fluid"),
    ("consolidation", r"consolidations?|consolidated|consolidative (?:opacit(?:y|ies)|process(?:es)?|changes?)"),
    ("consolidation", r"air[- ]?space (?:disease|process|consolidation)"),
    ("pneumonia", r"(?:broncho)?pneumonias?|pneumonic(?: process| infiltrates?)?|infections?|infectious(?: process(?:es)?| etiolog(?:y|ies))?"),
    ("atelectasis", r"atelecta(?:sis|ses|tic(?: changes?)?)|(?:lobar |segmental |lobe |lung )?collapse|volume loss"),
    ("edema", r"(?:pulmonary |interstitial |alveolar |air[- ]?space |perihilar )?o?edema"),
    ("edema", r"(?:pulmonary )?(?:vascular|venous) (?:congestion|engorgement|redistribution)|fluid overload|cephalization"),
    ("IGNORE", r"(?:soft[- ]tissue|subcutaneous|chest wall|extremity|peripheral) o?edema"),
    ("opacity", r"opacit(?:y|ies)|opacification|densit(?:y|ies)|haziness|infiltrates?|airspace opacit(?:y|ies)"),
    ("IGNORE", r"bone density|(?:dense|radio-?opaque) (?:calcification|line|catheter|tube)s?"),
]

#: Extra ConText rules on top of medspaCy's defaults: (literal, category, direction, max_scope).
CONTEXT_RULES: list[tuple[str, str, str, int | None]] = [
    ("resolved", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("has resolved", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("have resolved", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("resolution of", "NEGATED_EXISTENCE", "FORWARD", 6),
    ("interval resolution of", "NEGATED_EXISTENCE", "FORWARD", 6),
    ("has cleared", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("removed", "NEGATED_EXISTENCE", "BACKWARD", 4),
    ("no longer", "NEGATED_EXISTENCE", "BIDIRECTIONAL", 6),
    ("no evidence of", "NEGATED_EXISTENCE", "FORWARD", None),
    ("free of", "NEGATED_EXISTENCE", "FORWARD", None),
    ("negative for", "NEGATED_EXISTENCE", "FORWARD", None),
    ("without", "NEGATED_EXISTENCE", "FORWARD", None),
    ("no", "NEGATED_EXISTENCE", "FORWARD", None),
    ("not seen", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("not identified", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("is absent", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("may", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("might", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("could", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("possible", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("possibly", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("probable", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("probably", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("likely", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("suggestive of", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("suspicious for", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("concerning for", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("concern for", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("questionable", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("equivocal", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("suspected", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("presumed", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("cannot be excluded", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("can not be excluded", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("cannot be ruled out", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("not excluded", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("cannot be completely excluded", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("versus", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL", 3),
    ("vs", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL", 3),
    ("or", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL", 2),
    ("but", "TERMINATE", "TERMINATE", None),
    ("however", "TERMINATE", "TERMINATE", None),
    ("although", "TERMINATE", "TERMINATE", None),
    ("though", "TERMINATE", "TERMINATE", None),
    ("which", "TERMINATE", "TERMINATE", None),
    (";", "TERMINATE", "TERMINATE", None),
    ("with", "TERMINATE", "TERMINATE", None),
]
