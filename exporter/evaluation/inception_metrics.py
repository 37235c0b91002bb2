"""Standard FID / sFID / IS / precision / recall for real models (e.g. DiT-XL/2 on ImageNet),
computed with torch-fidelity's Inception-v3. Its weights download on first use, so this needs
network access and the optional extra: pip install 'dit-export[inception]'.

sFID follows the ADM evaluator: the Frechet distance over the first 7 channels of the 17x17
feature map of the first convolution of Inception's Mixed_6d block ("mixed_6/conv").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from exporter.errors import UserError
from exporter.evaluation.fidelity import FeatureStats, frechet_distance

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
SPATIAL_CHANNELS = 7


def require_torch_fidelity(purpose: str = "--metrics inception"):
    try:
        import torch_fidelity
    except ImportError:
        raise UserError(
            f"{purpose} needs torch-fidelity and Inception weights from the internet: "
            "pip install 'dit-export[inception]'"
        ) from None
    return torch_fidelity


class _ImageTensors(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> [N, 3, H, W] uint8."""
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return (images[:, :3].clamp(0, 1) * 255).round().to(torch.uint8)


def load_reference_images(folder: Path) -> torch.Tensor:
    if not folder.is_dir():
        raise UserError(f"reference images folder '{folder}' does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in '{folder}'")
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    if len({a.shape for a in arrays}) != 1:
        raise UserError(f"reference images in '{folder}' differ in size; resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _inception(purpose: str, device: str):
    """torch-fidelity's Inception-v3 (FID's weights) on ``device``, in eval mode."""
    torch_fidelity = require_torch_fidelity(purpose)
    try:
        return torch_fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).to(device).eval()
    except OSError as e:
        raise UserError(f"cannot get Inception weights for {purpose}: {e}") from None


def pool_features(images: torch.Tensor, purpose: str) -> np.ndarray:
    """Inception-v3's 2048 pool features (FID's) of uint8 RGB images [N, 3, H, W]."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = _inception(purpose, device)
    with torch.no_grad():
        return torch.cat([extractor(b.to(device))[0].cpu() for b in images.split(64)]).double().numpy()


def _spatial_features(images: torch.Tensor, cuda: bool) -> np.ndarray:
    device = "cuda" if cuda else "cpu"
    extractor = _inception("--metrics inception", device)
    captured: list[torch.Tensor] = []
    hook = extractor.Mixed_6d.branch1x1.register_forward_hook(
        lambda _m, _i, out: captured.append(out[:, :SPATIAL_CHANNELS].flatten(1).cpu())
    )
    try:
        with torch.no_grad():
            for batch in images.split(64):
                extractor(batch.to(device))
    finally:
        hook.remove()
    return torch.cat(captured).double().numpy()


def inception_metrics(images: torch.Tensor, reference_folder: Path) -> dict[str, float]:
    """images [N, C, H, W] in [0, 1] against a folder of real images."""
    torch_fidelity = require_torch_fidelity()
    cuda = torch.cuda.is_available()
    generated = to_uint8_rgb(images)
    reference = load_reference_images(reference_folder)
    try:
        metrics = torch_fidelity.calculate_metrics(
            input1=_ImageTensors(generated), input2=_ImageTensors(reference),
            cuda=cuda, fid=True, isc=True, prc=True, verbose=False,
        )
        sfid = frechet_distance(FeatureStats.of(_spatial_features(generated, cuda)),
                                FeatureStats.of(_spatial_features(reference, cuda)))
    except OSError as e:
        raise UserError(f"cannot get Inception weights or data for --metrics inception: {e}") from None
    return {
        "fid": float(metrics["frechet_inception_distance"]),
        "sfid": sfid,
        "inception_score": float(metrics["inception_score_mean"]),
        "precision": float(metrics["precision"]),
        "recall": float(metrics["recall"]),
    }
