"""How well the group-size search's objective ranks configurations the way the FID-style distance
does: for the searched configuration, the uniform settings and random configurations within the
budget, the objective (Fréchet distance of 64 paired samples on the search's own seeds, and of
128 for the finalists' score) next to the Fréchet distance of N samples on the evaluation seeds
to the FP model's samples, and their Spearman rank correlations. Also times one full search at
the default cost.

    python tools/search_agreement.py                    # 12 configurations, 200 samples each
    python tools/search_agreement.py -k 8 -n 100        # quicker look
    python tools/search_agreement.py -k 8 -n 1000       # the issue's sample count (about 40 min)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.evaluation.fidelity import DigitsJudge  # noqa: E402
from exporter.models.loading import (  # noqa: E402
    LoadedDiT,
    default_sampler,  # noqa: E402
    load_dit,
)
from exporter.quant.calibration import collect_calibration_set  # noqa: E402
from exporter.quant.methods.qdit_group_search import (  # noqa: E402
    CANDIDATES,
    GroupSearch,
    SearchOptions,
    choices,
    evolve,
    mean_group,
)
from exporter.quant.quantize import quantize_model  # noqa: E402
from exporter.quant.recipes import get_recipe  # noqa: E402
from exporter.stages.evaluate import evaluate  # noqa: E402


def random_config(search: GroupSearch, rng: random.Random) -> dict:
    while True:
        config = {n: (rng.choice(choices(w)), rng.choice(choices(w))) for n, w in search.widths.items()}
        if search.feasible(config):
            return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--configs", type=int, default=12)
    parser.add_argument("-n", "--samples", type=int, default=200)
    parser.add_argument("--budget", type=float, default=64.0)
    parser.add_argument("--trajectories", type=int, default=32)
    args = parser.parse_args()

    loaded = load_dit()
    sampler = default_sampler(loaded)
    recipe = get_recipe("w4a8-g32")  # the recipe these results were measured with (float group scales)
    calib = collect_calibration_set(loaded, sampler, args.trajectories, 0, progress=False)
    options = SearchOptions(budget=args.budget)
    started = time.monotonic()
    search = GroupSearch(loaded, recipe, calib, sampler, options)
    result = evolve(search)
    search_seconds = time.monotonic() - started

    rng = random.Random(0)
    configs = [("searched", result.config)]
    configs += [(f"uniform {g}", search.uniform(g)) for g in CANDIDATES if search.feasible(search.uniform(g))]
    unique: dict[str, tuple[str, dict]] = {}
    for label, config in configs:  # the first label of a configuration stays (uniform 192 may be uniform 128)
        unique.setdefault(json.dumps(config, sort_keys=True), (label, config))
    configs = list(unique.values())
    while len(configs) < args.configs:
        configs.append((f"random {len(configs)}", random_config(search, rng)))

    work = Path(tempfile.mkdtemp(prefix="search-agreement-"))
    fp = evaluate(loaded, work, args.samples, 0, sampler, noise_floor=False, label="fp")
    judge = DigitsJudge()
    fp_samples = load_file(str(work / fp["samples_file"]))["samples"][: options.samples]
    rows = []
    for label, config in configs:
        objective, final = search.objective(config), search.final_objective(config)
        groups = tuple((n, w, a) for n, (w, a) in config.items())
        qdit = quantize_model(loaded.transformer, replace(recipe, layer_groups=groups), calib,
                              int(loaded.scheduler_config.get("num_train_timesteps", 1000)), progress=False)
        quantized = LoadedDiT(qdit.transformer, loaded.scheduler_config, label, loaded.folder, loaded.vae_folder)
        q = evaluate(quantized, work, args.samples, 0, sampler, noise_floor=False, label=label.replace(" ", "_"),
                     reference_samples=work / fp["samples_file"])
        rows.append({"config": label, "objective": objective, "final_objective": final,
                     "mean_group": mean_group(config),
                     "distance_to_fp": q["frechet_distance_to_reference"], "psnr_db": q["psnr_to_reference_db"],
                     "distance_ratio": q["frechet_distance"] / fp["frechet_distance"],
                     # the same distance on the first samples of the evaluation seeds: how well that
                     # many paired samples could rank if they were the evaluation's own
                     "distance_to_fp_first_samples": judge.distance_between(
                         load_file(str(work / q["samples_file"]))["samples"][: options.samples], fp_samples)})
        print(rows[-1], flush=True)
    rho, p = spearmanr([r["objective"] for r in rows], [r["distance_to_fp"] for r in rows])
    print(f"Spearman rank correlation, objective ({options.samples} samples) vs Fréchet distance to FP samples "
          f"({args.samples} evaluation samples, {len(rows)} configurations): {rho:.3f} (p = {p:.3g})")
    rho_final, p_final = spearmanr([r["final_objective"] for r in rows], [r["distance_to_fp"] for r in rows])
    print(f"the same for the finalists' objective ({2 * options.samples} samples): {rho_final:.3f} "
          f"(p = {p_final:.3g})")
    rho_first, _ = spearmanr([r["distance_to_fp_first_samples"] for r in rows], [r["distance_to_fp"] for r in rows])
    print(f"the distance on the first {options.samples} evaluation samples vs on all {args.samples}: "
          f"{rho_first:.3f} (the objective's seeds are the search's own)")
    rho_psnr, p_psnr = spearmanr([r["objective"] for r in rows], [-r["psnr_db"] for r in rows])
    print(f"Spearman rank correlation, objective vs PSNR loss against the FP samples: {rho_psnr:.3f} "
          f"(p = {p_psnr:.3g})")
    print(f"one search at the default cost (budget {args.budget:g}, {options.epochs} epochs, population "
          f"{options.population}): {search_seconds:.0f} s, {result.evaluations} evaluations")
    summary = {"rows": rows, "spearman": rho, "p": p, "spearman_final": rho_final, "p_final": p_final,
               "spearman_first_samples": rho_first,
               "spearman_psnr": rho_psnr, "search_seconds": search_seconds, "evaluations": result.evaluations}
    (work / "search_agreement.json").write_text(json.dumps(summary, indent=2))
    print(f"details: {work}")


if __name__ == "__main__":
    main()
