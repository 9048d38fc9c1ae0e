"""Lesion synonyms and ConText modifier rules for the offline `rules` report backend.

Mapping (documented choice):
  effusion      pleural effusion(s), effusion(s), pleural fluid, layering fluid, hydrothorax,
                blunting of the costophrenic angle(s)            (not: pericardial effusion)
  cardiomegaly  cardiomegaly, enlarged cardiac silhouette / heart (size), cardiac enlargement,
                heart size is enlarged / (slightly) large, borderline heart size (a degree, as MeSH
                "Cardiomegaly/borderline");  "heart size is normal", "within (upper) limits of
                normal" and alike = cardiomegaly absent.
                The *cardiomediastinal* silhouette is not the heart alone (CheXpert's "enlarged
                cardiomediastinum" is a separate label): it names no cardiomegaly finding.
  consolidation consolidation(s), consolidative opacity/process, consolidated, airspace disease
  pneumonia     pneumonia(s), bronchopneumonia, pneumonitis, pneumonic process/infiltrate. "Infection" /
                "infectious process" names a presumed cause, not a seen finding: pneumonia, always
                tentative (TENTATIVE:pneumonia). "Granulomatous infection/disease" is old healed
                disease and is claimed by IGNORE.
  atelectasis   atelectasis, atelectatic, collapse, volume loss
  edema         (pulmonary / interstitial / alveolar) edema, fluid overload    (not: soft tissue edema)
                Decision: pulmonary vascular congestion / engorgement / redistribution and
                cephalization are NOT edema on this platform. They are a haemodynamic sign without
                fluid in the lung (MeSH keeps Pulmonary Congestion apart from Pulmonary Edema) and
                have no mask; they are claimed by IGNORE. The LLM prompt and the phantom reports
                follow the same rule ("vascular congestion with mild edema" is one edema mention).
  opacity       opacity/opacities, opacification, density/densities, haziness, infiltrate(s)
Each pattern is a case-insensitive regular expression over one sentence. The category "IGNORE"
claims look-alikes so that the longest match wins; "NORMAL:<lesion>" marks an explicit normal
statement (the lesion is absent); "TENTATIVE:<lesion>" a word that names the lesion only as a
presumption (present at most tentatively).
"""

from __future__ import annotations

_DEG = r"(?:(?:very |only )?(?:mild(?:ly)?|moderate(?:ly)?|marked(?:ly)?|severe(?:ly)?|slight(?:ly)?|minimal(?:ly)?|substantial(?:ly)?|massive(?:ly)?|borderline|top[- ]normal to|at least|again|still|now|newly|persistently|stably|stable|xxxx) )*"
_BIG = r"(?:enlarged|increased|prominent|large|borderline(?! normal)(?: in size)?)"
_BE = r"(?:(?:is|are|appears?|remains?|seems?|looks?)(?: to be)? )?(?:(?:likely|probably|possibly|perhaps|questionably) )?"

