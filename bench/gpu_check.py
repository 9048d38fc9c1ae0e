"""GPU check: the `7b` ROSALIA (random weights, bf16) trains and segments; how fast.

Builds the model of `--size` (default `7b`: LISA-7B-v1 shapes) with random weights directly on
the device in bf16, then measures
  - one LoRA training step (forward + backward + AdamW step; r=128, alpha=256, SPEC section 3
    trainable set) at batch 1, 2, 4, 8;
  - `Segmenter` images/s at batch 1, 8, 32 (teacher-forced masks + generated answers);
and writes bench/results/gpu_check_<size>.json with the GPU name. A time budget (default 420 s)
keeps the whole run under 8 minutes: measurements not reached are recorded as skipped.
Random weights: the numbers are speed and memory, not quality. Inputs are SYNTHETIC.

    python bench/gpu_check.py                      # on a GPU machine
    python bench/gpu_check.py --size tiny --image-size 64 --train-batches 1,2 --seg-batches 1,2   # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench.gpu_check")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _items(n: int, size: int, mask_size: int, seed: int = 0) -> list[dict]:
    """SYNTHETIC PairDataset-style items (random images, a square mask, template texts)."""
    import numpy as np
    import torch

    from ils import templates as T

    g = np.random.default_rng(seed)
    out = []
    for k in range(n):
        present = bool(k % 2 == 0)
        mask = np.zeros((mask_size, mask_size), np.float32)
        if present:
            mask[mask_size // 4 : mask_size // 2, mask_size // 4 : mask_size // 2] = 1
        inst = T.instruction("basic", "pneumonia", ["left lung base"])
        ans = T.answer("basic", "pneumonia", present, ["left lung base"])
        out.append({
            "image": torch.from_numpy(g.random((size, size), dtype=np.float32)), "mask": torch.from_numpy(mask),
            "instruction": inst, "answer": ans, "presence": present, "row": {"pair_id": f"synthetic-{k}"},
        })
    return out


def build(size: str, image_size: int | None, device, dtype):
    """The model of `size` with random weights, built on `device` in `dtype`, LoRA set up."""
    import torch

    from ils.config import ModelConfig, TrainConfig
    from rosalia.model import build_model

    mc = ModelConfig(size=size)
    if size == "tiny" and image_size:
        mc.image_size = image_size
    tc = TrainConfig(lora_r=128 if size == "7b" else 8, lora_alpha=256 if size == "7b" else 16, freeze_vision=size == "tiny")
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build_model(mc, tc)
    finally:
        torch.set_default_dtype(prev)
    return model.to(device)


def measure_train(model, device, batches: list[int], deadline: float, steps: int = 3) -> dict[str, Any]:
    import torch

    from rosalia.data import collate_for
    from rosalia.train_loop import make_optimizer, to_device

    collate = collate_for(model)
    opt = make_optimizer(list(model.parameters()), 3e-4)
    model.train()
    res: dict[str, Any] = {}
    for bs in batches:
        if time.time() > deadline:
            res[str(bs)] = "skipped (time budget)"
            continue
        batch = to_device(collate(_items(bs, model.spec["image_size"], model.mask_size)), device)
        try:
            times = []
            for i in range(steps + 1):  # the first step warms up
                _sync(device)
                t = time.perf_counter()
                out = model(batch)
                out["loss"].backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                _sync(device)
                if i:
                    times.append(time.perf_counter() - t)
            step_s = sorted(times)[len(times) // 2]
            res[str(bs)] = {"step_s": step_s, "samples_per_s": bs / step_s, "loss": float(out["loss"])}
            if device.type == "cuda":
                res[str(bs)]["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        except torch.OutOfMemoryError:
            res[str(bs)] = "out of memory"
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        log.info("train batch %d: %s", bs, res[str(bs)])
    return res


def measure_segmenter(model, device, batches: list[int], deadline: float, image_px: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from rosalia.segmenter import Segmenter

    model.eval()
    res: dict[str, Any] = {}
    g = np.random.default_rng(1)
    for bs in batches:
        if time.time() > deadline:
            res[str(bs)] = "skipped (time budget)"
            continue
        seg = Segmenter(model=model, device=str(device), batch_size=bs)
        images = [g.random((image_px, image_px), dtype=np.float32) for _ in range(bs)]
        inst = ["Segment the pneumonia in the left lung base."] * bs
        try:
            seg.segment(images[:1], inst[:1])  # warm up
            times = []
            for _ in range(2):
                _sync(device)
                t = time.perf_counter()
                seg.segment(images, inst)
                _sync(device)
                times.append(time.perf_counter() - t)
            best = min(times)
            res[str(bs)] = {"batch_s": best, "images_per_s": bs / best}
        except torch.OutOfMemoryError:
            res[str(bs)] = "out of memory"
            torch.cuda.empty_cache()
        log.info("segmenter batch %d: %s", bs, res[str(bs)])
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="7b", choices=["tiny", "7b"])
    ap.add_argument("--image-size", type=int, default=None, help="tiny only: SAM input side")
    ap.add_argument("--train-batches", default="1,2,4,8")
    ap.add_argument("--seg-batches", default="1,8,32")
    ap.add_argument("--image-px", type=int, default=512, help="side of the synthetic input images")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from ils.runtime import apply_loopback_env

    apply_loopback_env(set_home=False)
    import torch

    t0 = time.time()
    deadline = t0 + args.budget_s
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU dry run)"
    log.info("device %s (%s), dtype %s, size %s", device, gpu, dtype, args.size)
    model = build(args.size, args.image_size, device, dtype)
    build_s = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("built in %.1f s: %.3g parameters, %.3g trainable", build_s, n_params, n_train)
    train = measure_train(model, device, _ints(args.train_batches), deadline)
    seg = measure_segmenter(model, device, _ints(args.seg_batches), deadline, args.image_px)
    result = {
        "benchmark": "gpu_check", "size": args.size, "gpu": gpu, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "weights": "random", "inputs": "SYNTHETIC", "parameters": n_params, "trainable_parameters": n_train,
        "build_s": build_s, "train_step": train, "segmenter": seg, "total_s": time.time() - t0,
        "torch": torch.__version__, "cuda": torch.version.cuda, "platform": platform.platform(),
        "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else []),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_check_{args.size}.json"
    path.write_text(json.dumps(result, indent=1))
    log.info("wrote %s", path)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
