"""detect `yolo`: an ultralytics YOLO lesion detector loaded from a local (or s3://) weights file.

Weights (`gen.detect.weights`): a trained `.pt` (e.g. from `ils detector train`) or a model
`.yaml` (random weights; tests only), as a local path or s3:// URI. A bare model name such as
"yolov8n.pt" is refused: ultralytics would download it.

Options (`gen.detect.options`): imgsz (640), conf (0.05: low, fusion check c2 filters later),
iou (0.5, NMS), max_det (50), class_map ({detector class name: lesion}, added to the built-in
VinDr-CXR names). Boxes come back in pixels of the working image with `label` set to a lesion of
ils.vocab.LESIONS when the class name maps to one, else None.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Sequence

import numpy as np

from ils.config import StageConfig
from ils.errors import UserError
from ils.vocab import LESIONS
from ilsgen.stages.base import Box
from ilsgen.stages.weights_cache import WeightsError, local_weights, pick_device

log = logging.getLogger(__name__)

#: Detector class names (lower-cased, VinDr-CXR and common variants) -> our lesion types.
CLASS_TO_LESION: dict[str, str] = {
    **{lesion: lesion for lesion in LESIONS},
    "pleural effusion": "effusion",
    "pleural_effusion": "effusion",
    "lung opacity": "opacity",
    "lung_opacity": "opacity",
    "infiltration": "opacity",
    "pulmonary edema": "edema",
}


def lesion_for(name: str | None, extra: Mapping[str, str] | None = None) -> str | None:
    """Our lesion for a detector class name, or None."""
    if name is None:
        return None
    key = re.sub(r"\s+", " ", str(name).strip().lower())
    if extra:
        lowered = {str(k).strip().lower(): v for k, v in extra.items()}
        if key in lowered:
            return lowered[key] if lowered[key] in LESIONS else None
    return CLASS_TO_LESION.get(key)


def prepare_ultralytics() -> None:
    """Keep ultralytics offline: no settings sync or tracker callbacks, no font download (a local font stands in)."""
    from ils.runtime import apply_loopback_env

    apply_loopback_env(set_home=False)  # YOLO_OFFLINE, YOLO_CONFIG_DIR, ... (user values win)
    import ultralytics
    from ultralytics.utils import USER_CONFIG_DIR

    # No analytics, no experiment-tracker callbacks (several of them talk to servers).
    off = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "wandb", "tensorboard")
    ultralytics.settings.update({k: False for k in off if k in ultralytics.settings})
    _ensure_font(USER_CONFIG_DIR)


def _ensure_font(config_dir) -> None:
    """ultralytics checks for Arial.ttf in its config dir and else probes the internet: give it a local font."""
    import shutil
    from pathlib import Path

    from matplotlib import font_manager

    target = Path(config_dir) / "Arial.ttf"
    if target.exists():
        return
    try:
        source = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    except Exception as exc:  # plots are off anyway; a missing font only costs a warning
        log.debug("no local font for ultralytics: %s", exc)


def load_yolo(weights: str | None, options: Mapping[str, Any] | None = None):
    """An ultralytics YOLO from a local/s3 .pt or .yaml; never from a hub name."""
    if not weights:
        raise WeightsError("detect backend yolo needs gen.detect.weights: a trained .pt (see `ils detector train`)")
    text = str(weights)
    if not text.startswith("s3://"):
        from pathlib import Path

        if not Path(text.removeprefix("file://")).expanduser().is_file():
            raise WeightsError(
                f"YOLO weights {text!r} is not a local file (model names such as 'yolov8n.pt' are refused: "
                "ultralytics would download them)"
            )
    path = local_weights(text, options, what="YOLO weights (gen.detect.weights)")
    if not path.is_file() or path.suffix.lower() not in (".pt", ".yaml", ".yml"):
        raise WeightsError(f"YOLO weights must be a .pt or .yaml file, got {path}")
    prepare_ultralytics()
    from ultralytics import YOLO

    try:
        return YOLO(str(path), task="detect")
    except Exception as exc:
        raise WeightsError(f"cannot load YOLO weights {path}: {exc}") from exc


class YoloDetector:
    """DetectBackend: ultralytics YOLO boxes on the working image."""

    def __init__(self, cfg: StageConfig, image_size: int):
        opts: dict[str, Any] = dict(cfg.options or {})
        self.image_size = int(image_size)
        self.imgsz = int(opts.get("imgsz", 640))
        self.conf = float(opts.get("conf", 0.05))
        self.iou = float(opts.get("iou", 0.5))
        self.max_det = int(opts.get("max_det", 50))
        self.class_map = dict(opts.get("class_map") or {})
        bad = {k: v for k, v in self.class_map.items() if v not in LESIONS}
        if bad:
            raise UserError(f"gen.detect.options.class_map maps to unknown lesions: {bad}; choose from {LESIONS}")
        self.batch_size = max(1, int(cfg.batch_size))
        self.device = pick_device(cfg.num_gpus)
        self.model = load_yolo(cfg.weights, opts)
        self.names: dict[int, str] = dict(self.model.names or {})
        self.labels = {i: lesion_for(n, self.class_map) for i, n in self.names.items()}
        log.info("YOLO loaded on %s: classes %s", self.device, self.labels)

    def detect(self, images: Sequence[np.ndarray], anomaly: Sequence[np.ndarray]) -> list[list[Box]]:
        from ils.imageio import to_uint8

        out: list[list[Box]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = []
            shapes = []
            for im in images[start : start + self.batch_size]:
                arr = np.asarray(im, dtype=np.float32)
                if arr.ndim != 2:
                    raise ValueError(f"yolo expects 2-D gray images, got shape {arr.shape}")
                shapes.append(arr.shape)
                chunk.append(np.repeat(to_uint8(arr)[:, :, None], 3, axis=2))  # gray -> 3 channels (BGR order moot)
            results = self.model.predict(
                chunk, imgsz=self.imgsz, conf=self.conf, iou=self.iou, max_det=self.max_det,
                device=self.device, verbose=False,
            )
            for res, (h, w) in zip(results, shapes):
                boxes: list[Box] = []
                if res.boxes is not None and len(res.boxes):
                    xyxy = res.boxes.xyxy.cpu().numpy()
                    conf = res.boxes.conf.cpu().numpy()
                    cls = res.boxes.cls.cpu().numpy().astype(int)
                    sx, sy = self.image_size / w, self.image_size / h
                    for (x0, y0, x1, y1), c, k in zip(xyxy, conf, cls):
                        boxes.append(Box(float(x0 * sx), float(y0 * sy), float(x1 * sx), float(y1 * sy), float(c), self.labels.get(int(k))))
                out.append(boxes)
        return out
