"""The feature space in which a quantized model's samples are compared with its FP model's
samples from the same seeds, without real images: the shipped digits classifier's features for
1x16x16 pixel-space digits (the embedded model), Inception-v3's pool features for other models
(through their VAE; needs torch-fidelity)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from exporter.models.digits import IMAGE_SIZE
from exporter.models.loading import LoadedDiT
from exporter.models.sampling import to_images

Features = Callable[[torch.Tensor], np.ndarray]  # model-space samples [N, C, H, W] -> [N, D]


def sample_features(loaded: LoadedDiT, purpose: str) -> Features:
    """``purpose`` names the feature's user in the error when Inception's features are unavailable."""
    config = loaded.transformer.config
    if loaded.vae_folder is None and (config.in_channels, config.sample_size) == (1, IMAGE_SIZE):
        from exporter.evaluation.fidelity import DigitsJudge

        judge = DigitsJudge()
        return lambda samples: judge.features(samples.clamp(-1, 1))
    from exporter.evaluation.inception_metrics import pool_features, require_torch_fidelity, to_uint8_rgb

    require_torch_fidelity(purpose)
    return lambda samples: pool_features(to_uint8_rgb(to_images(samples, loaded.vae_folder)), purpose)
