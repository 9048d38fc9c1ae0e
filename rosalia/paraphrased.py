"""Pairs whose instruction is sometimes (training) or always (evaluation) one of its paraphrases.

ilsgen writes validated paraphrases per pair (PAIR.paraphrases, ils.paraphrase). The template
instruction stays in `row["instruction"]`, so answers are still scored against the template.
"""

from __future__ import annotations

from typing import Any

import torch


class ParaphrasedPairs:
    """A PairDataset view: item instruction = a paraphrase with probability `prob` (1.0: the first one).

    Draws come from torch's global RNG (saved and restored by training checkpoints), like
    rosalia.data.AugmentedPairs; with prob 1.0 nothing is drawn."""

    def __init__(self, base, prob: float):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"paraphrase probability must be in [0, 1], got {prob}")
        self.base, self.prob = base, float(prob)
        self.presence, self.rows = base.presence, base.rows
        self.image_index = getattr(base, "image_index", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = dict(self.base[i])
        options = list(it["row"].get("paraphrases") or [])
        if options and self.prob > 0:
            if self.prob >= 1.0:
                it["instruction"] = options[0]
            elif float(torch.rand(())) < self.prob:
                it["instruction"] = options[int(torch.randint(len(options), ()))]
        return it


def with_paraphrases(dataset) -> "ParaphrasedPairs | None":
    """The pairs of `dataset` that have a paraphrase, each asked with its first one; None when none has."""
    idx = [i for i, r in enumerate(dataset.rows) if r.get("paraphrases")]
    if not idx:
        return None
    return ParaphrasedPairs(dataset.subset(idx), 1.0)
