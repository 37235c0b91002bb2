"""One C++ source file holding every ahead-of-time kernel (aot.py's output folder) for the plugins'
launcher (plugins/kernels/tritonLauncher.cpp), so that nothing at run time needs Python or Triton.

    python -m exporter.kernels.embed --kernels plugins/build/kernels --out plugins/build/tritonKernelImages.cpp

The file defines `dit_export::triton::embeddedKernels()` (plugins/kernels/tritonKernelTable.h): one row
per image,

    variant, family, arch, arch_specific, ptx, symbol, num_warps, shared_bytes, block_m, block_n,
    block_k (the constants BM, BN, BK; 0 where absent), arguments (comma-separated names in order),
    data, size

    cubin   the manifest's entries, arch as built (sm_90 cubins are sm_90a: Triton builds every
            target from 90 on with its arch-specific features, so they load on that exact
            architecture only)
    PTX     `<variant>.ptx`, where the folder has one: the lowest target's PTX, for GPUs that
            have no cubin (JIT-compiled by the driver); arch is its `.target`, and num_warps,
            shared_bytes and the symbol are that target's entry's. Its data ends with a NUL byte
            (the driver reads PTX as a C string), counted in size.

Images are `static const unsigned char[]` in hex, 24 bytes a line. The output depends only on
the folder's contents: the same folder gives a byte-identical file. It is written atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from exporter.atomic import atomic_write_text
from exporter.kernels.aot import MANIFEST

BYTES_PER_LINE = 24
HEADER = "tritonKernelTable.h"
_TARGET = re.compile(r"^\s*\.target\s+sm_(\d+)(a?)\b", re.MULTILINE)
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
_VERSION = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class Image:
    variant: str
    family: str
    arch: int
    arch_specific: bool
    ptx: bool
    symbol: str
    num_warps: int
    shared_bytes: int
    block_m: int
    block_n: int
    block_k: int
    arguments: tuple[str, ...]
    file: str
    data: bytes


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not a plain identifier ([A-Za-z0-9_.])")
    return value


def read_images(kernels: Path) -> list[Image]:
    """The images of an AOT folder: its manifest's cubins in manifest order, then each variant's PTX
    (in the order the variants first appear)."""
    manifest_path = kernels / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run python -m exporter.kernels.aot --out {kernels}")
    manifest = json.loads(manifest_path.read_text())
    images: list[Image] = []
    by_variant: dict[str, dict[int, dict]] = {}
    for entry in manifest["kernels"]:
        variant = _name(entry["variant"], "variant")
        arch = int(entry["arch"])
        if arch in by_variant.setdefault(variant, {}):
            raise ValueError(f"{variant} has two entries for sm_{arch}")
        by_variant[variant][arch] = entry
        data = (kernels / entry["cubin"]).read_bytes()
        if data[:4] != b"\x7fELF":
            raise ValueError(f"{entry['cubin']} is not a cubin (ELF)")
        images.append(_image(entry, arch, arch >= 90, False, entry["cubin"], data))
    for variant, entries in by_variant.items():
        ptx_file = kernels / f"{variant}.ptx"
        if not ptx_file.is_file():
            continue
        text = ptx_file.read_text()
        target = _TARGET.search(text)
        if target is None:
            raise ValueError(f"{ptx_file.name} has no .target line")
        arch = int(target.group(1))
        if arch not in entries:
            raise ValueError(f"{ptx_file.name} targets sm_{arch}, which has no manifest entry to take its launch "
                             "shape from")
        images.append(_image(entries[arch], arch, bool(target.group(2)), True, ptx_file.name,
                             text.encode("ascii") + b"\0"))
    return images


def _image(entry: dict, arch: int, arch_specific: bool, ptx: bool, file: str, data: bytes) -> Image:
    constants = entry.get("constants", {})
    return Image(variant=entry["variant"], family=_name(entry["family"], "family"), arch=arch,
                 arch_specific=arch_specific, ptx=ptx, symbol=_name(entry["symbol"], "symbol"),
                 num_warps=int(entry["num_warps"]), shared_bytes=int(entry["shared_bytes"]),
                 block_m=int(constants.get("BM", 0)), block_n=int(constants.get("BN", 0)),
                 block_k=int(constants.get("BK", 0)),
                 arguments=tuple(_name(a, "argument") for a in entry["arguments"]), file=file, data=data)


def _hex_lines(data: bytes) -> str:
    return ",\n".join(",".join(f"0x{b:02x}" for b in data[i:i + BYTES_PER_LINE])
                     for i in range(0, len(data), BYTES_PER_LINE))


def render(images: list[Image], triton_version: str, large_tiles_above: int) -> str:
    """The C++ source of these images."""
    if not _VERSION.match(triton_version):
        raise ValueError(f"Triton version {triton_version!r} is not a plain version string")
    out = ["// Generated by `python -m exporter.kernels.embed` from an ahead-of-time kernel folder built with",
           f"// Triton {triton_version}: {len(images)} images. Do not edit.",
           f'#include "{HEADER}"', ""]
    for i, image in enumerate(images):
        out += [f"// {image.file}: {len(image.data)} bytes",
                f"alignas(64) static const unsigned char kImage{i}[] = {{", _hex_lines(image.data), "};", ""]
    out += ["static const dit_export::triton::KernelImage kImages[] = {"]
    for i, image in enumerate(images):
        out.append(f'    {{"{image.variant}", "{image.family}", {image.arch}, {str(image.arch_specific).lower()}, '
                   f'{str(image.ptx).lower()}, "{image.symbol}", {image.num_warps}, {image.shared_bytes}, '
                   f'{image.block_m}, {image.block_n}, {image.block_k}, "{",".join(image.arguments)}", kImage{i}, '
                   f'sizeof(kImage{i})}},')
    out += ["};", "",
            "dit_export::triton::KernelTable dit_export::triton::embeddedKernels()", "{",
            f'    return KernelTable{{kImages, sizeof(kImages) / sizeof(kImages[0]), "{triton_version}", '
            f'{int(large_tiles_above)}}};', "}", ""]
    return "\n".join(out)


def embed(kernels: Path, out: Path) -> list[Image]:
    images = read_images(kernels)
    if not images:
        raise ValueError(f"{kernels / MANIFEST} lists no kernels")
    manifest = json.loads((kernels / MANIFEST).read_text())
    atomic_write_text(out, render(images, manifest.get("triton", "unknown"), manifest["large_tiles_above"]))
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=Path, required=True, help="aot.py's output folder")
    parser.add_argument("--out", type=Path, required=True, help="the C++ file to write")
    args = parser.parse_args(argv)
    images = embed(args.kernels, args.out)
    print(f"{args.out}: {len(images)} images, {sum(len(i.data) for i in images)} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
