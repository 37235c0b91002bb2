"""The embedded default model: a small class-conditional DiT trained on upsampled digits.

It ships inside the package as a diffusers pipeline-style folder (``transformer/`` and
``scheduler/``, the layout of facebook/DiT-XL-2-256), beside the digits classifier that the
fidelity benchmark uses as its feature extractor. ``tools/train_embedded.py`` writes all of it.
"""

from __future__ import annotations

from pathlib import Path

from exporter.models.digits import IMAGE_SIZE, NUM_CLASSES
from exporter.models.sampling import SamplerConfig

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_DIT_DIR = ASSETS / "embedded_dit"
CLASSIFIER_FILE = ASSETS / "digits_classifier.safetensors"

# diffusers DiTTransformer2DModel arguments; num_embeds_ada_norm = NUM_CLASSES gives labels
# 0..9 and the null class NUM_CLASSES used for classifier-free guidance.
DIT_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=1,
    out_channels=1,
    num_layers=4,
    sample_size=IMAGE_SIZE,
    patch_size=2,
    num_embeds_ada_norm=NUM_CLASSES,
    norm_type="ada_norm_zero",
)

# DiT's own training schedule (linear betas over 1,000 steps).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=0.0001,
    beta_end=0.02,
)

# The sampler the embedded model is deployed with (and calibrated for); tuned on its accuracy.
EMBEDDED_SAMPLER = SamplerConfig(kind="ddim", steps=25, guidance_scale=1.25)
