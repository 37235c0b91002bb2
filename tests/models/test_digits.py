import torch

from exporter.models.digits import IMAGE_SIZE, load_digit_images, train_held_out_split


def test_digit_images_are_upsampled_in_model_range():
    images, labels = load_digit_images()
    assert images.shape == (1797, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))


def test_held_out_split_is_fixed_and_disjoint():
    train, held = train_held_out_split(1797)
    train2, held2 = train_held_out_split(1797)
    assert torch.equal(train, train2) and torch.equal(held, held2)
    assert len(set(train.tolist()) & set(held.tolist())) == 0
    assert len(train) + len(held) == 1797 and len(held) == 359
