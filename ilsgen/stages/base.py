"""The small interfaces every pipeline stage backend implements (plain Python, no Ray).

Images handed to stages are float32 arrays in [0, 1] of shape (S, S) with S = cfg.image.size
(512 by default), stretched over the whole image (no letterbox), lungs dark. Backends are chosen
by name in the config (`gen.<stage>.backend`) through `ilsgen.stages.registry`; heavy libraries
are imported inside the backend that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass
class Box:
    """A candidate lesion box in pixel coordinates of the working image."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    label: str | None = None  # a lesion type when the detector predicts one


class ReportBackend(Protocol):
    """report: rules | llm. Returns FINDING rows (ils.schema.FINDING) for one report."""

    def structure(self, study_id: str, report: str) -> list[dict[str, Any]]: ...


class AnatomyBackend(Protocol):
    """anatomy: lite | cxas. One uint16 bit map per image, bits as ils.vocab.ATOMIC_REGIONS."""

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class AnomalyBackend(Protocol):
    """anomaly: lite | radedit. One float32 map in [0, 1] per image: |I - I_healthy|, normalised."""

    def anomaly_maps(self, images: Sequence[np.ndarray], anatomy: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class DetectBackend(Protocol):
    """detect: lite | yolo. Candidate boxes per image."""

    def detect(self, images: Sequence[np.ndarray], anomaly: Sequence[np.ndarray]) -> list[list[Box]]: ...
