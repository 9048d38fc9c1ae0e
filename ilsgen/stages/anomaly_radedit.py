"""anomaly `radedit`: anomaly map from a diffusion counterfactual "healthy" image (SPEC section 2).

RadEdit-style editing (SDEdit): encode the image with the VAE at the working size (512), add
noise up to `strength`, denoise with a DDIM scheduler conditioned on a normal-report prompt
("No acute cardiopulmonary process"), decode -> I_healthy. Anomaly = |I - I_healthy|, Gaussian
smoothed, divided by its high percentile and clipped to [0, 1], optionally kept to the lungs.

Weights (a local folder or an s3:// URI, `gen.anomaly.weights`), diffusers layout:

    unet/          UNet2DConditionModel (microsoft/radedit)
    vae/           AutoencoderKL (stabilityai/sdxl-vae)
    text_encoder/  a transformers text model + its tokenizer files (BioViL-T in production;
                   any AutoModel works; a separate tokenizer/ folder is used when present)
    scheduler/     DDIMScheduler config

Options (`gen.anomaly.options`): steps (50), strength (0.5), guidance (1.0: no classifier-free
guidance), prompt, negative_prompt (""), seed (0), size (512), sigma (2.0, smoothing in pixels of
the output), percentile (99.5), mask_lungs (true), dtype (float32 | float16 | bfloat16; GPU
only), trust_remote_code (false; BioViL-T needs true), max_length (128).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ils.config import StageConfig
from ils.errors import UserError
from ils.vocab import region_bit
from ilsgen.stages.weights_cache import WeightsError, local_weights, pick_device

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "No acute cardiopulmonary process"
LUNG_BITS = region_bit("lung")


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return x
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=sigma)


def normalise_anomaly(diff: np.ndarray, sigma: float, percentile: float, lung_mask: np.ndarray | None) -> np.ndarray:
    """Smooth |I - I_healthy|, keep to the lungs (when a non-empty mask is given), scale to [0, 1]."""
    a = _gaussian(np.abs(diff).astype(np.float32), sigma)
    if lung_mask is not None and lung_mask.any():
        a = a * lung_mask.astype(np.float32)
    ref = float(np.percentile(a, percentile)) if a.size else 0.0
    if ref <= 1e-8:
        ref = float(a.max())
    if ref <= 1e-8:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip(a / ref, 0.0, 1.0).astype(np.float32)


class RadEditAnomaly:
    """AnomalyBackend: |I - I_healthy| with a RadEdit-style diffusion counterfactual."""

    def __init__(self, cfg: StageConfig, image_size: int):
        opts: dict[str, Any] = dict(cfg.options or {})
        self.image_size = int(image_size)
        self.steps = int(opts.get("steps", 50))
        self.strength = float(opts.get("strength", 0.5))
        self.guidance = float(opts.get("guidance", 1.0))
        self.prompt = str(opts.get("prompt", DEFAULT_PROMPT))
        self.negative_prompt = str(opts.get("negative_prompt", ""))
        self.seed = int(opts.get("seed", 0))
        self.size = int(opts.get("size", 512))
        self.sigma = float(opts.get("sigma", 2.0))
        self.percentile = float(opts.get("percentile", 99.5))
        self.mask_lungs = bool(opts.get("mask_lungs", True))
        self.max_length = int(opts.get("max_length", 128))
        self.batch_size = max(1, int(cfg.batch_size))
        if not 0.0 < self.strength <= 1.0:
            raise UserError(f"gen.anomaly.options.strength must be in (0, 1], got {self.strength}")
        if self.steps < 1 or self.size < 8 or self.size % 8:
            raise UserError("gen.anomaly.options: steps must be >= 1 and size a multiple of 8")
        self.device = pick_device(cfg.num_gpus)
        self.dtype_name = str(opts.get("dtype", "float32")) if self.device == "cuda" else "float32"
        root = local_weights(cfg.weights, opts, what="radedit weights (gen.anomaly.weights)")
        self._load(root, bool(opts.get("trust_remote_code", False)))

    # -- loading ---------------------------------------------------------------------------------
    def _load(self, root: Path, trust_remote_code: bool) -> None:
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoModel, AutoTokenizer

        for sub in ("unet", "vae", "text_encoder", "scheduler"):
            if not (root / sub).is_dir():
                raise WeightsError(f"radedit weights at {root} lack the {sub}/ folder (see docs/backends.md)")
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.dtype_name)
        if dtype is None:
            raise UserError(f"gen.anomaly.options.dtype must be float32, float16 or bfloat16, got {self.dtype_name!r}")
        self.torch = torch
        self.dtype = dtype
        try:
            self.unet = UNet2DConditionModel.from_pretrained(root / "unet", local_files_only=True, torch_dtype=dtype).to(self.device).eval()
            # The SDXL VAE overflows in fp16: keep it in float32.
            self.vae = AutoencoderKL.from_pretrained(root / "vae", local_files_only=True, torch_dtype=torch.float32).to(self.device).eval()
            tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root / "text_encoder"
            self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True, trust_remote_code=trust_remote_code)
            self.text_encoder = AutoModel.from_pretrained(
                root / "text_encoder", local_files_only=True, trust_remote_code=trust_remote_code
            ).to(self.device).eval()
            self.scheduler = DDIMScheduler.from_pretrained(root / "scheduler", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot load radedit weights from {root}: {exc}") from exc
        self.scale = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.vae_channels = int(self.vae.config.in_channels)
        with torch.no_grad():
            self.cond = self._embed(self.prompt)
            self.uncond = self._embed(self.negative_prompt) if self.guidance > 1.0 else None
        if self.cond.shape[-1] != self.unet.config.cross_attention_dim:
            raise WeightsError(
                f"text encoder width {self.cond.shape[-1]} does not match the UNet's cross_attention_dim "
                f"{self.unet.config.cross_attention_dim}"
            )
        log.info("radedit loaded on %s (%d steps, strength %.2f, size %d)", self.device, self.steps, self.strength, self.size)

    def _embed(self, text: str):
        tok = self.tokenizer(
            [text], padding="max_length", truncation=True, max_length=min(self.max_length, self.tokenizer.model_max_length or self.max_length),
            return_tensors="pt",
        )
        kwargs = {"input_ids": tok["input_ids"].to(self.device)}
        if "attention_mask" in tok:
            kwargs["attention_mask"] = tok["attention_mask"].to(self.device)
        out = self.text_encoder(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden.to(self.dtype)

    # -- inference -------------------------------------------------------------------------------
    def healthy(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The counterfactual healthy images, (image_size, image_size) float32 in [0, 1]."""
        torch = self.torch
        import torch.nn.functional as F

        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [np.asarray(im, dtype=np.float32) for im in images[start : start + self.batch_size]]
            for im in chunk:
                if im.ndim != 2:
                    raise ValueError(f"radedit expects 2-D gray images, got shape {im.shape}")
            x = torch.stack([torch.from_numpy(np.clip(im, 0, 1)) for im in _same_size(chunk)])[:, None]
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            x = (x * 2 - 1).repeat(1, self.vae_channels, 1, 1).to(self.device, torch.float32)
            gen = torch.Generator(device="cpu").manual_seed(self.seed + start)
            with torch.no_grad():
                latents = self.vae.encode(x).latent_dist.mean * self.scale
                latents = self._denoise(latents.to(self.dtype), gen)
                dec = self.vae.decode(latents.to(torch.float32) / self.scale).sample
            y = ((dec.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)
            y = F.interpolate(y, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            out.extend(y[:, 0].float().cpu().numpy())
        return out

    def _denoise(self, latents, gen):
        torch = self.torch
        sched = self.scheduler
        sched.set_timesteps(self.steps, device=self.device)
        n_run = max(1, min(self.steps, int(round(self.steps * self.strength))))
        timesteps = sched.timesteps[self.steps - n_run :]
        noise = torch.randn(latents.shape, generator=gen, dtype=torch.float32).to(self.device, latents.dtype)
        latents = sched.add_noise(latents, noise, timesteps[:1].repeat(latents.shape[0]))
        b = latents.shape[0]
        cond = self.cond.expand(b, -1, -1)
        for t in timesteps:
            if self.uncond is not None:
                inp = torch.cat([latents, latents])
                ctx = torch.cat([self.uncond.expand(b, -1, -1), cond])
                eps_u, eps_c = self.unet(inp, t, encoder_hidden_states=ctx).sample.chunk(2)
                eps = eps_u + self.guidance * (eps_c - eps_u)
            else:
                eps = self.unet(latents, t, encoder_hidden_states=cond).sample
            latents = sched.step(eps, t, latents, eta=0.0).prev_sample
        return latents

    def anomaly_maps(self, images: Sequence[np.ndarray], anatomy: Sequence[np.ndarray]) -> list[np.ndarray]:
        has_anatomy = anatomy is not None and len(anatomy) > 0
        if has_anatomy and len(anatomy) != len(images):
            raise ValueError(f"{len(images)} images but {len(anatomy)} anatomy maps")
        work = _same_size([np.asarray(im, dtype=np.float32) for im in images], self.image_size)
        healthy = self.healthy(work)
        maps = []
        for i, (im, h) in enumerate(zip(work, healthy)):
            lungs = None
            if self.mask_lungs and has_anatomy and anatomy[i] is not None:
                lungs = (np.asarray(anatomy[i]).astype(np.int64) & LUNG_BITS) != 0
                if lungs.shape != im.shape:
                    lungs = None
            maps.append(normalise_anomaly(im - h, self.sigma, self.percentile, lungs))
        return maps


def _same_size(images: list[np.ndarray], size: int | None = None) -> list[np.ndarray]:
    """Images at `size` (or the first image's size) so that a batch stacks."""
    from ils.imageio import resize_square

    if not images:
        return images
    side = size or images[0].shape[0]
    return [im if im.shape == (side, side) else resize_square(im, side) for im in images]


__all__ = ["RadEditAnomaly", "normalise_anomaly", "DEFAULT_PROMPT"]
