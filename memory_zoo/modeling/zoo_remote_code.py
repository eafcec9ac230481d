"""Remote code: the flat, self-contained copies of memory-zoo's model files that travel with every saved model.

transformers only follows sibling imports (`from .module import name`) when it copies and loads custom code, so the
package's nested layout is flattened mechanically here (tests/test_remote_code.py checks the copies load and agree).
This file travels with every saved model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# `from .x import y` / `from ..pkg.x import y`: the only imports of our own code a model file may use.
_RELATIVE_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from[ \t]+(?P<dots>\.+)(?P<module>[\w.]*)[ \t]+import\b", re.MULTILINE)


def _resolve_relative(source: Path, dots: str, module: str) -> Path:
    if not module:
        raise ValueError(
            f"{source}: `from {dots} import ...` cannot be exported as remote code (transformers only copies "
            "`from .module import name` siblings); import from the module instead."
        )
    base = source.parent
    for _ in range(len(dots) - 1):
        base = base.parent
    return base.joinpath(*module.split(".")).with_suffix(".py")


def flatten_source(source: Path) -> tuple[str, list[Path]]:
    """Return ``source``'s text with every relative import rewritten to a sibling import, and the files it needs.

    The rewrite is purely mechanical (`from ..configuration.configuration_x import A` becomes
    `from .configuration_x import A`); every other line is kept byte for byte.
    """
    text = source.read_text(encoding="utf-8")
    needed: list[Path] = []

    def rewrite(match: re.Match) -> str:
        target = _resolve_relative(source, match["dots"], match["module"])
        if not target.is_file():
            raise FileNotFoundError(f"{source} imports {match['dots']}{match['module']}, but {target} does not exist.")
        needed.append(target)
        return f"{match['indent']}from .{target.stem} import"

    return _RELATIVE_IMPORT.sub(rewrite, text), needed


def export_remote_code(module_files: list[Path], output_dir: str | os.PathLike) -> list[Path]:
    """Write the flat, self-contained remote-code files for ``module_files`` (and what they import) to ``output_dir``.

    transformers only follows sibling imports when it copies and loads custom code, so the package's nested layout
    (``memory_zoo/configuration``, ``memory_zoo/modeling``, ...) is flattened here. Basenames must be unique.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pending = [Path(f).resolve() for f in module_files]
    written: dict[str, Path] = {}
    while pending:
        source = pending.pop()
        if source.name in written:
            if written[source.name] != source:
                raise ValueError(f"Two remote-code files share the basename {source.name}: {written[source.name]} and {source}.")
            continue
        written[source.name] = source
        text, needed = flatten_source(source)
        destination = output_dir / source.name
        if destination.resolve() != source:
            destination.write_text(text, encoding="utf-8")
        pending.extend(p.resolve() for p in needed)
    return [output_dir / name for name in sorted(written)]


__all__ = ["export_remote_code", "flatten_source"]
