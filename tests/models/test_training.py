"""tools/train_embedded.py is reproducible: the same seed gives byte-identical weights."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def train(out: Path, seed: int) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "train_embedded.py"), "--seed", str(seed),
                    "--dit-steps", "3", "--classifier-steps", "3", "--out-dir", str(out)],
                   check=True, capture_output=True, timeout=600)


def weights(out: Path) -> list[bytes]:
    return [(out / "digits_classifier.safetensors").read_bytes(),
            (out / "embedded_dit" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()]


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    train(tmp_path / "a", 0)
    train(tmp_path / "b", 0)
    train(tmp_path / "c", 1)
    assert weights(tmp_path / "a") == weights(tmp_path / "b")
    assert all(x != y for x, y in zip(weights(tmp_path / "a"), weights(tmp_path / "c")))
    from exporter.models.loading import load_dit

    assert load_dit(str(tmp_path / "a" / "embedded_dit")).transformer.config.num_layers == 4
