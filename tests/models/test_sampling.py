import pytest
import torch

from exporter.errors import UserError
from exporter.models.loading import load_dit
from exporter.models.sampling import SamplerConfig, balanced_labels, guided_epsilon, sample, sampler_timesteps
from tests.conftest import save_tiny_pipeline

DDIM_4 = SamplerConfig(kind="ddim", steps=4, guidance_scale=2.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_dit(str(save_tiny_pipeline(tmp_path_factory.mktemp("m") / "pipe")))


def test_a_sample_does_not_depend_on_its_batch(tiny):
    labels = balanced_labels(6, 10)
    seeds = [11, 12, 13, 14, 15, 16]
    for kind in ("ddim", "ddpm"):
        config = SamplerConfig(kind=kind, steps=4, guidance_scale=2.0)
        whole = sample(tiny.transformer, tiny.scheduler_config, labels, seeds, config, batch_size=6, progress=False)
        split = sample(tiny.transformer, tiny.scheduler_config, labels, seeds, config, batch_size=4, progress=False)
        torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-5)
        again = sample(tiny.transformer, tiny.scheduler_config, labels[:1], seeds[:1], config, progress=False)
        torch.testing.assert_close(again[0], whole[0], rtol=1e-5, atol=1e-5)


def test_guidance_combines_conditional_and_null_class(tiny):
    model = tiny.transformer
    x = torch.randn(3, 1, 8, 8)
    y = torch.tensor([1, 2, 3])
    t = 500
    ts = torch.full((3,), t)
    cond = model(x, ts, y).sample
    uncond = model(x, ts, torch.full_like(y, 10)).sample
    torch.testing.assert_close(guided_epsilon(model, x, t, y, 1.0), cond)
    torch.testing.assert_close(guided_epsilon(model, x, t, y, 3.0), uncond + 3.0 * (cond - uncond),
                               rtol=1e-4, atol=1e-5)


def test_learned_sigma_models_use_the_epsilon_half(tmp_path):
    loaded = load_dit(str(save_tiny_pipeline(tmp_path / "p", in_channels=4, out_channels=8, num_embeds_ada_norm=1000)))
    out = sample(loaded.transformer, loaded.scheduler_config, torch.tensor([3, 999]), [0, 1], DDIM_4, progress=False)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_sampler_visits_the_configured_timesteps(tiny):
    steps = sampler_timesteps(tiny.scheduler_config, SamplerConfig(steps=25))
    assert len(steps) == 25 and steps == sorted(steps, reverse=True) and 0 <= steps[-1] < steps[0] < 1000
    seen = []
    sample(tiny.transformer, tiny.scheduler_config, torch.tensor([1]), [0], SamplerConfig(steps=25),
           progress=False, on_step=lambda t, x, y: seen.append(t))
    assert seen == steps


@pytest.mark.parametrize("bad", [dict(kind="euler"), dict(steps=0), dict(guidance_scale=0.5)])
def test_bad_sampler_settings_are_user_errors(bad):
    with pytest.raises(UserError):
        SamplerConfig(**bad)


@pytest.mark.slow
def test_dit_xl_2_geometry_samples(tmp_path):
    """DiT-XL/2's shapes (28 blocks, hidden 1152, 4x32x32 latents, learned sigma), random weights."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                  num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000).eval()
    schedule = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    out = sample(model, schedule, torch.tensor([207]), [0], SamplerConfig(steps=2, guidance_scale=4.0),
                 progress=False)
    assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()
