"""Train the anatomy network (`ils anatomy train`): bounded, CPU, deterministic seed.

    train(TrainSettings) -> dict   # the meta record written into the weights file

Data: the real radiographs of `data` (realcxr layout) minus the held-out fifth of each set
(`ilsgen.anatomy_net.data.held_out`, `fold`; `include_held_out` trains on all), plus `phantoms` phantom
studies. Batches mix real and phantom images (`phantom_share`). Augmentation: random affine
(scale, rotation, shift), gamma, contrast and noise. Loss per channel, only where a channel is
known for the image: binary cross-entropy + soft Dice. Adam with a one-cycle learning rate over
`steps`; the run stops early at `minutes`.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ilsgen.anatomy_net.data import Example, load_real, phantom_examples, real_examples
from ilsgen.anatomy_net.model import CHANNELS, WEIGHTS, build, save

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    data: str
    out: str = str(WEIGHTS)
    input_size: int = 160
    widths: tuple[int, ...] = (16, 32, 64, 128)
    steps: int = 1500
    batch: int = 8
    lr: float = 3e-3
    phantoms: int = 60
    phantom_share: float = 0.25
    minutes: float = 14.0
    threads: int = 2
    seed: int = 0
    include_held_out: bool = False
    fold: int = 4
    command: str = ""
    channel_weights: dict[str, float] = field(default_factory=lambda: {"opacity": 0.5, "consolidation": 0.5})


def augment(x, y, gen):
    """Random affine + intensity jitter on a batch (torch tensors (B,1,N,N), (B,C,N,N))."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=gen)
    ang = r(-8, 8) * math.pi / 180
    sc = r(0.88, 1.12)
    asp = r(0.92, 1.08)
    tx, ty = r(-0.06, 0.06), r(-0.06, 0.06)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos / sc * asp, -sin / sc, tx], 1),
                         torch.stack([sin / sc, cos / sc / asp, ty], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(r(-0.35, 0.35)).view(b, 1, 1, 1)
    x = x.clamp(0, 1) ** gamma
    x = (x - 0.5) * r(0.8, 1.2).view(b, 1, 1, 1) + 0.5 + r(-0.08, 0.08).view(b, 1, 1, 1)
    x = x + r(0, 0.04).view(b, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1), y


def loss_fn(logits, y, known, weights):
    """Masked BCE + soft Dice, averaged over the known (image, channel) pairs."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=(2, 3))
    p = torch.sigmoid(logits)
    inter = (p * y).sum(dim=(2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(2, 3)) + y.sum(dim=(2, 3)) + 1)
    per = (bce + dice) * known * weights[None, :]
    return per.sum() / known.sum().clamp(min=1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


def train(st: TrainSettings) -> dict:
    import torch

    torch.set_num_threads(st.threads)
    torch.manual_seed(st.seed)
    gen = torch.Generator().manual_seed(st.seed)
    rng = np.random.default_rng(st.seed)
    t0 = time.perf_counter()
    cases = load_real(Path(st.data))
    train_cases = [c for c in cases if st.include_held_out or not c.held_out(st.fold)]
    val_cases = [c for c in cases if c.held_out(st.fold)] if not st.include_held_out else []
    real = real_examples(train_cases, st.input_size)
    val = real_examples(val_cases, st.input_size)
    ph = phantom_examples(st.phantoms, st.input_size) if st.phantoms else []
    log.info("anatomy train: %d real (%d held out), %d phantoms, data ready in %.0f s", len(real), len(val), len(ph),
             time.perf_counter() - t0)
    model = build(st.widths)
    opt = torch.optim.Adam(model.parameters(), lr=st.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=st.lr, total_steps=st.steps, pct_start=0.15)
    cw = torch.tensor([st.channel_weights.get(c, 1.0) for c in CHANNELS], dtype=torch.float32)

    def stack(items: list[Example]):
        return (torch.from_numpy(np.stack([e.image for e in items])[:, None]),
                torch.from_numpy(np.stack([e.target for e in items])),
                torch.from_numpy(np.stack([e.known for e in items])))

    n_ph = int(round(st.batch * st.phantom_share)) if ph else 0
    model.train()
    done, t_train, losses = 0, time.perf_counter(), []
    for step in range(st.steps):
        pick = [real[i] for i in rng.integers(0, len(real), st.batch - n_ph)] + [ph[i] for i in rng.integers(0, len(ph), n_ph)] if ph else \
            [real[i] for i in rng.integers(0, len(real), st.batch)]
        x, y, k = stack(pick)
        x, y = augment(x, y, gen)
        loss = loss_fn(model(x), y, k, cw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % 100 == 0:
            log.info("anatomy train: step %d/%d loss %.4f (%.0f s)", done, st.steps, np.mean(losses[-100:]),
                     time.perf_counter() - t_train)
        if time.perf_counter() - t0 > st.minutes * 60:
            log.warning("anatomy train: time budget of %.1f min reached at step %d", st.minutes, done)
            break
    model.eval()
    val_scores = {}
    if val:
        with torch.inference_mode():
            p = torch.sigmoid(model(stack(val)[0])).numpy() > 0.5
        for ci, cname in enumerate(CHANNELS):
            ds = [dice(p[i, ci], e.target[ci] > 0.5) for i, e in enumerate(val) if e.known[ci]]
            if ds:
                val_scores[cname] = round(float(np.mean(ds)), 4)
        log.info("anatomy train: held-out Dice at input size %s", val_scores)
    meta = {
        "channels": list(CHANNELS),
        "widths": list(st.widths),
        "input_size": st.input_size,
        "command": st.command,
        "settings": {k: v for k, v in asdict(st).items() if k not in ("command",)},
        "data": {
            "real": sorted({c.set for c in cases}),
            "real_trained": [[c.set, c.name] for c in train_cases],
            "held_out_rule": f"within each set, index.csv order, position % 5 == {st.fold}" if not st.include_held_out else "none (all images trained)",
            "held_out": [[c.set, c.name] for c in val_cases],
            "phantoms": {"count": len(ph), "seed": 101, "generator": "ils.phantom.sample.generate_study, size 256"},
        },
        "steps_done": done,
        "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
        "held_out_dice_input_size": val_scores,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "torch": str(torch.__version__),
        "machine": f"{platform.machine()} {st.threads} threads",
    }
    save(model, meta, Path(st.out))
    log.info("anatomy train: wrote %s (%d steps, %.0f s)", st.out, done, time.perf_counter() - t0)
    return meta
