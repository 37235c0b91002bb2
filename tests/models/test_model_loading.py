import json

import pytest
import torch

from exporter.errors import UserError
from exporter.models.loading import load_dit
from tests.conftest import save_tiny_pipeline


def test_embedded_default_is_a_class_conditional_dit_with_a_null_class():
    loaded = load_dit()
    model = loaded.transformer
    assert type(model).__name__ == "DiTTransformer2DModel"
    assert model.config.norm_type == "ada_norm_zero"
    labels = model.transformer_blocks[0].norm1.emb.class_embedder
    assert labels.embedding_table.num_embeddings == model.config.num_embeds_ada_norm + 1
    assert loaded.is_embedded and not model.training


def test_local_model_folder_round_trips_weights(tiny_dit):
    from diffusers import DiTTransformer2DModel

    original = DiTTransformer2DModel.from_pretrained(tiny_dit)
    loaded = load_dit(str(tiny_dit))
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.transformer.state_dict().items()):
        assert torch.equal(a, b), name


def test_pipeline_folder_uses_its_transformer_and_scheduler(tmp_path):
    folder = save_tiny_pipeline(tmp_path / "pipe")
    loaded = load_dit(str(folder))
    assert loaded.scheduler_config["_class_name"] == "DDIMScheduler"
    assert loaded.vae_folder is None


@pytest.mark.parametrize("architecture", ["UNet2DConditionModel", "PixArtTransformer2DModel"])
def test_unsupported_architecture_is_refused(tiny_dit, architecture):
    config = json.loads((tiny_dit / "config.json").read_text())
    config["_class_name"] = architecture
    (tiny_dit / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"unsupported architecture '{architecture}'"):
        load_dit(str(tiny_dit))


def test_corrupt_config_is_refused(tiny_dit):
    (tiny_dit / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt config"):
        load_dit(str(tiny_dit))


def test_truncated_weights_are_refused(tiny_dit):
    weights = next(tiny_dit.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt model weights"):
        load_dit(str(tiny_dit))


def test_weights_of_another_shape_are_refused(tiny_dit, tmp_path):
    from tests.conftest import save_tiny_dit

    other = save_tiny_dit(tmp_path / "wider", num_attention_heads=4)
    next(tiny_dit.glob("*.safetensors")).write_bytes(next(other.glob("*.safetensors")).read_bytes())
    with pytest.raises(UserError, match="corrupt model weights"):
        load_dit(str(tiny_dit))


def test_pickled_weights_are_never_loaded(tiny_dit):
    weights = next(tiny_dit.glob("*.safetensors"))
    weights.rename(tiny_dit / "diffusion_pytorch_model.bin")
    with pytest.raises(UserError, match="pickled weights are never loaded"):
        load_dit(str(tiny_dit))


def test_missing_path_and_non_model_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dit(str(tmp_path / "nothing-here"))
    with pytest.raises(UserError, match="not a diffusers model folder"):
        load_dit(str(tmp_path))
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="is not a folder"):
        load_dit(str(tmp_path / "file.safetensors"))


def test_hub_id_without_network_fails_with_a_clear_message(monkeypatch):
    # The real hub client runs, in offline mode so that a machine with network downloads nothing.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot fetch 'facebook/DiT-XL-2-256' from the Hugging Face Hub"):
        load_dit("facebook/DiT-XL-2-256")
