import numpy as np
import pytest
import torch

from exporter.errors import UserError
from exporter.evaluation.fidelity import DigitsJudge, FeatureStats, frechet_distance
from exporter.models.classifier import load_classifier
from exporter.models.digits import load_digit_images, train_held_out_split
from exporter.models.embedded import CLASSIFIER_FILE


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    cov_a = np.diag([1.0, 4.0, 9.0])
    cov_b = np.diag([4.0, 1.0, 1.0])
    a = FeatureStats(np.zeros(3), cov_a)
    b = FeatureStats(np.array([1.0, 2.0, 0.0]), cov_b)
    expected = 5.0 + sum((np.sqrt(x) - np.sqrt(y)) ** 2 for x, y in [(1, 4), (4, 1), (9, 1)])
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # invariant under a rotation of both
    rotate = lambda s: FeatureStats(q @ s.mean, q @ s.cov @ q.T)  # noqa: E731
    assert frechet_distance(rotate(a), rotate(b)) == pytest.approx(expected, rel=1e-6)


def test_shipped_classifier_scores_at_least_97_percent_on_held_out_digits():
    images, labels = load_digit_images()
    _, held = train_held_out_split(len(images))
    with torch.no_grad():
        predictions = load_classifier(CLASSIFIER_FILE)(images[held]).argmax(1)
    assert (predictions == labels[held]).float().mean() >= 0.97


@pytest.fixture(scope="module")
def judge():
    return DigitsJudge()


def test_real_digits_are_close_to_themselves_and_far_from_noise(judge):
    images, labels = load_digit_images()
    half = judge.score(images[::2], labels[::2])
    noise = judge.score(torch.rand(899, 1, 16, 16) * 2 - 1, labels[::2])
    assert half["accuracy"] > 0.97
    assert half["frechet_distance"] < 0.05 * noise["frechet_distance"]
    assert noise["accuracy"] < 0.3


def test_samples_of_another_shape_are_refused(judge):
    with pytest.raises(UserError, match="digits benchmark needs 1x16x16"):
        judge.score(torch.zeros(4, 4, 32, 32), torch.zeros(4, dtype=torch.long))


def test_paired_comparison_grows_with_the_perturbation(judge):
    images, _ = load_digit_images()
    ref = images[:500]
    gen = torch.Generator().manual_seed(0)
    small = judge.compare_paired(ref + 0.02 * torch.randn(ref.shape, generator=gen), ref)
    large = judge.compare_paired(ref + 0.3 * torch.randn(ref.shape, generator=gen), ref)
    assert judge.compare_paired(ref, ref)["psnr_to_reference_db"] == float("inf")
    assert small["psnr_to_reference_db"] > large["psnr_to_reference_db"] + 15
    assert small["frechet_distance_to_reference"] < large["frechet_distance_to_reference"]
