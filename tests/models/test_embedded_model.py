"""The shipped model is good enough to judge quantization by: its samples are recognised."""

import torch

from exporter.evaluation.fidelity import DigitsJudge
from exporter.models.embedded import EMBEDDED_SAMPLER
from exporter.models.loading import load_dit
from exporter.models.sampling import balanced_labels, sample, sample_seeds


def test_embedded_model_samples_are_recognised_at_90_percent():
    loaded = load_dit()
    labels = balanced_labels(200, 10)
    samples = sample(loaded.transformer, loaded.scheduler_config, labels, sample_seeds(7, 200), EMBEDDED_SAMPLER,
                     progress=False)
    scores = DigitsJudge().score(samples, labels)
    assert scores["accuracy"] >= 0.9, scores
    assert torch.isfinite(samples).all()
