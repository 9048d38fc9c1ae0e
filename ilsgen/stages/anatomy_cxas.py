"""anatomy `cxas`: CXAS (Chest X-ray Anatomy Segmentation, PAX-Ray++, 159 classes) -> our bit map.

The network is CXAS's `UNet_ResNet50_default`: a torchvision ResNet-50 encoder with a U-Net
decoder and 159 sigmoid outputs (multi-label). When the `cxas` package is installed its own
`BackboneUNet` class is used; otherwise `CxasUNet` below rebuilds the same architecture with the
same parameter names from torchvision, so the package's checkpoint file loads without the
package (which downloads weights on first use and is therefore not a runtime dependency).

Weights (`gen.anatomy.weights`): the checkpoint file `UNet_ResNet50_default.pth` (a dict with a
`model` state dict, as the cxas package stores it under ~/.cxas/weights/), a folder holding it, or
an s3:// URI of either. Preprocessing follows cxas (`cxas/file_io.py`, `segmentor.py`): gray -> 3
channels, ImageNet normalisation, nearest-neighbour resize to 512 (`F.interpolate`'s default
mode, as cxas does); a class is present where sigmoid > threshold; nearest resize back.

Mapping to ils.vocab.ATOMIC_REGIONS: CXAS "heart" -> heart; the eight CXAS lung zone classes
("right upper zone lung", ..., "left lung base") carry our zone names already.

Options (`gen.anatomy.options`): input_size (512), threshold (0.5), input_resize ("nearest" as
cxas; "bilinear" is smoother but drifts from cxas's bitmaps away from 512 px), trust_checkpoint
(false: the checkpoint is read with torch.load(weights_only=True); true allows arbitrary pickles,
for a .pth that is not tensors only; use it only for a file you trust).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ils.config import StageConfig
from ils.errors import UserError
from ils.vocab import ATOMIC_REGIONS
from ilsgen.stages.weights_cache import WeightsError, local_weights, pick_device

log = logging.getLogger(__name__)

#: The 159 CXAS class names, index = output channel (cxas docs/available_classes.md).
CXAS_CLASSES: tuple[str, ...] = (
    "spine", "cervical spine", "thoracic spine", "lumbar spine",
    *(f"vertebrae C{i}" for i in range(1, 8)), *(f"vertebrae T{i}" for i in range(1, 13)),
    *(f"vertebrae L{i}" for i in range(1, 6)),
    "rib_cartilage", "sternum", "clavicles", "clavicle left", "clavicle right",
    "scapulas", "scapula left", "scapula right",
    "posterior 12th rib right", "posterior 12th rib left",
    *(
        f"{ap} {n} rib {side}"
        for n in ("11th", "10th", "9th", "8th", "7th", "6th", "5th", "4th", "3rd", "2nd", "1st")
        for side in ("right", "left")
        for ap in ("anterior", "posterior")
    ),
    "12th rib",
    *(f"{ap} {n} rib" for n in ("11th", "10th", "9th", "8th", "7th", "6th", "5th", "4th", "3rd", "2nd", "1st")
      for ap in ("posterior", "anterior")),
    "diaphragm", "left hemidiaphragm", "right hemidiaphragm",
    "stomach", "small bowel", "duodenum", "liver", "pancreas", "kidney left", "kidney right",
    "cardiomediastinum", "upper mediastinum", "lower mediastinum", "anterior mediastinum",
    "middle mediastinum", "posterior mediastinum",
    "heart", "heart atrium left", "heart atrium right", "heart myocardium", "heart ventricle left",
    "heart ventricle right",
    "aorta", "ascending aorta", "descending aorta", "aortic arch", "pulmonary artery", "inferior vena cava",
    "esophagus",
    "lung", "right lung", "left lung", "lung base", "mid zone lung", "upper zone lung", "apical zone lung",
    "right upper zone lung", "right mid zone lung", "right lung base", "right apical zone lung",
    "left upper zone lung", "left mid zone lung", "left lung base", "left apical zone lung",
    "lung lower lobe left", "lung upper lobe left", "lung lower lobe right", "lung middle lobe right",
    "lung upper lobe right",
    "trachea", "tracheal bifurcation", "breast", "breast left", "breast right",
)
assert len(CXAS_CLASSES) == 159, len(CXAS_CLASSES)

#: Our atomic region -> CXAS channel index (names coincide).
REGION_TO_CHANNEL: dict[str, int] = {region: CXAS_CLASSES.index(region) for region in ATOMIC_REGIONS}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_NAME = "UNet_ResNet50_default.pth"


def probs_to_bitmap(present: np.ndarray) -> np.ndarray:
    """(C, H, W) booleans over CXAS channels (or (len(ATOMIC_REGIONS), H, W) in region order) -> uint16 bits."""
    if present.shape[0] == len(CXAS_CLASSES):
        present = present[[REGION_TO_CHANNEL[r] for r in ATOMIC_REGIONS]]
    if present.shape[0] != len(ATOMIC_REGIONS):
        raise ValueError(f"expected {len(CXAS_CLASSES)} or {len(ATOMIC_REGIONS)} channels, got {present.shape[0]}")
    out = np.zeros(present.shape[1:], dtype=np.uint16)
    for bit, layer in enumerate(present):
        out |= layer.astype(np.uint16) << np.uint16(bit)
    return out


def build_cxas_unet(num_classes: int = len(CXAS_CLASSES)):
    """CXAS's UNet_ResNet50 network: the package's class when installed, else `CxasUNet`."""
    try:
        from cxas.models.UNet.backbone_unet import BackboneUNet  # type: ignore[import-not-found]
    except ImportError:
        return CxasUNet(num_classes)
    return BackboneUNet("UNet_ResNet50_default", num_classes)


def CxasUNet(num_classes: int = len(CXAS_CLASSES)):
    """The CXAS UNet_ResNet50 architecture with the package's parameter names (random init).

    backbone.backbone.layer0..layer4 (torchvision ResNet-50 stem and stages) feed the decoder:
    head.up1 (3x3 conv 2048->1024, upsample, concat layer3 output, double conv -> 512),
    head.up2..up4 (upsample, concat the skip, double conv -> 256, 64, 128), head.out (1x1 conv
    -> classes); logits are upsampled to the input size before head.out.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchvision

    def conv_bn_relu(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    class DoubleConv(nn.Module):
        def __init__(self, cin: int, cout: int, mid: int):
            super().__init__()
            self.double_conv = nn.Sequential(*conv_bn_relu(cin, mid), *conv_bn_relu(mid, cout))

        def forward(self, x):
            return self.double_conv(x)

    class Conv(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv = nn.Sequential(*conv_bn_relu(cin, cout))

        def forward(self, x):
            return self.conv(x)

    class OutConv(nn.Module):
        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel_size=1)

        def forward(self, x):
            return self.conv(x)

    class Up(nn.Module):
        """Upsample the deep features to the skip's size, concatenate (skip first), double conv."""

        def __init__(self, cin: int, cout: int):
            super().__init__()
            self.conv = DoubleConv(cin, cout, cin // 2)

        def forward(self, deep, skip):
            deep = F.interpolate(deep, skip.shape[2:], mode="bilinear")
            return self.conv(torch.cat([skip, deep], dim=1))

    class UpInit(nn.Module):
        """Like Up, with a 3x3 conv on the deep features first."""

        def __init__(self, pre: int, cin: int, cout: int):
            super().__init__()
            self.conv1 = Conv(cin, pre)
            self.conv2 = DoubleConv(cin, cout, cin // 2)

        def forward(self, deep, skip):
            deep = F.interpolate(self.conv1(deep), skip.shape[2:], mode="bilinear")
            return self.conv2(torch.cat([skip, deep], dim=1))

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            r = torchvision.models.resnet50(weights=None)
            self.backbone = nn.Sequential(OrderedDict([
                ("layer0", nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)),
                ("layer1", r.layer1), ("layer2", r.layer2), ("layer3", r.layer3), ("layer4", r.layer4),
            ]))

        def forward(self, x):
            feats = []
            for layer in self.backbone:
                x = layer(x)
                feats.append(x)
            return feats

    class Head(nn.Module):
        def __init__(self, c: int = 2048, ngf: int = 128):
            super().__init__()
            self.up1 = UpInit(c // 2, c, c // 4)
            self.up2 = Up(c // 4 * 2, c // 8)
            self.up3 = Up(c // 8 * 2, c // 32)
            self.up4 = Up(c // 32 * 2, ngf)
            self.out = OutConv(ngf, num_classes)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.head = Head()

        def _forward(self, x):
            d1, d2, d3, d4, d5 = self.backbone(x)
            h = self.head
            up = h.up4(h.up3(h.up2(h.up1(d5, d4), d3), d2), d1)
            up = F.interpolate(up, x.shape[2:], mode="bilinear")
            return {"feats": up, "logits": h.out(up)}

        def forward(self, x):
            return self._forward(x["data"] if isinstance(x, dict) else x)

    return Net()


def load_checkpoint(model, path: Path, trust: bool = False) -> None:
    """Load a cxas checkpoint ({'model': state_dict} or a bare state dict; 'module.' prefixes ok)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # unpickling errors come in many types
        raise WeightsError(
            f"cannot read CXAS checkpoint {path}: {exc} (set gen.anatomy.options.trust_checkpoint=true only for a file you trust)"
        ) from exc
    state = ckpt.get("model", ckpt.get("state_dict", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{path} is not a CXAS UNet_ResNet50 checkpoint: {len(missing)} missing keys, e.g. {missing[:3]}")
    if result.unexpected_keys:
        log.warning("CXAS checkpoint: %d unexpected keys ignored", len(result.unexpected_keys))


def _checkpoint_file(path: Path) -> Path:
    if path.is_file():
        return path
    named = path / CHECKPOINT_NAME
    if named.is_file():
        return named
    found = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
    if len(found) == 1:
        return found[0]
    raise WeightsError(f"no CXAS checkpoint in {path} (expected {CHECKPOINT_NAME})")


class CxasAnatomy:
    """AnatomyBackend: CXAS multi-label anatomy -> uint16 bit map over ils.vocab.ATOMIC_REGIONS."""

    def __init__(self, cfg: StageConfig, image_size: int):
        opts: dict[str, Any] = dict(cfg.options or {})
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError as exc:
            raise UserError(f"anatomy backend cxas needs torch and torchvision ({exc}); pip install 'ils[train]'") from exc
        if not cfg.weights:
            raise WeightsError(
                "anatomy backend cxas needs gen.anatomy.weights: the CXAS checkpoint UNet_ResNet50_default.pth "
                "(pip install cxas downloads it to ~/.cxas/weights/ on first use; copy it to a path or s3:// URI)"
            )
        self.image_size = int(image_size)
        self.input_size = int(opts.get("input_size", 512))
        self.threshold = float(opts.get("threshold", 0.5))
        self.input_resize = str(opts.get("input_resize", "nearest"))
        if self.input_resize not in ("nearest", "bilinear"):
            raise UserError(f"gen.anatomy.options.input_resize must be nearest or bilinear, got {self.input_resize!r}")
        self.batch_size = max(1, int(cfg.batch_size))
        self.device = pick_device(cfg.num_gpus)
        path = _checkpoint_file(local_weights(cfg.weights, opts, what="CXAS weights (gen.anatomy.weights)"))
        self.model = build_cxas_unet()
        load_checkpoint(self.model, path, trust=bool(opts.get("trust_checkpoint", False)))
        self.model.to(self.device).eval()
        self.channels = [REGION_TO_CHANNEL[r] for r in ATOMIC_REGIONS]
        log.info("CXAS loaded on %s from %s", self.device, path.name)

    def _logits(self, x):
        out = self.model._forward(x)
        return out["logits"] if isinstance(out, dict) else out

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = []
            for im in images[start : start + self.batch_size]:
                arr = np.asarray(im, dtype=np.float32)
                if arr.ndim != 2:
                    raise ValueError(f"cxas expects 2-D gray images, got shape {arr.shape}")
                t = torch.from_numpy(np.clip(arr, 0, 1))[None, None]
                size = (self.input_size, self.input_size)
                batch.append(F.interpolate(t, size=size, mode="nearest") if self.input_resize == "nearest"
                             else F.interpolate(t, size=size, mode="bilinear", align_corners=False))
            x = (torch.cat(batch).repeat(1, 3, 1, 1) - mean) / std
            with torch.no_grad():
                logits = self._logits(x.to(self.device))[:, self.channels]
                present = (logits.sigmoid() > self.threshold).float()
                present = F.interpolate(present, size=(self.image_size, self.image_size), mode="nearest")
            for p in present.bool().cpu().numpy():
                out.append(probs_to_bitmap(p))
        return out
