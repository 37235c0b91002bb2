"""The data the embedded default model is trained on: scikit-learn's 8x8 digits, upsampled.

Images are float32 tensors [N, 1, IMAGE_SIZE, IMAGE_SIZE] in [-1, 1], the range the diffusion
model works in. The split into train and held-out digits is fixed by HELD_OUT_SEED so that the
classifier's held-out accuracy can be reproduced.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NUM_CLASSES = 10
HELD_OUT_FRACTION = 0.2
HELD_OUT_SEED = 0


def load_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ([N, 1, 16, 16] in [-1, 1], labels [N] int64)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0) * 2.0 - 1.0
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels


def train_held_out_split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, held_out) of a fixed random split of n items."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HELD_OUT_SEED))
    n_held_out = int(round(n * HELD_OUT_FRACTION))
    return order[n_held_out:], order[:n_held_out]
