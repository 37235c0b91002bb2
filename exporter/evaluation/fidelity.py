"""The fidelity benchmark on digits: an FID-style Frechet distance in the feature space of the
shipped digits classifier, that classifier's accuracy against the requested classes, and a grid.

The distance is measured from generated samples to all 1,797 real digits. Quantized models
are compared with their FP model on the same seeds, as ratios of these distances.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg

from exporter.errors import UserError
from exporter.models.classifier import DigitsClassifier, load_classifier
from exporter.models.digits import IMAGE_SIZE, load_digit_images
from exporter.models.embedded import CLASSIFIER_FILE


@dataclass(frozen=True)
class FeatureStats:
    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> "FeatureStats":
        features = features.astype(np.float64)
        return cls(features.mean(0), np.cov(features, rowvar=False))


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), as in FID."""
    diff = a.mean - b.mean
    covmean = linalg.sqrtm(a.cov @ b.cov)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        eps = 1e-6 * np.eye(len(a.cov))
        covmean = linalg.sqrtm((a.cov + eps) @ (b.cov + eps))
    covmean = covmean.real
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * np.trace(covmean))


class DigitsJudge:
    """Features and predicted classes of digit images, and the real digits' statistics."""

    def __init__(self, classifier: DigitsClassifier | None = None) -> None:
        self.classifier = classifier or load_classifier(CLASSIFIER_FILE)

    @functools.cached_property
    def real_stats(self) -> FeatureStats:
        real, _ = load_digit_images()
        return FeatureStats.of(self.features(real))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        return torch.cat([self.classifier.features(b) for b in images.split(1000)]).numpy()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.classifier(b).argmax(1) for b in images.split(1000)])

    def check_shape(self, samples: torch.Tensor) -> None:
        if tuple(samples.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise UserError(
                f"the digits benchmark needs 1x{IMAGE_SIZE}x{IMAGE_SIZE} samples, the model makes "
                f"{'x'.join(map(str, samples.shape[1:]))}; use --metrics inception for real models"
            )

    def score(self, samples: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Samples in model space ([-1, 1], like the training data)."""
        self.check_shape(samples)
        samples = samples.clamp(-1, 1)
        stats = FeatureStats.of(self.features(samples))
        return {
            "frechet_distance": frechet_distance(stats, self.real_stats),
            "accuracy": float((self.predict(samples) == labels).float().mean()),
        }

    def compare_paired(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """How far samples are from reference samples drawn from the same seeds (e.g. FP's)."""
        mse = ((samples.clamp(-1, 1) - reference.clamp(-1, 1)) / 2).pow(2).mean()
        return {
            "frechet_distance_to_reference": self.distance_between(samples, reference),
            "psnr_to_reference_db": float("inf") if mse == 0 else float(-10 * torch.log10(mse)),
        }

    def distance_between(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return frechet_distance(FeatureStats.of(self.features(a.clamp(-1, 1))),
                                FeatureStats.of(self.features(b.clamp(-1, 1))))
