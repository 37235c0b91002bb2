from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run through Triton's interpreter. The mode is fixed when a kernel
# is defined, so it is chosen here, before any test module imports one; code that compiles kernels
# for a GPU target runs in a subprocess without it (tests/kernels/test_kernel_aot.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from exporter.models.loading import load_dit
from exporter.models.sampling import SamplerConfig
from exporter.quant.calibration import collect_calibration_set

TINY_DIT = dict(num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1, num_layers=1,
                sample_size=8, patch_size=2, num_embeds_ada_norm=10)


def save_tiny_dit(folder: Path, seed: int = 0, **overrides) -> Path:
    """A small random diffusers DiT saved as a model folder (config.json + safetensors)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    DiTTransformer2DModel(**{**TINY_DIT, **overrides}).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_pipeline(folder: Path, **overrides) -> Path:
    """The layout of facebook/DiT-XL-2-256: model_index.json, transformer/, scheduler/."""
    from diffusers import DDIMScheduler

    save_tiny_dit(folder / "transformer", **overrides)
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    return folder


@pytest.fixture
def tiny_dit(tmp_path) -> Path:
    return save_tiny_dit(tmp_path / "tiny_dit")


# A sampler short enough for tests, with guidance so that the null class is exercised.
SAMPLER = SamplerConfig(kind="ddim", steps=6, guidance_scale=1.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A loaded two-block DiT pipeline (module-scoped: built once per test file)."""
    return load_dit(str(save_tiny_pipeline(tmp_path_factory.mktemp("m") / "pipe", num_layers=2)))


@pytest.fixture(scope="module")
def calib(tiny):
    """Calibration inputs of 4 trajectories of SAMPLER on ``tiny``."""
    return collect_calibration_set(tiny, SAMPLER, trajectories=4, seed=0, progress=False)
