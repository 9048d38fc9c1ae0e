"""The ROSALIA model: build, train setup, checkpoints."""

from rosalia.model.build import build_model
from rosalia.model.checkpoint import load_model, save_checkpoint
from rosalia.model.config import ModelError
from rosalia.model.modeling import RosaliaModel, build_random, trainable_parameters

__all__ = ["ModelError", "RosaliaModel", "build_model", "build_random", "load_model", "save_checkpoint", "trainable_parameters"]
