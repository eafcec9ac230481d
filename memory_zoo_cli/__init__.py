"""The `memory-zoo` console script: parses the command line, then imports memory-zoo only to run a command.

`import memory_zoo` imports torch and transformers and registers every architecture with the Auto classes (3+ s), which
a user asking for `--help` should not wait for. So the entry point lives outside the `memory_zoo` package: its parser
(`memory_zoo_cli.arguments`) and progress line (`memory_zoo_cli.progress`) use the standard library alone, and the
package is imported only once the arguments are valid and a command is about to run. The commands themselves are in
`memory_zoo.cli`, whose `main` (`python -m memory_zoo.cli ...`) takes the same arguments from the same parser.
"""

from __future__ import annotations

from collections.abc import Sequence

from .arguments import build_parser, parse_args
from .progress import Progress

__all__ = ["Progress", "build_parser", "main", "parse_args"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run `memory-zoo` with `argv` (default: the command line); returns the exit status."""
    args = parse_args(argv)  # --help and usage errors end here, before anything heavy is imported
    progress = Progress(f"memory-zoo {args.command}")
    # On a terminal only: in a log, the usual 3 to 5 s of imports are not worth a line.
    progress.step("loading torch, transformers and memory-zoo", logged=False)
    try:
        from memory_zoo.cli import run
    except BaseException:
        progress.close(failed=True)
        raise
    return run(args, progress)
