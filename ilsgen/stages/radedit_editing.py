"""RadEdit's editing procedure in latent space (Pérez-García et al. 2024), torch only.

1. Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2023): for every inference
   timestep t, x_t is drawn *independently* from q(x_t | x_0); walking the reverse process from
   the largest t down, the residual r_t = x_{t-1} - mu_t(x_t) (= sigma_t z_t, the per-step noise)
   is kept, so that the DDPM reverse step mu_t(x_t) + r_t reproduces x_{t-1} exactly.
2. Editing: the reverse process restarts from the inverted x_T with the same residuals, the UNet
   conditioned on the edit prompt with classifier-free guidance; after every step the keep mask
   puts the inverted trajectory back (x_{t-1} = keep * x_{t-1}^inv + (1 - keep) * x_{t-1}^edit),
   so only the edit mask changes. With keep = 1 everywhere (an empty edit mask) the result is
   x_0 itself; with the inversion's own prompt and guidance 1 it is x_0 to float tolerance.

The scheduler supplies alphas_cumprod and the timesteps; `check_scheduler` holds it to the
values RadEdit was trained with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ilsgen.stages.weights_cache import WeightsError

log = logging.getLogger(__name__)

#: RadEdit's noise schedule (microsoft/radedit); a Stable Diffusion scheduler folder
#: (scaled_linear 0.00085..0.012, leading spacing) would load silently and give wrong maps.
RADEDIT_SCHEDULER: dict[str, Any] = {
    "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "timestep_spacing": "trailing", "steps_offset": 1,
}

#: eps(x_t, t, context) -> predicted noise, one batch.
UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_scheduler(config: Mapping[str, Any], override: bool = False) -> list[str]:
    """Differences of a scheduler config from `RADEDIT_SCHEDULER`; an error unless `override`."""
    diffs = []
    for key, want in RADEDIT_SCHEDULER.items():
        got = config.get(key)
        same = abs(float(got) - float(want)) <= 1e-9 if isinstance(want, float) and got is not None else got == want
        if not same:
            diffs.append(f"{key}={got!r} (RadEdit: {want!r})")
    if diffs and not override:
        raise WeightsError(
            "the radedit scheduler/ config does not match RadEdit's published values: " + ", ".join(diffs)
            + " (a Stable Diffusion scheduler folder?); fix scheduler/scheduler_config.json or set "
              "gen.anomaly.options.scheduler_override: true")
    if diffs:
        log.warning("radedit scheduler differs from RadEdit's values (override set): %s", ", ".join(diffs))
    return diffs


@dataclass
class Schedule:
    """The inference timesteps (descending) and alphas_cumprod of each and of its successor."""

    timesteps: torch.Tensor  # (n,) long
    a_t: torch.Tensor  # (n,) float64
    a_prev: torch.Tensor  # (n,) float64; the last one is the scheduler's final_alpha_cumprod
    prediction_type: str = "epsilon"

    @classmethod
    def from_scheduler(cls, scheduler, steps: int, strength: float = 1.0) -> "Schedule":
        """The last round(strength * steps) of `steps` inference steps of a diffusers DDIM/DDPM scheduler."""
        scheduler.set_timesteps(steps)
        ts = scheduler.timesteps.to(torch.long).cpu()
        n_run = max(1, min(steps, int(round(steps * strength))))
        ts = ts[steps - n_run :]
        ac = scheduler.alphas_cumprod.to(torch.float64).cpu()
        final = torch.as_tensor(float(getattr(scheduler, "final_alpha_cumprod", ac[0])), dtype=torch.float64)
        a_t = ac[ts]
        a_prev = torch.cat([ac[ts[1:]], final[None]])
        return cls(ts, a_t, a_prev, str(scheduler.config.get("prediction_type", "epsilon")))

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def eps_from(self, out: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return out
        if self.prediction_type == "v_prediction":
            a = self.a_t[i]
            return a.sqrt().item() * out + (1 - a).sqrt().item() * x
        raise WeightsError(f"radedit: unsupported scheduler prediction_type {self.prediction_type!r}")

    def mean(self, x: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        """mu_t(x_t) in float64: the DDPM (eta = 1) reverse-step mean from step i's timestep to its successor."""
        a_t, a_p = self.a_t[i].item(), self.a_prev[i].item()
        x, eps = x.double(), eps.double()
        var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        return a_p ** 0.5 * x0 + max(1 - a_p - var, 0.0) ** 0.5 * eps


@dataclass
class Inversion:
    """x_t of every step (xs[i] at timesteps[i]; xs[n] = x_0) and the residuals r_i (float64, so
    that mu + r gives x_{t-1} back to the last bit)."""

    xs: list[torch.Tensor]
    residuals: list[torch.Tensor]


def _cfg(unet: UNetFn, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
         guidance: float) -> torch.Tensor:
    if uncond is None or guidance == 1.0:
        return unet(x, t, cond)
    out = unet(torch.cat([x, x]), t, torch.cat([uncond, cond]))
    e_u, e_c = out.chunk(2)
    return e_u + guidance * (e_c - e_u)


@torch.no_grad()
def invert(unet: UNetFn, sched: Schedule, x0: torch.Tensor, context: torch.Tensor,
           generator: torch.Generator | None = None) -> Inversion:
    """Edit-friendly DDPM inversion of latents `x0` (B, C, h, w) under `context` (the source prompt)."""
    n = len(sched)
    xs = []
    for i in range(n):
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        a = sched.a_t[i].item()
        xs.append(a ** 0.5 * x0 + (1 - a) ** 0.5 * noise)
    xs.append(x0)
    residuals = []
    for i in range(n):
        eps = sched.eps_from(unet(xs[i], sched.timesteps[i], context), xs[i], i)
        residuals.append(xs[i + 1].double() - sched.mean(xs[i], eps, i))
    return Inversion(xs, residuals)


@torch.no_grad()
def edit(unet: UNetFn, sched: Schedule, inv: Inversion, keep: torch.Tensor, cond: torch.Tensor,
         uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """The edited latents: the reverse process from the inverted x_T under `cond` with guidance,
    the keep mask (B, 1, h, w) in [0, 1] holding the inverted trajectory."""
    x = inv.xs[0]
    keep = keep.to(x.dtype)
    for i in range(len(sched)):
        eps = sched.eps_from(_cfg(unet, x, sched.timesteps[i], cond, uncond, guidance), x, i)
        x_new = (sched.mean(x, eps, i) + inv.residuals[i]).to(x.dtype)
        x = keep * inv.xs[i + 1] + (1 - keep) * x_new
    return x
