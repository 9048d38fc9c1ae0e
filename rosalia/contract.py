"""What a batched ROSALIA inference object returns; shared by evaluation and the service.

`rosalia.segmenter.Segmenter` implements `segment(images, instructions) -> list[SegResult]`:
many (image, instruction) pairs per forward pass. Images are float32 (H, W) arrays in [0, 1]
(as `ils.imageio` decodes them); masks come back at each input image's own (H, W).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np


@dataclass
class SegResult:
    mask: np.ndarray  # bool (H, W), empty when the finding is judged absent
    answer: str  # the answer, starts with [SEG]; agrees with `present` (ils.answers.decide)
    present: bool  # the model's presence decision; the mask is empty if and only if False
    confidence: float  # probability that the finding is present, in [0, 1]
    parsed: dict = field(default_factory=dict)  # ils.templates.parse_answer fields, if parseable
    timings: dict = field(default_factory=dict)  # seconds per phase (shared by the batch)
    raw_answer: str = ""  # the generation as decoded (before reconciliation)
    agreed: bool | None = None  # did the raw generation agree with `present`? None: off-template instruction
    message: str = ""  # the result in plain words


class SegmenterLike(Protocol):
    model_id: str

    def segment(self, images: Sequence[np.ndarray], instructions: Sequence[str]) -> list[SegResult]: ...
