"""One study's outputs after the vision stages: masks (fuse + verify) and pairs.

Plain Python; called by the pipeline's fuse step and by anything that wants the same result
for one study in-process.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ils.config import Config
from ilsgen.fuse import fuse_study
from ilsgen.pairs import make_pairs
from ilsgen.stages.base import Box


def study_outputs(
    cfg: Config,
    study: Mapping[str, Any],
    findings: Sequence[Mapping[str, Any]],
    anatomy: np.ndarray,
    anomaly: np.ndarray,
    boxes: Sequence[Mapping[str, Any] | Box],
) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:
    """(MASK rows, PAIR rows, {relative PNG path: uint8 0/255 array}) for one study."""
    box_objs = [b if isinstance(b, Box) else Box(**b) for b in boxes]
    study_id = str(study["study_id"])
    masks, arrays = fuse_study(study_id, findings, anatomy, anomaly, box_objs, cfg.gen.fuse)
    pairs, extra = make_pairs(study, findings, masks, arrays, anatomy, cfg.gen.pairs)
    return masks, pairs, {**arrays, **extra}
