"""Train a YOLO lesion detector (ultralytics, offline) from box annotations; `ils detector train`.

Box sources:
- a phantom folder written by `ils sample`: OUT/manifest.parquet (ils.schema.STUDY, image_uri
  relative to OUT) and OUT/truth/masks.parquet (ils.schema.MASK, mask_uri relative to truth/);
  one box per connected component of each mask PNG (the `bbox` column when the PNG is missing);
  split "train" trains, "val" validates, "test" is left out.
- a VinDr-CXR style CSV (image_id, class_name, x_min, y_min, x_max, y_max; optional width,
  height giving the pixel frame of the coordinates) with an image folder holding
  `<image_id>.{dcm,dicom,png,jpg,jpeg}`; class names map to our lesions (ilsgen.stages.detect_yolo),
  others are dropped (or kept under their own name with keep_unmapped); rows without
  coordinates ("No finding") make background images; a stable hash of image_id picks the val split.

Images are decoded with ils.imageio, stretched to a square (as the pipeline's working image) and
written as PNG with YOLO label files into a temporary folder; ultralytics trains there (plots
off, AMP off unless asked: its AMP check downloads a model) and best.pt is copied into the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ils.errors import UserError
from ils.store import Store
from ils.vocab import LESIONS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


class DetectorTrainError(UserError):
    """Box annotations or training settings are unusable."""


@dataclass
class LabeledBox:
    """A box with coordinates normalised to [0, 1] of the whole image."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass
class DetImage:
    """One training image: where it is, its split, its boxes (empty: background)."""

    key: str
    uri: str  # relative to `store`, or a full URI on its file system
    split: str  # train | val
    boxes: list[LabeledBox] = field(default_factory=list)
    frame: tuple[float, float] | None = None  # (width, height) of pixel coordinates still to normalise
    raw: list[tuple[str, float, float, float, float]] = field(default_factory=list)


# -- box sources ------------------------------------------------------------------------------------
def _clip_box(label: str, x0: float, y0: float, x1: float, y1: float) -> LabeledBox | None:
    x0, x1 = sorted((min(max(x0, 0.0), 1.0), min(max(x1, 0.0), 1.0)))
    y0, y1 = sorted((min(max(y0, 0.0), 1.0), min(max(y1, 0.0), 1.0)))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return LabeledBox(label, x0, y0, x1, y1)


def mask_boxes(mask: np.ndarray, label: str, min_pixels: int = 4) -> list[LabeledBox]:
    """One normalised box per connected component of a binary mask."""
    from scipy import ndimage

    m = np.asarray(mask) > 0
    if m.ndim == 3:
        m = m.any(axis=2)
    h, w = m.shape
    lab, n = ndimage.label(m)
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or int((lab[sl] == i).sum()) < min_pixels:
            continue
        ys, xs = sl
        box = _clip_box(label, xs.start / w, ys.start / h, xs.stop / w, ys.stop / h)
        if box:
            boxes.append(box)
    return boxes


def phantom_images(store: Store, use_bbox_column: bool = False) -> list[DetImage]:
    """Training images and boxes from a phantom folder (manifest.parquet + truth/masks.parquet)."""
    from ils.schema import MASK, STUDY

    if not store.is_file("manifest.parquet"):
        raise DetectorTrainError(f"{store.uri('manifest.parquet')} not found: is {store.root_uri} a folder written by `ils sample`?")
    if not store.is_file("truth/masks.parquet"):
        raise DetectorTrainError(f"{store.uri('truth/masks.parquet')} not found: phantom ground truth is missing")
    studies = store.read_parquet("manifest.parquet").to_pylist()
    masks = store.read_parquet("truth/masks.parquet").to_pylist()
    missing = [c for c in ("study_id", "image_uri") if studies and c not in studies[0]]
    if missing or (masks and not {"study_id", "lesion", "mask_uri"} <= set(masks[0])):
        raise DetectorTrainError(f"phantom tables do not follow ils.schema STUDY/MASK (columns {list(STUDY.names)}, {list(MASK.names)})")
    by_study: dict[str, list[dict]] = {}
    for row in masks:
        by_study.setdefault(str(row["study_id"]), []).append(row)
    truth = store.child("truth")
    images = []
    for st in studies:
        split = (st.get("split") or "train").lower()
        if split == "test":
            continue
        img = DetImage(key=str(st["study_id"]), uri=st["image_uri"], split="val" if split == "val" else "train")
        for m in by_study.get(img.key, []):
            lesion = m["lesion"]
            if lesion not in LESIONS:
                continue
            boxes: list[LabeledBox] = []
            if not use_bbox_column:
                try:
                    boxes = mask_boxes(truth.read_png(m["mask_uri"]), lesion)
                except Exception as exc:  # unreadable PNG: fall back to the bbox column
                    log.warning("mask %s unreadable (%s); using its bbox column", m.get("mask_id"), type(exc).__name__)
                    boxes = []
            if not boxes and m.get("bbox") is not None:
                box = _clip_box(lesion, *[float(v) for v in m["bbox"]])
                boxes = [box] if box else []
            img.boxes.extend(boxes)
        images.append(img)
    return images


