"""Class-conditional DDIM/DDPM sampling with classifier-free guidance for diffusers DiTs.

Works for models that predict epsilon only (the embedded model) and for models that also
predict a variance (DiT-XL/2: out_channels = 2 x in_channels; the variance half is dropped and
the scheduler's fixed variance is used). Each sample's noise comes from its own seed, so a
sample does not depend on the batch it was drawn in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from exporter.errors import UserError
from exporter.progress import Progress

SAMPLERS = ("ddim", "ddpm")


@dataclass(frozen=True)
class SamplerConfig:
    kind: Literal["ddim", "ddpm"] = "ddim"
    steps: int = 50
    guidance_scale: float = 1.5  # 1.0 disables guidance (and halves the work)

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise UserError(f"unknown sampler '{self.kind}'; valid: {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise UserError(f"sampler steps must be at least 1, got {self.steps}")
        if self.guidance_scale < 1.0:
            raise UserError(f"guidance scale must be >= 1.0, got {self.guidance_scale}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_scheduler(scheduler_config: dict[str, Any], sampler: SamplerConfig):
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if sampler.kind == "ddim" else DDPMScheduler
    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    if sampler.kind == "ddpm":
        config["variance_type"] = "fixed_small"
    scheduler = cls.from_config(config)
    scheduler.set_timesteps(sampler.steps)
    return scheduler


def sampler_timesteps(scheduler_config: dict[str, Any], sampler: SamplerConfig) -> list[int]:
    """The model timesteps the sampler visits, in order (what calibration has to cover)."""
    return [int(t) for t in make_scheduler(scheduler_config, sampler).timesteps]


def epsilon_step_weights(scheduler_config: dict[str, Any], sampler: SamplerConfig, timesteps: list[int],
                         probe: float = 1e-3) -> list[float]:
    """For each timestep, how far one unit of error in the model's epsilon moves the sampler's next
    state: |d x_prev / d eps| of the scheduler's step, measured at x = 0 with a small ``probe``
    (DDPM's added noise is the same in both steps and cancels). About 0.46 at t = 960 and 0.01
    at t = 0 for DDIM with 25 steps on the linear schedule."""
    scheduler = make_scheduler(scheduler_config, sampler)
    weights = []
    for t in timesteps:
        moved = []
        for eps in (torch.zeros(1, 1), torch.full((1, 1), probe)):
            kwargs = {"generator": torch.Generator().manual_seed(0)} if sampler.kind == "ddpm" else {"eta": 0.0}
            moved.append(scheduler.step(eps, t, torch.zeros(1, 1), **kwargs).prev_sample)
        weights.append(float((moved[1] - moved[0]).abs()) / probe)
    return weights


def null_class(transformer) -> int:
    return int(transformer.config.num_embeds_ada_norm)


def guided_epsilon(transformer, x: torch.Tensor, t: int, labels: torch.Tensor, guidance_scale: float,
                   forward: Callable | None = None) -> torch.Tensor:
    """Epsilon at timestep t with classifier-free guidance (one batched forward of cond + uncond)."""
    dtype = next(transformer.parameters()).dtype
    forward = forward or (lambda h, ts, y: transformer(h.to(dtype), ts, y).sample.float())
    channels = x.shape[1]
    if guidance_scale == 1.0:
        return forward(x, torch.full((len(x),), t, dtype=torch.long, device=x.device), labels)[:, :channels]
    both = torch.cat([x, x])
    ys = torch.cat([labels, torch.full_like(labels, null_class(transformer))])
    out = forward(both, torch.full((len(both),), t, dtype=torch.long, device=x.device), ys)[:, :channels]
    cond, uncond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def initial_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def sample(transformer, scheduler_config: dict[str, Any], labels: torch.Tensor, seeds: list[int],
           sampler: SamplerConfig, batch_size: int = 500, progress: bool = True,
           forward: Callable | None = None, on_step: Callable | None = None) -> torch.Tensor:
    """Samples [N, C, H, W] in model space for class ``labels[i]`` from seed ``seeds[i]``.

    ``forward(x, t, y)`` replaces the transformer call (e.g. by a quantized model);
    ``on_step(t, x, labels)`` sees every model input along the trajectory (calibration).
    """
    if len(labels) != len(seeds):
        raise ValueError("one seed per label")
    cfg = transformer.config
    device = next(transformer.parameters()).device
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    n_batches = (len(labels) + batch_size - 1) // batch_size
    bar = Progress("sampling", n_batches * sampler.steps, enabled=progress)
    out = []
    for start in range(0, len(labels), batch_size):
        y = labels[start:start + batch_size].to(device)
        batch_seeds = seeds[start:start + batch_size]
        scheduler = make_scheduler(scheduler_config, sampler)
        x = (initial_noise(shape, batch_seeds) * scheduler.init_noise_sigma).to(device)
        step_generators = [torch.Generator().manual_seed(s + 1_000_003) for s in batch_seeds]
        for t in scheduler.timesteps:
            if on_step is not None:
                on_step(int(t), x, y)
            eps = guided_epsilon(transformer, x, int(t), y, sampler.guidance_scale, forward)
            kwargs = {"generator": step_generators} if sampler.kind == "ddpm" else {"eta": 0.0}
            x = scheduler.step(eps.float(), t, x, **kwargs).prev_sample
            bar.advance()
        out.append(x.cpu())
    return torch.cat(out)


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


def to_images(samples: torch.Tensor, vae_folder=None) -> torch.Tensor:
    """Model-space samples as images in [0, 1]: pixels directly, or latents through the VAE."""
    if vae_folder is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_folder, use_safetensors=True, low_cpu_mem_usage=False).eval()
        with torch.no_grad():
            samples = torch.cat([vae.decode(z[None] / vae.config.scaling_factor).sample for z in samples])
    return ((samples.clamp(-1, 1) + 1) / 2).float()


def sample_seeds(seed: int, n: int) -> list[int]:
    """Sample i of a run with ``seed`` always starts from the same noise, whatever N is."""
    return [seed * 1_000_000 + i for i in range(n)]


def validation_timesteps(manifest: dict, count: int = 6) -> list[int]:
    """``count`` timesteps spread over the deployed sampler's, first and last included."""
    steps = sampler_timesteps(manifest["scheduler_config"], SamplerConfig(**manifest["sampler"]))
    return [steps[i] for i in np.linspace(0, len(steps) - 1, min(len(steps), count)).round().astype(int)]


def validation_step_weights(manifest: dict, timesteps: list[int]) -> list[float]:
    """How much each timestep's epsilon error moves the deployed sampler's next sample."""
    return epsilon_step_weights(manifest["scheduler_config"], SamplerConfig(**manifest["sampler"]), timesteps)
