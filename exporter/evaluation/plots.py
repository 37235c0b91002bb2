"""PNG outputs people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from exporter.atomic import atomic_file


def save_sample_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int = 8,
                     scale: int = 4) -> Path:
    """Grid with one column per class and up to ``per_class`` rows; images [N, C, H, W] in [0, 1]."""
    classes = sorted(set(labels.tolist()))
    columns = [images[labels == c][:per_class] for c in classes]
    rows = max(len(col) for col in columns)
    _, c, h, w = images.shape
    pad = 2
    canvas = np.ones((rows * (h + pad) + pad, len(classes) * (w + pad) + pad, 3), dtype=np.float32)
    for j, col in enumerate(columns):
        for i, img in enumerate(col):
            pixels = img.permute(1, 2, 0).numpy()
            if c == 1:
                pixels = np.repeat(pixels, 3, axis=2)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = pixels[:, :, :3]
    picture = Image.fromarray((canvas * 255).round().astype(np.uint8))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_file(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
