"""The DeepSpeed engine configuration for ROSALIA fine-tuning (ZeRO-2 by default).

Optimizer and scheduler are built by `rosalia.train_loop` and handed to `deepspeed.initialize`
as client objects, so DeepSpeed and plain torch/DDP train with the same AdamW and schedule.
On CPU, DeepSpeed 0.19.8 runs ZeRO-2 over gloo (first initialize compiles a comm op, cached
under TORCH_EXTENSIONS_DIR); bf16 is enabled only where the device supports it.
"""

from __future__ import annotations

from typing import Any


def deepspeed_config(
    micro_batch_size: int,
    *,
    zero_stage: int = 2,
    grad_clip: float = 1.0,
    bf16: bool = False,
    grad_accum: int = 1,
    log_every: int = 10,
) -> dict[str, Any]:
    """A DeepSpeed config dict: ZeRO stage `zero_stage`, gradient clipping, optional bf16."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    if micro_batch_size < 1 or grad_accum < 1:
        raise ValueError("micro_batch_size and grad_accum must be >= 1")
    return {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": int(grad_accum),
        "gradient_clipping": float(grad_clip) if grad_clip and grad_clip > 0 else 0.0,
        "zero_optimization": {
            "stage": int(zero_stage),
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": 50_000_000,
            "allgather_bucket_size": 50_000_000,
        },
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        # The client optimizer is torch AdamW (betas 0.9/0.95, no weight decay).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": max(1, int(log_every)) * 1000,
        "wall_clock_breakdown": False,
    }
