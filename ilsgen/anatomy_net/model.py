"""The anatomy network: a small U-Net, its weights file and CPU inference.

Input: one (S, S) float image in [0, 1] (lungs dark), resized to `input_size` (default 160) and
stretched to its 1st-99th percentiles. Output: sigmoid probabilities, one channel each
(`CHANNELS`):

    lung_right_full, lung_left_full  whole outline of each lung, including the part behind the
                                     heart (the `covid_radiologist` convention)
    lung_visible                     both lungs stopping at the heart/mediastinal border (the
                                     `shenzhen_tb` and phantom convention; the pipeline's lungs)
    heart                            the cardiac region (see ilsgen.anatomy_net.data.cardiac_part)
    opacity, consolidation           lesion probability (ground-glass / consolidation)

The weights file (`ilsgen/weights/anatomy_net.pt`, float16) holds the state dict and a `meta`
record: the architecture, the data and the command that trained it, the held-out images.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("lung_right_full", "lung_left_full", "lung_visible", "heart", "opacity", "consolidation")
WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "anatomy_net.pt"


class WeightsError(RuntimeError):
    """The weights file is missing or does not match the network."""


def build(widths: Sequence[int] = (16, 32, 64, 128), n_out: int = len(CHANNELS)):
    """The U-Net (torch.nn.Module): conv-BN-ReLU pairs, max-pool down, bilinear up."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = list(widths)
            self.down = nn.ModuleList([block(1, w[0])] + [block(w[i], w[i + 1]) for i in range(len(w) - 1)])
            self.up = nn.ModuleList([block(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1))])
            self.head = nn.Conv2d(w[0], n_out, 1)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            skips = []
            for i, d in enumerate(self.down):
                x = d(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            skips.pop()
            for u in self.up:
                s = skips.pop()
                x = nn.functional.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
                x = u(torch.cat([x, s], dim=1))
            return self.head(x)

    return UNet()


def prepare(image: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32 network input: bilinear resize, stretch to percentiles 1-99."""
    from PIL import Image

    arr = np.asarray(image, dtype=np.float32)
    if arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    lo, hi = np.percentile(arr, [1, 99])
    return np.clip((arr - lo) / max(float(hi - lo), 1e-6), 0, 1).astype(np.float32)


def save(model: Any, meta: dict[str, Any], path: Path) -> None:
    """Write the weights (float16) and the meta record."""
    import torch

    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "state": state}, path)


class AnatomyNet:
    """The trained network on CPU; `predict(images)` -> float32 (N, C, size, size) probabilities."""

    def __init__(self, path: Path | str | None = None, threads: int | None = None) -> None:
        import torch

        p = Path(path) if path else WEIGHTS
        if not p.is_file():
            raise WeightsError(f"anatomy network weights not found at {p}; make them with `ils anatomy train`")
        blob = torch.load(p, map_location="cpu", weights_only=True)
        self.meta: dict[str, Any] = dict(blob["meta"])
        if tuple(self.meta.get("channels", ())) != CHANNELS:
            raise WeightsError(f"{p}: channels {self.meta.get('channels')} do not match {CHANNELS}")
        self.size = int(self.meta["input_size"])
        self.model = build(self.meta["widths"])
        try:
            self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state"].items()})
        except RuntimeError as exc:
            raise WeightsError(f"{p}: weights do not fit the network: {exc}") from None
        self.model.eval()
        self.threads = threads
        self.path = p

    def predict(self, images: Sequence[np.ndarray], batch: int = 8) -> np.ndarray:
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = np.stack([prepare(im, self.size) for im in images[i : i + batch]])[:, None]
                out.append(torch.sigmoid(self.model(torch.from_numpy(x))).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(CHANNELS), self.size, self.size), np.float32)


@lru_cache(maxsize=4)
def shared(path: str = "", threads: int = 0) -> AnatomyNet:
    """One loaded network per (path, threads) in this process."""
    return AnatomyNet(path or None, threads or None)


def upsample(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one probability map to `shape` (H, W)."""
    from PIL import Image

    if prob.shape == tuple(shape):
        return prob.astype(np.float32)
    img = Image.fromarray(prob.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(img)
