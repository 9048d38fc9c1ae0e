"""Report sections and sentences: the text that report structuring reads (SPEC section 2).

Sections used: FINDINGS and IMPRESSION (in report order); without either header, the last
paragraph. Headers are matched case-insensitively with odd spacing ("Findings :", "IMPRESSION-").
Sentences are numbered from 0 across the used sections, in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A section header at the start of a line: WORD(S) followed by ':' (or '-' / end of line for caps).
_HEADER_ANY = re.compile(r"(?im)^[ \t]*(?P<name>[A-Za-z][A-Za-z /&]{1,40}?)[ \t]*(?P<sep>:|-(?=\s)|$)[ \t]*")
_USED = {"findings": "findings", "finding": "findings", "impression": "impression", "impressions": "impression",
         "conclusion": "impression", "conclusions": "impression", "findings and impression": "findings",
         "findings/impression": "findings", "impression and findings": "findings"}


@dataclass(frozen=True)
class Section:
    name: str  # findings | impression | last_paragraph
    text: str


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    return re.sub(r"[ \u00a0]+", " ", text)


def split_sections(report: str) -> list[Section]:
    """FINDINGS and IMPRESSION sections in report order; else the last non-empty paragraph."""
    text = _normalise(report or "")
    heads = []
    for m in _HEADER_ANY.finditer(text):
        name = re.sub(r"\s+", " ", m.group("name").strip().lower())
        if m.group("sep") == ":" or name in _USED:  # '-' or a bare line only for known headers
            heads.append((m.start(), m.end(), name))
    sections: list[Section] = []
    for i, (_, end, name) in enumerate(heads):
        stop = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        body = text[end:stop].strip()
        if name in _USED and body:
            sections.append(Section(_USED[name], body))
    if sections:
        return sections
    if heads and any(n in _USED for _, _, n in heads):
        return []  # headers present but empty
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paragraphs:
        return []
    last = paragraphs[-1]
    # A last paragraph that is only a header line ("IMPRESSION") is not a finding text.
    return [Section("last_paragraph", last)]


_ABBREV = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|vs|approx|e\.g|i\.e|cf|no|St|Fig)\.$", re.I)
_LIST_ITEM = re.compile(r"(?m)^\s*\(?\d{1,2}[.)]\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of one section: ends at '.', '?', '!', ';'-free; numbered list items and lines kept apart.

    Decimal numbers ("1.5 cm"), common abbreviations and list numbers ("1. ...") never end a sentence.
    """
    text = _LIST_ITEM.sub("\n", text)
    out: list[str] = []
    for block in re.split(r"\n\s*\n|\n(?=\s*[-*\u2022])", text):
        block = re.sub(r"\s*\n\s*", " ", block).strip(" -*\u2022")
        if not block:
            continue
        start = 0
        for m in re.finditer(r"[.?!]+(?=\s+|$)", block):
            piece = block[start:m.end()]
            if _ABBREV.search(piece) or re.search(r"\d\.$", piece) and m.end() < len(block) and block[m.end():m.end() + 2].strip()[:1].isdigit():
                continue
            if piece.strip():
                out.append(piece.strip())
            start = m.end()
        tail = block[start:].strip()
        if tail:
            out.append(tail)
    return [s for s in out if re.search(r"[A-Za-z]", s)]


def numbered_sentences(report: str) -> list[tuple[int, str, str]]:
    """(sent_idx, section name, sentence) over the used sections, numbered from 0."""
    rows: list[tuple[int, str, str]] = []
    for section in split_sections(report):
        for sentence in split_sentences(section.text):
            rows.append((len(rows), section.name, sentence))
    return rows
