"""The `ils real-eval` figure: overlays of the worst and best cases, per set and per lesion.

    figure(record, pics, path, n=2)

Each panel is one image with the prediction (filled, colour) and the expert mask (contour,
white); titles give the set, the score and whether the network was trained on the image.
With a model section, a row per lesion shows the model's masks ("Segment the opacity." ...)
on its worst and best images (held-out ones marked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi


def _edge(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, iterations=max(1, mask.shape[0] // 300))


def _panel(ax, image: np.ndarray, pred: np.ndarray, truth: np.ndarray, colour, title: str) -> None:
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    rgb[pred] = 0.55 * rgb[pred] + 0.45 * np.asarray(colour)
    rgb[_edge(truth)] = (1.0, 1.0, 1.0)
    ax.imshow(rgb)
    ax.set_title(title, fontsize=6)
    ax.axis("off")


def figure(record: dict[str, Any], pics: dict, path: str | Path, n: int = 2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["per_image"]
    panels = []
    for s in sorted({r["set"] for r in rows if "lung_dice" in r}):
        sr = sorted((r for r in rows if r["set"] == s and "lung_dice" in r), key=lambda r: r["lung_dice"])
        for r in sr[:n] + sr[-n:]:
            image, apics = pics[(r["set"], r["image"])][:2]
            tag = "trained" if r.get("trained_on") else "held out" if r.get("trained_on") is False else ""
            panels.append((image, apics["lung"], apics["truth_lung"], (0.2, 0.5, 1.0),
                           f"{s} lung Dice {r['lung_dice']:.3f} {tag}"))
    for lesion, colour in (("opacity", (1.0, 0.6, 0.1)), ("consolidation", (1.0, 0.2, 0.2))):
        lr = sorted((r for r in rows if lesion in r.get("lesions", {})), key=lambda r: r["lesions"][lesion]["iou"])
        for r in lr[:n] + lr[-n:]:
            image, _, lpics = pics[(r["set"], r["image"])][:3]
            pred, truth = lpics[lesion]
            x = r["lesions"][lesion]
            panels.append((image, pred, truth, colour,
                           f"{lesion} IoU {x['iou']:.2f} (whole lung {x['whole_lung_iou']:.2f})"))
    for lesion, colour in (("opacity", (0.1, 0.9, 0.4)), ("consolidation", (0.9, 0.2, 0.9))):
        mr = sorted((r for r in rows if r.get("model", {}).get(lesion, {}).get("outlined")),
                    key=lambda r: r["model"][lesion]["iou"])
        for r in mr[:n] + mr[-n:]:
            p = pics[(r["set"], r["image"])]
            pred, truth = p[3][lesion]
            x = r["model"][lesion]
            tag = "held out" if r["model"].get("held_out") else "not held out"
            panels.append((p[0], pred, truth, colour, f"model {lesion} IoU {x['iou']:.2f} (lung {x['whole_lung_iou']:.2f}) "
                                                      f"{'present' if x['present'] else 'absent'} {tag}"))
    cols = 2 * n
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.2 * cols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, panels):
        _panel(ax, *p)
    fig.suptitle("real radiographs (development split): worst and best cases; fill = prediction, white = expert",
                 fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