def _val_split(key: str, val_fraction: float) -> str:
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def vindr_images(store: Store, csv_uri: str, images_uri: str, val_fraction: float = 0.1, keep_unmapped: bool = False) -> list[DetImage]:
    """Training images and boxes from a VinDr-CXR style CSV and an image folder."""
    import csv
    import io

    from ilsgen.stages.detect_yolo import lesion_for

    text = store.read_text(csv_uri)
    reader = csv.DictReader(io.StringIO(text))
    need = {"image_id", "class_name", "x_min", "y_min", "x_max", "y_max"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise DetectorTrainError(f"{csv_uri}: a box CSV needs the columns {sorted(need)}, found {reader.fieldnames}")
    folder = store.child(images_uri)
    files = {}
    for rel in folder.list(""):
        stem, ext = posixpath.splitext(posixpath.basename(rel))
        if ext.lower() in IMAGE_SUFFIXES:
            files.setdefault(stem, rel)
    if not files:
        raise DetectorTrainError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder.root_uri}")
    by_id: dict[str, DetImage] = {}
    dropped: dict[str, int] = {}
    for n, row in enumerate(reader, start=2):
        image_id = (row.get("image_id") or "").strip()
        if image_id not in files:
            dropped["<no image file>"] = dropped.get("<no image file>", 0) + 1
            continue
        img = by_id.get(image_id)
        if img is None:
            img = by_id[image_id] = DetImage(key=image_id, uri=folder.uri(files[image_id]), split=_val_split(image_id, val_fraction))
        coords = [row.get(k) for k in ("x_min", "y_min", "x_max", "y_max")]
        if any(c in (None, "", "nan", "NaN") for c in coords):
            continue  # "No finding": a background image
        try:
            x0, y0, x1, y1 = (float(c) for c in coords)  # type: ignore[arg-type]
        except ValueError as exc:
            raise DetectorTrainError(f"{csv_uri} line {n}: bad coordinates {coords}") from exc
        name = (row.get("class_name") or "").strip()
        label = lesion_for(name) or (name if keep_unmapped and name else None)
        if label is None:
            dropped[name] = dropped.get(name, 0) + 1
            continue
        if row.get("width") and row.get("height"):
            img.frame = (float(row["width"]), float(row["height"]))
        img.raw.append((label, x0, y0, x1, y1))
    if dropped:
        log.info("box rows left out: %s", dropped)
    return list(by_id.values())


# -- YOLO dataset ---------------------------------------------------------------------------------
def class_names(images: Iterable[DetImage]) -> list[str]:
    """Our lesions first (in vocabulary order, all seven so ids are stable), then any other labels."""
    extra = sorted({b.label for im in images for b in im.boxes} - set(LESIONS))
    return list(LESIONS) + extra


