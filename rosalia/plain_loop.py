"""A plain torch training loop (no Ray) over `PairDataset`: AdamW, warmup + linear decay, grad
clip, 1:1 `EpochPlan` batches. For quick experiments and as the baseline the Ray Train wrapper
(`rosalia/train.py`) is compared with."""

from __future__ import annotations

import logging
import time

import torch
from tqdm import tqdm

from rosalia.data import EpochPlan, PairDataset, collate_for
from rosalia.model import trainable_parameters

log = logging.getLogger(__name__)


def make_optimizer(model, train_cfg, total_steps: int):
    opt = torch.optim.AdamW(trainable_parameters(model), lr=train_cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warm = max(1, train_cfg.warmup_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(model, dataset: PairDataset, train_cfg, max_steps: int, max_minutes: float = 0.0, progress: bool = True) -> list[dict]:
    """Train for `max_steps` (or until `max_minutes`); returns the per-step loss dicts."""
    torch.manual_seed(train_cfg.seed)
    model.train()
    collate = collate_for(model)
    opt, sched = make_optimizer(model, train_cfg, max_steps)
    history: list[dict] = []
    start, step, epoch = time.time(), 0, 0
    bar = tqdm(total=max_steps, desc="train", disable=not progress)
    while step < max_steps:
        for idx in EpochPlan(train_cfg.seed, epoch, dataset.presence, dataset.repeats(train_cfg.global_positive_repeat), train_cfg.negative_ratio,
                             getattr(dataset, "image_index", None), train_cfg.pairs_per_image).batches(train_cfg.batch_size, drop_last=True):
            out = model(collate([dataset[i] for i in idx]))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(trainable_parameters(model), train_cfg.grad_clip)
            opt.step()
            sched.step()
            history.append({k: float(out[k].detach()) for k in ("loss", "ce", "bce", "dice", "presence")})
            step += 1
            bar.update(1)
            if step % 50 == 0:
                log.info("step %d %s", step, {k: round(v, 4) for k, v in history[-1].items()})
            if step >= max_steps or (max_minutes and time.time() - start > 60 * max_minutes):
                bar.close()
                model.eval()
                return history
        epoch += 1
    bar.close()
    model.eval()
    return history
