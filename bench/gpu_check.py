"""GPU check: the `7b` ROSALIA (random weights, bf16) trains and segments; how fast.

Builds the model of `--size` (default `7b`: LISA-7B-v1 shapes) with random weights directly on
the device in bf16, then measures
  - one LoRA training step (forward + backward + AdamW step; r=128, alpha=256, SPEC section 3
    trainable set) at batch 1, 2, 4, 8;
  - `Segmenter` images/s at batch 1, 8, 32 (teacher-forced masks + generated answers);
  - (`--vision`, default on) RadEdit counterfactuals/s at 512 px through the real editing code
    (`ilsgen/stages/radedit_editing.py`: edit-friendly inversion + guided edit, 50 steps, UNet of
    Stable-Diffusion-2 size with RadEdit's 768-wide context, SDXL-VAE-sized VAE) and CXAS
    images/s at batch 16 (512 px), each next to its FLOP-limit estimate: FLOPs per item counted
    with torch's FlopCounterMode on the meta device, divided by the GPU's dense bf16 peak;
and writes bench/results/gpu_check_<size>.json with the GPU name. A time budget (default 420 s)
keeps the whole run under 8 minutes: measurements not reached are recorded as skipped.
Random weights: the numbers are speed and memory, not quality. Inputs are SYNTHETIC.

    python bench/gpu_check.py                      # on a GPU machine
    python bench/gpu_check.py --size tiny --image-size 64 --train-batches 1,2 --seg-batches 1,2 --vision-tiny   # CPU dry run
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


#: Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, SXM parts, no sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def peak_tflops(gpu: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)


def add_flop_share(res: dict[str, Any], rate_key: str, flops_per_item: float, gpu: str) -> None:
    """Add the FLOP-limited rate of `gpu` (bf16 peak / FLOPs per item) and the share of it that
    `res[rate_key]` reached; nothing for a GPU without a known peak."""
    peak = peak_tflops(gpu)
    if peak:
        res["flop_limit_per_s"] = peak * 1e12 / flops_per_item
        res["share_of_peak"] = res[rate_key] / res["flop_limit_per_s"]


def count_flops(fn) -> float:
    """FLOPs of `fn()` (built and run on the meta device: nothing is computed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def _unet_cfg(tiny: bool) -> dict:
    if tiny:
        return dict(sample_size=8, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                    norm_num_groups=8, layers_per_block=1)
    # Stable Diffusion 2 UNet shapes; RadEdit conditions on BioViL-T (768 wide)
    return dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, layers_per_block=2)


def _vae_cfg(tiny: bool) -> dict:
    if tiny:
        return dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    block_out_channels=(16, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8)
    return dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2)  # SDXL VAE shapes