def write_yolo_dataset(images: Sequence[DetImage], store: Store, folder: Path, size: int, max_pixels: int = 50_000_000) -> tuple[Path, dict[str, Any]]:
    """PNG images + YOLO label files + data.yaml under `folder`; returns (data.yaml, counts)."""
    from PIL import Image

    from ils.imageio import ImageError, read_image, resize_square, to_uint8

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    counts: dict[str, Any] = {"images": {"train": 0, "val": 0}, "boxes": {}, "skipped_images": 0}
    for split in ("train", "val"):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
    usable = []
    it = tqdm(images, desc="detector dataset", unit="img", disable=len(images) < 50) if tqdm else images
    for img in it:
        try:
            pixels = read_image(store, img.uri, max_pixels=max_pixels).pixels
        except (ImageError, OSError) as exc:
            log.warning("image %s skipped: %s", img.key, exc)
            counts["skipped_images"] += 1
            continue
        if img.raw:  # pixel coordinates: normalise by the stated frame or the decoded size
            w, h = img.frame or (pixels.shape[1], pixels.shape[0])
            img.boxes.extend(b for b in (_clip_box(lab, x0 / w, y0 / h, x1 / w, y1 / h) for lab, x0, y0, x1, y1 in img.raw) if b)
            img.raw = []
        usable.append(img)
        name = hashlib.sha1(img.key.encode()).hexdigest()[:16]
        Image.fromarray(to_uint8(resize_square(pixels, size))).save(folder / "images" / img.split / f"{name}.png")
        counts["images"][img.split] += 1
    names = class_names(usable)
    index = {n: i for i, n in enumerate(names)}
    for img in usable:
        name = hashlib.sha1(img.key.encode()).hexdigest()[:16]
        lines = []
        for b in img.boxes:
            cx, cy, bw, bh = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2, b.x1 - b.x0, b.y1 - b.y0
            lines.append(f"{index[b.label]} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
            counts["boxes"][b.label] = counts["boxes"].get(b.label, 0) + 1
        (folder / "labels" / img.split / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    if counts["images"]["train"] == 0:
        raise DetectorTrainError("no usable training images")
    if not counts["boxes"]:
        raise DetectorTrainError("no boxes in the training data: nothing to learn")
    val_dir = "images/val"
    if counts["images"]["val"] == 0:
        log.warning("no validation images; validating on the training images")
        val_dir = "images/train"
    data = {"path": str(folder), "train": "images/train", "val": val_dir, "names": dict(enumerate(names))}
    yaml_path = folder / "data.yaml"
    yaml_path.write_text(json.dumps(data, indent=1))  # JSON is valid YAML
    counts["names"] = names
    return yaml_path, counts


# -- training ---------------------------------------------------------------------------------------
def _model_source(model: str, s3_options: dict[str, Any] | None) -> str:
    """A model .yaml (built-in config name or local file) or a local/s3 .pt; never a hub download."""
    from ilsgen.stages.weights_cache import local_weights

    if model.endswith((".yaml", ".yml")):
        p = Path(model).expanduser()
        return str(p) if p.is_file() else model  # ultralytics ships e.g. yolov8n.yaml: no download
    if model.endswith(".pt"):
        if not model.startswith("s3://") and not Path(model.removeprefix("file://")).expanduser().is_file():
            raise DetectorTrainError(f"--model {model!r} is not a local file; .pt names would download (use e.g. yolov8n.yaml)")
        return str(local_weights(model, s3_options, what="detector start weights"))
    raise DetectorTrainError(f"--model must be a .yaml config or a local .pt file, got {model!r}")


def train_detector(
    images: Sequence[DetImage],
    data_store: Store,
    out_store: Store,
    out: str,
    *,
    model: str = "yolov8n.yaml",
    epochs: int = 50,
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    image_size: int | None = None,
    amp: bool = False,
    seed: int = 0,
    workers: int = 0,
    s3_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the YOLO dataset, train, and write best.pt (+ data.yaml, summary.json) to `out`."""
    from ilsgen.stages.detect_yolo import prepare_ultralytics

    if epochs < 1 or imgsz < 32 or batch < 1:
        raise DetectorTrainError("epochs and batch must be >= 1 and imgsz >= 32")
    if not images:
        raise DetectorTrainError("no annotated images found")
    started = time.time()
    src = _model_source(model, s3_options)
    prepare_ultralytics()
    import torch
    from ultralytics import YOLO

    dev = device or ("0" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="ils-yolo-") as tmp:
        tmpdir = Path(tmp)
        data_yaml, counts = write_yolo_dataset(images, data_store, tmpdir / "data", image_size or imgsz)
        log.info("YOLO dataset: %s images, boxes %s", counts["images"], counts["boxes"])
        yolo = YOLO(src, task="detect")
        try:
            yolo.train(
                data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=dev, workers=workers,
                project=str(tmpdir / "runs"), name="train", exist_ok=True, plots=False, amp=amp, seed=seed,
                verbose=False, val=True,
            )
        except (RuntimeError, ValueError, FileNotFoundError) as exc:
            raise DetectorTrainError(f"YOLO training failed: {exc}") from exc
        trainer = yolo.trainer
        weights_dir = Path(trainer.save_dir) / "weights"
        best = weights_dir / "best.pt"
        if not best.is_file():
            best = weights_dir / "last.pt"
        if not best.is_file():
            raise DetectorTrainError(f"ultralytics wrote no weights under {weights_dir}")
        metrics = {k: float(v) for k, v in (getattr(trainer, "metrics", None) or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
        target = out if out.endswith(".pt") else posixpath.join(out, "best.pt")
        weights_uri = out_store.uri(target)
        out_store.write_bytes(target, best.read_bytes())
        summary = {
            "weights": weights_uri, "model": model, "epochs": epochs, "imgsz": imgsz, "device": dev,
            "images": counts["images"], "skipped_images": counts["skipped_images"], "boxes": counts["boxes"],
            "names": counts["names"], "metrics": metrics, "seconds": round(time.time() - started, 1),
        }
        if not out.endswith(".pt"):
            out_store.write_text(posixpath.join(out, "summary.json"), json.dumps(summary, indent=1))
            results = Path(trainer.save_dir) / "results.csv"
            if results.is_file():
                out_store.write_bytes(posixpath.join(out, "results.csv"), results.read_bytes())
    return summary


__all__ = [
    "DetImage", "LabeledBox", "DetectorTrainError", "mask_boxes", "phantom_images", "vindr_images",
    "write_yolo_dataset", "train_detector", "class_names",
]
