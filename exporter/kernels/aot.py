"""Ahead-of-time build of every kernel variant (variants.py): a cubin per variant and GPU target,
the sm_80 PTX as the forward-compatible fallback for newer GPUs, and a manifest the plugins'
launcher reads (kernel symbol, launch shape, shared memory, arguments). Needs no GPU.

    python -m exporter.kernels.aot --out plugins/build/kernels [--arch 80 89 90]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exporter.atomic import atomic_directory
from exporter.kernels.tiles import LARGE_TILES_ABOVE

MANIFEST = "kernels.json"


def build(out: Path, archs: tuple[int, ...]) -> dict:
    from exporter.kernels.variants import VARIANTS

    entries = []
    with atomic_directory(out) as tmp:
        for variant in VARIANTS:
            for arch in (a for a in archs if a in variant.archs):
                compiled = variant.compile(arch)
                stem = f"{variant.name}.sm{arch}"
                (tmp / f"{stem}.cubin").write_bytes(compiled.asm["cubin"])
                if arch == min(variant.archs):
                    (tmp / f"{variant.name}.ptx").write_text(compiled.asm["ptx"])
                entries.append({"variant": variant.name, "family": variant.family, "arch": arch,
                                "cubin": f"{stem}.cubin", "symbol": compiled.metadata.name,
                                "num_warps": compiled.metadata.num_warps, "shared_bytes": compiled.metadata.shared,
                                "arguments": list(variant.signature), "constants": variant.constants})
                print(f"{stem}: {compiled.metadata.shared} bytes of shared memory", flush=True)
        manifest = {"triton": __import__("triton").__version__, "large_tiles_above": LARGE_TILES_ABOVE,
                    "kernels": entries}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 89, 90])
    args = parser.parse_args(argv)
    build(args.out, tuple(args.arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
