"""Backend registry: stage name + backend name -> a constructed backend (lazy imports).

    make_backend(stage: str, cfg: StageConfig, image_size: int) -> backend

`stage` is one of "anatomy", "anomaly", "detect"; `cfg.backend` picks the implementation. Every
backend class is constructed as `Class(cfg, image_size)` and imported by module path only when
chosen, so a heavy or missing backend fails only when it is selected. Unknown names raise
`UserError` listing the choices.
"""

from __future__ import annotations

import importlib
from typing import Any

from ils.config import StageConfig
from ils.errors import UserError

#: stage -> backend name -> "module:Class"
BACKENDS: dict[str, dict[str, str]] = {
    "anatomy": {
        "lite": "ilsgen.stages.anatomy_lite_net:NetAnatomy",
        "cxas": "ilsgen.stages.anatomy_cxas:CxasAnatomy",
    },
    "anomaly": {
        "lite": "ilsgen.stages.anomaly_lite_net:NetAnomaly",
        "radedit": "ilsgen.stages.anomaly_radedit:RadEditAnomaly",
    },
    "detect": {
        "lite": "ilsgen.stages.detect_lite:LiteDetector",
        "yolo": "ilsgen.stages.detect_yolo:YoloDetector",
    },
}


class BackendError(UserError):
    """An unknown or unavailable stage backend."""


def backend_class(stage: str, name: str) -> type:
    """The class implementing `name` for `stage` (imported now)."""
    if stage not in BACKENDS:
        raise BackendError(f"unknown stage {stage!r}; choices: {', '.join(sorted(BACKENDS))}")
    choices = BACKENDS[stage]
    if name not in choices:
        raise BackendError(f"unknown {stage} backend {name!r}; choices: {', '.join(sorted(choices))}")
    module_name, cls_name = choices[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"{stage} backend {name!r} is not available: {exc}") from exc
    try:
        return getattr(module, cls_name)
    except AttributeError as exc:
        raise BackendError(f"{stage} backend {name!r}: {module_name} has no {cls_name}") from exc


def make_backend(stage: str, cfg: StageConfig, image_size: int) -> Any:
    """Construct the backend that `cfg.backend` names for `stage`."""
    return backend_class(stage, cfg.backend)(cfg, image_size)
