"""Assemble a kernel's published tree, `build/<variant>/`, from its `torch-ext/` source.

`kernels.get_local_kernel` and the Hub read the published tree; kernel-builder would generate it from the source tree.
Our kernels are pure Python + Triton (a `torch-noarch` build), so assembling it is a copy plus `metadata.json`. The
tree is not committed (each kernel exists once on disk, in `torch-ext/`): the loader assembles it into a temporary
folder when a model first asks for the kernel, `memory-zoo push-kernels` when it publishes, and
`python -m memory_zoo.hub_kernels.build OUTPUT_DIR` writes it for a look.
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


def build_kernel(kernel_dir: Path, output_dir: Path) -> Path:
    """Write ``output_dir/<variant>/``: the source package's modules (flattened, the layout every `kernels` release
    since 0.12 reads first) and ``metadata.json``. Returns the variant folder."""
    info = metadata(kernel_dir)
    source = kernel_dir / "torch-ext" / info["name"].replace("-", "_")
    variant = Path(output_dir) / VARIANT
    if variant.exists():
        shutil.rmtree(variant)
    variant.mkdir(parents=True)
    for module in sorted(source.glob("*.py")):
        shutil.copyfile(module, variant / module.name)
    (variant / "metadata.json").write_text(json.dumps(info, indent=2) + "\n")
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output_dir", type=Path, help="where to write <kernel>/build/<variant>/ for each kernel")
    parser.add_argument("kernels", nargs="*", help="kernel folder names (default: all)")
    args = parser.parse_args()
    for kernel_dir in kernel_dirs():
        if not args.kernels or kernel_dir.name in args.kernels:
            print(f"built {build_kernel(kernel_dir, args.output_dir / kernel_dir.name / 'build')}")


if __name__ == "__main__":
    main()
