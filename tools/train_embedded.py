"""Train the embedded default model and its digits classifier; write them into the package.

    python tools/train_embedded.py                 # both, fixed seed, ~35 min on 2 CPU cores
    python tools/train_embedded.py --only classifier

The DiT is a diffusers DiTTransformer2DModel (adaLN-Zero, class labels with a null class,
labels dropped 10% of the time for classifier-free guidance) trained with the epsilon
objective on all 1,797 digits; the shipped weights are the exponential moving average.
The classifier is trained on the train split only; its held-out accuracy is printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.atomic import atomic_directory, atomic_write_bytes  # noqa: E402
from exporter.models.classifier import DigitsClassifier, shift_augment  # noqa: E402
from exporter.models.digits import load_digit_images, train_held_out_split  # noqa: E402
from exporter.models.embedded import CLASSIFIER_FILE, DIT_CONFIG, EMBEDDED_DIT_DIR, SCHEDULER_CONFIG  # noqa: E402


def train_classifier(seed: int, steps: int, out_file: Path = CLASSIFIER_FILE) -> float:
    torch.manual_seed(seed)
    images, labels = load_digit_images()
    train_idx, held_idx = train_held_out_split(len(images))
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = train_idx[torch.randint(len(train_idx), (128,), generator=gen)]
        x = shift_augment(images[batch], gen)
        loss = F.cross_entropy(model(x), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"classifier step {step:5d}/{steps} loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        acc = (model(images[held_idx]).argmax(1) == labels[held_idx]).float().mean().item()
    print(f"classifier held-out accuracy {acc:.4f} on {len(held_idx)} digits", flush=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save

    atomic_write_bytes(out_file, save(tensors, metadata={"held_out_accuracy": f"{acc:.4f}"}))
    return acc


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_dit(seed: int, steps: int, batch_size: int, peak_lr: float, ema_decay: float,
              out_dir: Path = EMBEDDED_DIT_DIR) -> None:
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    torch.manual_seed(seed)
    images, labels = load_digit_images()
    model = DiTTransformer2DModel(**DIT_CONFIG)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr, warmup=200)
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x0, y = images[idx], labels[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(model(xt, t, y).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        if step % 100 == 0 or step == steps - 1:
            elapsed = time.time() - start
            eta = elapsed / (step + 1) * (steps - step - 1)
            print(f"dit step {step:5d}/{steps} loss {loss.item():.4f} "
                  f"elapsed {elapsed/60:.1f} min eta {eta/60:.1f} min", flush=True)
    with atomic_directory(out_dir) as out:
        ema.save_pretrained(out / "transformer", safe_serialization=True)
        scheduler.save_pretrained(out / "scheduler")
        (out / "training.json").write_text(json.dumps(
            dict(seed=seed, steps=steps, batch_size=batch_size, peak_lr=peak_lr, ema_decay=ema_decay,
                 final_loss=round(loss.item(), 5)), indent=2) + "\n")
    print(f"wrote {out_dir}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["dit", "classifier"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dit-steps", type=int, default=5000)
    parser.add_argument("--classifier-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--out-dir", type=Path, default=EMBEDDED_DIT_DIR.parent,
                        help="folder for embedded_dit/ and the classifier (default: the package's assets)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.only in (None, "classifier"):
        train_classifier(args.seed, args.classifier_steps, args.out_dir / CLASSIFIER_FILE.name)
    if args.only in (None, "dit"):
        train_dit(args.seed, args.dit_steps, args.batch_size, args.lr, args.ema_decay,
                  args.out_dir / EMBEDDED_DIT_DIR.name)


if __name__ == "__main__":
    main()