LESION_PATTERNS: list[tuple[str, str]] = [
    ("cardiomegaly", r"cardiomegaly"),
    ("cardiomegaly", rf"(?:cardiac|heart) (?:silhouette|size|shadow|contours?) (?:xxxx )?{_BE}{_DEG}{_BIG}"),
    ("cardiomegaly", rf"(?:the )?heart (?:xxxx )?{_BE}{_DEG}(?:enlarged|increased in size|large|borderline(?! normal) in size)"),
    ("cardiomegaly", rf"{_DEG}(?:heart|cardiac) enlargement|borderline (?:heart|cardiac) size"),
    ("cardiomegaly", rf"{_DEG}enlarged (?:cardiac silhouette|heart(?: size)?|cardiac (?:size|shadow))"),
    ("cardiomegaly", r"(?:enlargement of the (?:cardiac silhouette|heart)|cardiac enlargement)"),
    ("NORMAL:cardiomegaly", rf"(?:heart|cardiac) (?:size|silhouette)(?: and (?:mediastin\w+|hil\w+)(?: contours?| silhouettes?)?)? {_BE}(?:within normal limits|normal|unremarkable|not enlarged)"),
    ("NORMAL:cardiomegaly", r"normal (?:heart size|cardiac (?:size|silhouette))"),
    ("NORMAL:cardiomegaly", rf"(?:heart|cardiac) (?:size|silhouette)(?: and [\w ]{{1,40}}?)? {_BE}(?:within|at|in) (?:the )?(?:upper )?(?:limits? of normal|normal (?:limits|range))"),
    ("NORMAL:cardiomegaly", rf"(?:cardiac and mediastinal|mediastinal and cardiac|heart and mediastinal) (?:silhouettes?|contours?)(?: and hil\w+ contours?)? {_BE}(?:within normal limits|normal|unremarkable)"),
    ("effusion", r"(?:pleural )?effusions?"),
    ("effusion", r"(?:pleural|layering) fluid|hydrothora(?:x|ces)"),
    ("effusion", r"(?:blunting|blunted) (?:of )?(?:the )?(?:(?:left|right|bilateral|both) )?(?:costophrenic|cp) (?:angles?|sulc[iu]s)"),
    ("effusion", r"(?:costophrenic|cp) (?:angles?|sulc[iu]s) (?:(?:is|are) )?(?:blunting|blunted)"),
    ("NORMAL:effusion", r"(?:costophrenic|cp) (?:angles?|sulc[iu]s) (?:(?:is|are|remain) )?(?:sharp|clear|preserved)"),
    ("IGNORE", r"pericardial effusions?|pericardial fluid"),
    ("consolidation", r"consolidations?|consolidated|consolidative (?:opacit(?:y|ies)|process(?:es)?|changes?)"),
    ("consolidation", r"air[- ]?space (?:disease|process|consolidation)"),
    ("pneumonia", r"(?:broncho)?pneumonias?|pneumonitis|pneumonic(?: process| infiltrates?)?"),
    ("TENTATIVE:pneumonia", r"(?:(?:pulmonary|lung|superimposed|acute|developing|underlying) )?(?:infections?|infectious(?: process(?:es)?| etiolog(?:y|ies)| infiltrates?)?)"),
    ("IGNORE", r"(?:(?:old|prior|previous|remote|healed|chronic) )?granulomatous (?:infections?|disease|process|changes?)"),
    ("atelectasis", r"atelecta(?:sis|ses|tic(?: changes?)?)|(?:lobar |segmental |lobe |lung )?collapse|volume loss"),
    ("edema", r"(?:pulmonary |interstitial |alveolar |air[- ]?space |perihilar )?o?edema"),
    ("edema", r"fluid overload"),
    ("IGNORE", r"(?:(?:central|pulmonary|central pulmonary) )?(?:vascular|venous) (?:congestion|engorgement|redistribution)|cephalization"),
    ("IGNORE", r"(?:soft[- ]tissue|subcutaneous|chest wall|extremity|peripheral) o?edema"),
    ("opacity", r"opacit(?:y|ies)|opacification|densit(?:y|ies)|haziness|infiltrates?|airspace opacit(?:y|ies)"),
    ("IGNORE", r"bone density|(?:dense|radio-?opaque) (?:calcification|line|catheter|tube)s?"),
]

#: Extra ConText rules on top of medspaCy's defaults: (literal, category, direction, max_scope).
CONTEXT_RULES: list[tuple[str, str, str, int | None]] = [
    ("resolved", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("has resolved", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("resolution of", "NEGATED_EXISTENCE", "FORWARD", 6),
    ("interval resolution of", "NEGATED_EXISTENCE", "FORWARD", 6),
    ("has cleared", "NEGATED_EXISTENCE", "BACKWARD", 6),
    ("have cleared", "NEGATED_EXISTENCE", "BACKWARD", None),
    ("have resolved", "NEGATED_EXISTENCE", "BACKWARD", None),
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
    # Hedges and differentials (real reports): the mention is tentative.
    ("cannot exclude", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("can not exclude", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("difficult to exclude", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("difficult to entirely exclude", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("not entirely excluded", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("question of", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("question", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("questioned", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("correlate for", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("correlate clinically for", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("clinical correlation for", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("differential", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL", None),
    ("differential diagnosis", "POSSIBLE_EXISTENCE", "BIDIRECTIONAL", None),
    ("differential includes", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("in the differential", "POSSIBLE_EXISTENCE", "BACKWARD", None),
    ("suggesting", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("suggests", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("worrisome for", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("may be secondary to", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("maybe", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("may be compatible with", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("may be consistent with", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("could be compatible with", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("could be consistent with", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("possibly compatible with", "POSSIBLE_EXISTENCE", "FORWARD", None),
    ("secondary to", "POSSIBLE_EXISTENCE", "FORWARD", None),
    # An alternative ("atelectasis or scarring", "infiltrate versus atelectasis") names each candidate
    # as a described finding: definite unless a hedge above covers it (how MeSH indexers tag it).
    # History and old disease: not a current finding.
    ("old", "HISTORICAL", "FORWARD", 2),
    ("remote", "HISTORICAL", "FORWARD", 2),
    ("healed", "HISTORICAL", "FORWARD", 2),
    ("sequela of", "HISTORICAL", "FORWARD", None),
    ("sequelae of", "HISTORICAL", "FORWARD", None),
    ("history of", "HISTORICAL", "FORWARD", None),
    ("seen on ct", "HISTORICAL", "BACKWARD", None),
    ("but", "TERMINATE", "TERMINATE", None),
    ("however", "TERMINATE", "TERMINATE", None),
    ("although", "TERMINATE", "TERMINATE", None),
    ("though", "TERMINATE", "TERMINATE", None),
    ("which", "TERMINATE", "TERMINATE", None),
    (";", "TERMINATE", "TERMINATE", None),
    ("with", "TERMINATE", "TERMINATE", None),
]
