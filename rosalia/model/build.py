"""`build_model`: the model of a config, from its checkpoint or randomly initialised.

Sits above `modeling` (the network) and `checkpoint` (reading and writing it), so neither of
those imports the other's caller.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rosalia.model.checkpoint import load_model
from rosalia.model.modeling import RosaliaModel, apply_training_setup, build_random

if TYPE_CHECKING:
    from ils.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)


def build_model(model_cfg: "ModelConfig", train_cfg: "TrainConfig | None" = None) -> RosaliaModel:
    """The model of `model_cfg` (from `model_cfg.checkpoint` when set, else random), set up for training if `train_cfg`."""
    if model_cfg.checkpoint:
        model = load_model(model_cfg.checkpoint, model_cfg)
        model.train()
    else:
        if model_cfg.size != "tiny":
            log.warning("building a randomly initialised %s model (no model.checkpoint)", model_cfg.size)
        model = build_random(model_cfg)
    return apply_training_setup(model, train_cfg)
