"""Assemble each kernel's published tree, `build/<variant>/`, from its `torch-ext/` source.

`kernels.get_local_kernel` and the Hub read the published tree; kernel-builder would generate it from the source tree.
Our kernels are pure Python + Triton (a `torch-noarch` build), so assembling it is a copy plus `metadata.json`,
done here mechanically: `python -m memory_zoo.hub_kernels.build` after editing a kernel, and a test checks the
committed tree is what this produces.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tomllib
from pathlib import Path

KERNELS_ROOT = Path(__file__).parent
# Triton is imported lazily by our kernels, so one variant serves every backend that Triton supports.
VARIANT = "torch-universal"


def kernel_dirs(root: Path = KERNELS_ROOT) -> list[Path]:
    """Every kernel repository under ``root`` (a folder with a ``build.toml``)."""
    return sorted(path.parent for path in root.glob("*/build.toml"))


def metadata(kernel_dir: Path) -> dict:
    general = tomllib.loads((kernel_dir / "build.toml").read_text())["general"]
    return {
        "name": general["name"],
        "id": f"_{general['name'].replace('-', '_')}_memory_zoo_v{general['version']}",
        "version": general["version"],
        "license": general["license"],
        "python-depends": [],
        "backend": {"type": general["backends"][0]},
    }


def build_kernel(kernel_dir: Path, output_dir: Path | None = None) -> Path:
    """Write ``build/<variant>/`` (flattened package, compat copy in ``<python_name>/``, ``metadata.json``)."""
    info = metadata(kernel_dir)
    python_name = info["name"].replace("-", "_")
    source = kernel_dir / "torch-ext" / python_name
    variant = (output_dir or kernel_dir / "build") / VARIANT
    if variant.exists():
        shutil.rmtree(variant)
    for target in (variant, variant / python_name):
        target.mkdir(parents=True)
        for module in sorted(source.glob("*.py")):
            shutil.copyfile(module, target / module.name)
    (variant / "metadata.json").write_text(json.dumps(info, indent=2) + "\n")
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kernels", nargs="*", help="kernel folder names (default: all)")
    args = parser.parse_args()
    for kernel_dir in kernel_dirs():
        if not args.kernels or kernel_dir.name in args.kernels:
            print(f"built {build_kernel(kernel_dir)}")


if __name__ == "__main__":
    main()
