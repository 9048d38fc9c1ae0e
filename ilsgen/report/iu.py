"""Real radiology reports with human MeSH tags: the Indiana University chest X-ray collection.

torchxrayvision ships `torchxrayvision/data/NLMCXR_reports.tgz` (3,955 de-identified reports as
XML, CC BY-NC-ND 4.0; installed with `--no-deps`, see requirements/data.txt). Each report's
`<MeSH><major>` entries are the human index terms ("Pleural Effusion/right/small"); the
`<automatic>` entries are machine-made and are not read.

Split rule (enforced here): the odd-numbered files (1.xml, 3.xml, ...) are for development and
tuning; the even-numbered ones are held out for independent evaluation. By default even files
are skipped by name and never extracted or parsed; `split="even"` must be asked for explicitly.
"""

from __future__ import annotations

import importlib.util
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ils.errors import UserError


TGZ_NAME = "NLMCXR_reports.tgz"
SPLITS = ("odd", "even")
#: Report sections copied into the text the parser reads, in this order, as "LABEL: text" lines.
SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
_NUMBER = re.compile(r"(?:^|/)(\d+)\.xml$")


@dataclass
class IUReport:
    number: int  # the file number (N in N.xml): the report's only identifier here
    text: str  # COMPARISON/INDICATION/FINDINGS/IMPRESSION as "LABEL: text" lines
    tags: list[list[str]] = field(default_factory=list)  # major MeSH terms split at "/": [heading, qualifier...]

    @property
    def report_id(self) -> str:
        return f"iu-{self.number}"


@dataclass
class LoadStats:
    split: str
    read: int = 0  # files of the split parsed
    skipped_other_split: int = 0  # files of the other split, skipped by name (never extracted)
    empty: int = 0  # files of the split without FINDINGS or IMPRESSION text


def default_tgz() -> Path | None:
    """The tgz inside the installed torchxrayvision package (located without importing it), or None."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / TGZ_NAME
        if path.is_file():
            return path
    return None


def _in_split(number: int, split: str) -> bool:
    return number % 2 == (1 if split == "odd" else 0)


def parse_xml(number: int, data: bytes) -> IUReport:
    """One report file -> IUReport (section text and major MeSH terms)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"{number}.xml is not valid XML: {exc}") from exc
    texts = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        if label in SECTIONS and (node.text or "").strip():
            texts[label] = " ".join(node.text.split())
    text = "\n".join(f"{label}: {texts[label]}" for label in SECTIONS if label in texts)
    tags = [[p.strip() for p in (m.text or "").split("/") if p.strip()] for m in root.iter("major")]
    return IUReport(number, text, [t for t in tags if t])


def _members(source: Path) -> Iterator[tuple[int, object]]:
    """(file number, opener) for every N.xml in a tgz or directory; openers read the bytes lazily."""
    if source.is_dir():
        for path in sorted(source.rglob("*.xml")):
            m = _NUMBER.search(path.as_posix())
            if m:
                yield int(m.group(1)), path.read_bytes
        return
    try:
        tar = tarfile.open(source, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot read IU reports from {str(source)!r}: {exc}") from exc
    with tar:
        for member in tar:
            m = _NUMBER.search(member.name)
            if m and member.isfile():
                yield int(m.group(1)), lambda member=member: tar.extractfile(member).read()


def load_reports(source: str | Path | None = None, split: str = "odd", limit: int | None = None,
                 stats: LoadStats | None = None) -> list[IUReport]:
    """Reports of one split, in file-number order (the first `limit` of them).

    `source`: the tgz, or a directory of N.xml files; None = the installed torchxrayvision tgz.
    Files of the other split are skipped by name before any byte of them is read.
    """
    if split not in SPLITS:
        raise UserError(f"unknown IU split {split!r}; expected one of {', '.join(SPLITS)}")
    if source is None:
        source = default_tgz()
        if source is None:
            raise UserError(f"no IU reports: install torchxrayvision (requirements/data.txt, --no-deps) "
                            f"or pass the path of {TGZ_NAME} or of a folder of N.xml files")
    source = Path(source)
    if not source.exists():
        raise UserError(f"IU reports not found: {str(source)!r}")
    stats = stats if stats is not None else LoadStats(split)
    stats.split = split
    raw: list[tuple[int, bytes]] = []
    for number, opener in _members(source):
        if not _in_split(number, split):
            stats.skipped_other_split += 1  # skipped by name: never extracted, never parsed
            continue
        raw.append((number, opener()))
    raw.sort(key=lambda t: t[0])
    out: list[IUReport] = []
    for number, data in raw:
        if limit is not None and len(out) >= limit:
            break
        stats.read += 1
        report = parse_xml(number, data)
        if "FINDINGS:" not in report.text and "IMPRESSION:" not in report.text:
            stats.empty += 1
            continue
        out.append(report)
    return out


