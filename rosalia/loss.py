"""ROSALIA loss (SPEC section 3 + presence): w_ce CE on answer tokens + w_bce BCE on every mask
(empty ones included) + w_dice Dice on non-empty targets only + w_presence BCE on presence."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE over positions whose label is not -100 (the answer tokens)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if not (shift_labels != -100).any():
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100)


def mask_bce(mask_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE, averaged per sample then over samples (all samples)."""
    return F.binary_cross_entropy_with_logits(mask_logits.float(), masks.float(), reduction="none").flatten(1).mean(1).mean()


def dice_loss(mask_logits: torch.Tensor, masks: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """LISA's Dice loss per sample (B,)."""
    p = torch.sigmoid(mask_logits.float()).flatten(1)
    t = masks.float().flatten(1)
    num = 2 * (p / scale * t).sum(1)
    den = (p / scale).sum(1) + (t / scale).sum(1)
    return 1 - (num + eps) / (den + eps)


def rosalia_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask_logits: torch.Tensor,
    masks: torch.Tensor,
    presence_logits: torch.Tensor | None,
    presence: torch.Tensor,
    valid: torch.Tensor,
    weights: dict[str, float],
) -> dict[str, torch.Tensor]:
    """dict(loss, ce, bce, dice, presence); rows without a [SEG] token get no mask losses."""
    ce = answer_ce(logits, labels)
    zero = mask_logits.sum() * 0.0
    v = valid.bool()
    bce = mask_bce(mask_logits[v], masks[v]) if v.any() else zero
    nonempty = v & (masks.flatten(1).amax(1) > 0)
    dice = dice_loss(mask_logits[nonempty], masks[nonempty]).mean() if nonempty.any() else zero
    if presence_logits is not None and v.any():
        pres = F.binary_cross_entropy_with_logits(presence_logits[v].float(), presence[v].float())
    else:
        pres = zero
    loss = weights["ce"] * ce + weights["bce"] * bce + weights["dice"] * dice + weights["presence"] * pres
    return {"loss": loss, "ce": ce.detach(), "bce": bce.detach(), "dice": dice.detach(), "presence": pres.detach()}