def measure_radedit(device, dtype, gpu: str, deadline: float, tiny: bool, batch: int = 4, steps: int = 50,
                    px: int = 512, guidance: float = 7.5) -> dict[str, Any]:
    """RadEdit counterfactuals/s: VAE encode, inversion (steps UNet passes), guided edit (2 x steps), VAE decode."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from ilsgen.stages.radedit_editing import RADEDIT_SCHEDULER, Schedule, edit, invert

    if time.time() > deadline:
        return {"skipped": "time budget"}
    px = 32 if tiny else px
    ucfg, vcfg = _unet_cfg(tiny), _vae_cfg(tiny)
    ctx_len, ctx_dim = 128, ucfg["cross_attention_dim"]
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **ucfg).to(dtype).eval()
        vae = AutoencoderKL(in_channels=3, out_channels=3, **vcfg).float().eval()  # RadEdit runs the VAE in fp32
    sched = DDIMScheduler(num_train_timesteps=1000, **RADEDIT_SCHEDULER)
    down = 2 ** (len(vcfg["block_out_channels"]) - 1)
    lat = px // down

    def unet_fn(x, t, c):
        return unet(x.to(dtype), t, encoder_hidden_states=c.to(dtype)).sample

    ctx = torch.randn(1, ctx_len, ctx_dim, device=device, dtype=dtype)
    images = torch.rand(batch, 3, px, px, device=device) * 2 - 1
    keep = torch.zeros(batch, 1, lat, lat, device=device)
    keep[..., : lat // 3] = 1  # a third of the image kept, like the mediastinum outside the lungs

    def run():
        with torch.no_grad():
            z = vae.encode(images).latent_dist.mean * 0.13025
            s = Schedule.from_scheduler(sched, steps)
            inv = invert(unet_fn, s, z.to(dtype), ctx.expand(batch, -1, -1), torch.Generator().manual_seed(0))
            out = edit(unet_fn, s, inv, keep, ctx.expand(batch, -1, -1), ctx.expand(batch, -1, -1), guidance)
            return vae.decode(out.float() / 0.13025).sample

    try:
        run()  # warm up
        _sync(device)
        t = time.perf_counter()
        run()
        _sync(device)
        wall = time.perf_counter() - t
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"batch": batch, "result": "out of memory"}
    unet_flops = count_flops(lambda: UNet2DConditionModel(in_channels=4, out_channels=4, **ucfg)(
        torch.randn(1, 4, lat, lat), torch.tensor(10), encoder_hidden_states=torch.randn(1, ctx_len, ctx_dim)))
    vae_flops = count_flops(lambda: (lambda v: v.decode(v.encode(torch.randn(1, 3, px, px)).latent_dist.mean))(
        AutoencoderKL(in_channels=3, out_channels=3, **vcfg)))
    per_image = unet_flops * steps * 3 + vae_flops
    res = {"batch": batch, "steps": steps, "px": px, "unet_passes_per_image": 3 * steps, "wall_s": wall,
           "counterfactuals_per_s": batch / wall, "tflop_per_image": per_image / 1e12,
           "unet_tflop_per_pass": unet_flops / 1e12, "unet_parameters": sum(p.numel() for p in unet.parameters())}
    add_flop_share(res, "counterfactuals_per_s", per_image, gpu)
    log.info("radedit: %s", res)
    return res


def measure_cxas(device, dtype, gpu: str, deadline: float, tiny: bool, batch: int = 16) -> dict[str, Any]:
    """CXAS (ResNet-50 U-Net, 159 classes) images/s at `batch`, 512 px (32 px for --vision-tiny)."""
    import torch

    from ilsgen.stages.anatomy_cxas import CxasUNet

    if time.time() > deadline:
        return {"skipped": "time budget"}
    px = 32 if tiny else 512
    reps = 1 if tiny else 3
    net = CxasUNet().to(device, dtype).eval()
    x = torch.randn(batch, 3, px, px, device=device, dtype=dtype)
    with torch.no_grad():
        net._forward(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            net._forward(x)
        _sync(device)
        wall = (time.perf_counter() - t) / reps
    flops = count_flops(lambda: CxasUNet().eval()._forward(torch.randn(1, 3, px, px)))
    res = {"batch": batch, "px": px, "batch_s": wall, "images_per_s": batch / wall, "gflop_per_image": flops / 1e9}
    add_flop_share(res, "images_per_s", flops, gpu)
    log.info("cxas: %s", res)
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="7b", choices=["tiny", "7b"])
    ap.add_argument("--image-size", type=int, default=None, help="tiny only: SAM input side")
    ap.add_argument("--train-batches", default="1,2,4,8")
    ap.add_argument("--seg-batches", default="1,8,32")
    ap.add_argument("--image-px", type=int, default=512, help="side of the synthetic input images")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--no-vision", dest="vision", action="store_false", help="skip the RadEdit and CXAS timings")
    ap.add_argument("--vision-tiny", action="store_true", help="tiny RadEdit/CXAS inputs and UNet (CPU dry run)")
    ap.add_argument("--radedit-batch", type=int, default=4)
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
    vision: dict[str, Any] = {}
    if args.vision and device.type != "cuda" and not args.vision_tiny:
        vision["skipped"] = "no GPU: real-size RadEdit/CXAS are GPU work (--vision-tiny for a CPU dry run)"
    elif args.vision:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        vision["radedit"] = measure_radedit(device, dtype, gpu, deadline, args.vision_tiny, batch=args.radedit_batch,
                                            steps=2 if args.vision_tiny else 50)
        vision["cxas"] = measure_cxas(device, dtype, gpu, deadline, args.vision_tiny, batch=1 if args.vision_tiny else 16)
    result = {
        "benchmark": "gpu_check", "size": args.size, "gpu": gpu, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "weights": "random", "inputs": "SYNTHETIC", "parameters": n_params, "trainable_parameters": n_train,
        "build_s": build_s, "train_step": train, "segmenter": seg, "vision": vision, "total_s": time.time() - t0,
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
