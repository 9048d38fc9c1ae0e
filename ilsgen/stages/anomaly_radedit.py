"""anomaly `radedit`: anomaly map from a diffusion counterfactual "healthy" image (SPEC section 2).

Two editing methods (`options.method`):

- `radedit` (default, RadEdit's own procedure, `ilsgen/stages/radedit_editing.py`): the image is
  encoded with the VAE at `size` (512) and inverted with edit-friendly DDPM inversion (per-step
  noise kept) under `source_prompt` (""); the reverse process then runs again under `prompt`
  ("No acute cardiopulmonary process") with classifier-free guidance `guidance`, changing only
  the edit mask (the lung fields of the anatomy map, dilated by `edit_dilation` px; the whole
  image when the map has no lungs) while the keep mask (everything else) follows the inverted
  trajectory; after decoding, pixels outside the edit mask are the input's. Cost per image:
  steps x (1 + 2) UNet passes (inversion + guided edit).
- `sdedit` (the cheaper earlier method): fresh noise up to `strength` (0.5), plain DDIM steps
  under `prompt` over the whole image (guidance when > 1), no inversion and no masks: unedited
  regions do not come back exactly. Cost: strength x steps x (1 or 2) UNet passes.

Anomaly = |I - I_healthy|, Gaussian smoothed, divided by its high percentile and clipped to
[0, 1], optionally kept to the lungs.

Weights (a local folder or an s3:// URI, `gen.anomaly.weights`), diffusers layout:

    unet/          UNet2DConditionModel (microsoft/radedit)
    vae/           AutoencoderKL (stabilityai/sdxl-vae)
    text_encoder/  a transformers text model + its tokenizer files (BioViL-T in production;
                   any AutoModel works; a separate tokenizer/ folder is used when present)
    scheduler/     DDIMScheduler config: must hold RadEdit's values (linear betas 1e-4..0.02,
                   trailing spacing, steps_offset 1) unless `scheduler_override: true`

Options (`gen.anomaly.options`): method (radedit), steps (50), strength (radedit 1.0, sdedit
0.5), guidance (7.5), prompt, source_prompt (""), negative_prompt (""), edit_dilation (8 px of
the output image), seed (0), size (512), sigma (2.0, smoothing in pixels of the output),
percentile (99.5), mask_lungs (true), dtype (float32 | float16 | bfloat16; GPU only),
trust_remote_code (false; BioViL-T needs true), max_length (128), prompt_attention_mask (false:
the prompt is encoded without an attention mask, as the model card's pipeline does),
scheduler_override (false).
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
DEFAULT_GUIDANCE = 7.5
METHODS = ("radedit", "sdedit")
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
        self.method = str(opts.get("method", "radedit"))
        if self.method not in METHODS:
            raise UserError(f"gen.anomaly.options.method must be one of {METHODS}, got {self.method!r}")
        self.steps = int(opts.get("steps", 50))
        self.strength = float(opts.get("strength", 1.0 if self.method == "radedit" else 0.5))
        self.guidance = float(opts.get("guidance", DEFAULT_GUIDANCE))
        self.prompt = str(opts.get("prompt", DEFAULT_PROMPT))
        self.source_prompt = str(opts.get("source_prompt", ""))
        self.negative_prompt = str(opts.get("negative_prompt", ""))
        self.edit_dilation = int(opts.get("edit_dilation", 8))
        self.prompt_attention_mask = bool(opts.get("prompt_attention_mask", False))
        self.scheduler_override = bool(opts.get("scheduler_override", False))
        self.seed = int(opts.get("seed", 0))
        self.size = int(opts.get("size", 512))
        self.sigma = float(opts.get("sigma", 2.0))
        self.percentile = float(opts.get("percentile", 99.5))
        self.mask_lungs = bool(opts.get("mask_lungs", True))
        self.max_length = int(opts.get("max_length", 128))
        self.batch_size = max(1, int(cfg.batch_size))
        if not 0.0 < self.strength <= 1.0:
            raise UserError(f"gen.anomaly.options.strength must be in (0, 1], got {self.strength}")
        if self.guidance < 1.0:
            raise UserError(f"gen.anomaly.options.guidance must be >= 1 (1: no guidance), got {self.guidance}")
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
        from ilsgen.stages.radedit_editing import check_scheduler

        check_scheduler(self.scheduler.config, self.scheduler_override)
        self.scale = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.vae_channels = int(self.vae.config.in_channels)
        with torch.no_grad():
            self.cond = self._embed(self.prompt)
            self.uncond = self._embed(self.negative_prompt) if self.guidance > 1.0 else None
            self.source = self._embed(self.source_prompt)
        if self.cond.shape[-1] != self.unet.config.cross_attention_dim:
            raise WeightsError(
                f"text encoder width {self.cond.shape[-1]} does not match the UNet's cross_attention_dim "
                f"{self.unet.config.cross_attention_dim}"
            )
        log.info("radedit (%s) loaded on %s (%d steps, strength %.2f, guidance %.1f, size %d)", self.method, self.device,
                 self.steps, self.strength, self.guidance, self.size)

    def _embed(self, text: str):
        tok = self.tokenizer(
            [text], padding="max_length", truncation=True, max_length=min(self.max_length, self.tokenizer.model_max_length or self.max_length),
            return_tensors="pt",
        )
        kwargs = {"input_ids": tok["input_ids"].to(self.device)}
        if self.prompt_attention_mask and "attention_mask" in tok:  # the model card's pipeline passes none
            kwargs["attention_mask"] = tok["attention_mask"].to(self.device)
        out = self.text_encoder(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden.to(self.dtype)

    # -- inference -------------------------------------------------------------------------------
    def healthy(self, images: Sequence[np.ndarray], edit_masks: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """The counterfactual healthy images, (image_size, image_size) float32 in [0, 1].

        `edit_masks` (method radedit): per image a bool (image_size, image_size) mask of the region
        to edit (None: the whole image); outside it the result equals the input.
        """
        torch = self.torch
        import torch.nn.functional as F

        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [np.asarray(im, dtype=np.float32) for im in images[start : start + self.batch_size]]
            for im in chunk:
                if im.ndim != 2:
                    raise ValueError(f"radedit expects 2-D gray images, got shape {im.shape}")
            work = _same_size(chunk, self.image_size)
            x = torch.stack([torch.from_numpy(np.clip(im, 0, 1)) for im in work])[:, None]
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            x = (x * 2 - 1).repeat(1, self.vae_channels, 1, 1).to(self.device, torch.float32)
            gen = torch.Generator(device="cpu").manual_seed(self.seed + start)
            masks = None
            if self.method == "radedit":
                given = list(edit_masks[start : start + len(chunk)]) if edit_masks is not None else [None] * len(chunk)
                masks = np.stack([np.ones((self.image_size,) * 2, bool) if m is None else np.asarray(m, bool) for m in given])
            with torch.no_grad():
                latents = self.vae.encode(x).latent_dist.mean * self.scale
                if masks is None:
                    latents = self._denoise(latents.to(self.dtype), gen)
                else:
                    latents = self._radedit(latents.to(self.dtype), torch.from_numpy(masks), gen)
                dec = self.vae.decode(latents.to(torch.float32) / self.scale).sample
            y = ((dec.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)
            y = F.interpolate(y, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            y = y[:, 0].float().cpu().numpy()
            if masks is not None:  # keep mask, in pixels: outside the edit mask the counterfactual is the input
                y = np.where(masks, y, np.stack([np.clip(im, 0, 1) for im in work]))
            out.extend(y.astype(np.float32))
        return out

    def _unet(self, x, t, context):
        return self.unet(x, t, encoder_hidden_states=context.to(self.dtype)).sample

    def _radedit(self, latents, masks, gen):
        """RadEdit: edit-friendly DDPM inversion, then the guided reverse process inside the edit masks."""
        import torch.nn.functional as F

        from ilsgen.stages.radedit_editing import Schedule, edit, invert

        b = latents.shape[0]
        sched = Schedule.from_scheduler(self.scheduler, self.steps, self.strength)
        # a latent cell is edited when any pixel under it is in the edit mask
        cover = F.interpolate(masks[:, None].float(), size=tuple(latents.shape[-2:]), mode="area")
        keep = (cover <= 0).to(self.device)
        inv = invert(self._unet, sched, latents, self.source.expand(b, -1, -1), gen)
        uncond = self.uncond.expand(b, -1, -1) if self.uncond is not None else None
        return edit(self._unet, sched, inv, keep, self.cond.expand(b, -1, -1), uncond, self.guidance)

    def edit_masks(self, anatomy: Sequence[np.ndarray] | None, n: int) -> list[np.ndarray | None]:
        """Per image the lung fields of its anatomy map dilated by `edit_dilation` px (None: no lungs, edit all)."""
        from scipy.ndimage import binary_dilation

        out: list[np.ndarray | None] = []
        for i in range(n):
            a = anatomy[i] if anatomy is not None and len(anatomy) > i else None
            lungs = None if a is None else (np.asarray(a).astype(np.int64) & LUNG_BITS) != 0
            if lungs is None or lungs.shape != (self.image_size, self.image_size) or not lungs.any():
                out.append(None)
                continue
            if self.edit_dilation > 0:
                r = self.edit_dilation
                yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
                lungs = binary_dilation(lungs, structure=(yy ** 2 + xx ** 2) <= r * r)
            out.append(lungs)
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
        healthy = self.healthy(work, self.edit_masks(anatomy if has_anatomy else None, len(work)))
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


__all__ = ["RadEditAnomaly", "normalise_anomaly", "DEFAULT_PROMPT", "DEFAULT_GUIDANCE", "METHODS"]
