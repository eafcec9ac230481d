"""The commands of `memory-zoo`: `convert` research checkpoints, `generate` text, `eval` perplexity, `push` models and
kernels to a Hub.

The `memory-zoo` console script is `memory_zoo_cli.main`, which parses the command line without importing this
package (so `--help` is instant) and then calls [`run`]. `python -m memory_zoo.cli ...` and [`main`] take the same
arguments from the same parser (`memory_zoo_cli.arguments`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from memory_zoo_cli.arguments import build_parser, parse_args
from memory_zoo_cli.progress import Progress

__all__ = ["COMMANDS", "build_parser", "main", "parse_args", "run"]


def _refuse_task_model(model_dir: str, command: str) -> None:
    """`generate` and `eval` need a language model; say so for the models that read embeddings instead."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        return
    from .architectures import BY_MODEL_TYPE

    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type in BY_MODEL_TYPE and BY_MODEL_TYPE[model_type].role == "task":
        raise ValueError(f"{model_dir} is a {model_type} model: it scores candidate embeddings and is not a language "
                         f"model, so `memory-zoo {command}` cannot use it. Load it with AutoModel and call "
                         "model(inputs_embeds=...) (see docs/masked_mixer.md, Retrieval).")


def _check_model_location(model_dir: str) -> None:
    """A model folder that does not exist, named as such (transformers would call it an invalid repository id)."""
    path = Path(model_dir)
    if path.exists() or not model_dir.startswith((".", "/", "~")) and model_dir.count("/") <= 1:
        return  # a folder, or what may be a Hub repository id
    raise ValueError(f"The model folder {path} does not exist: check the path (or give a Hub repository id).")


def _convert(args: argparse.Namespace, progress: Progress) -> str:
    from .conversion import convert

    model = convert(args.source, args.checkpoint, args.output_dir, config=args.config, dtype=args.dtype,
                    tokenizer=args.tokenizer, reference=args.reference, research_commit=args.research_commit,
                    overwrite=args.overwrite, allow_non_finite=args.allow_non_finite, progress=progress.step)
    parameters = sum(p.numel() for p in model.parameters())
    return (f"Converted {args.source} checkpoint {args.checkpoint} -> {args.output_dir} "
            f"({type(model).__name__}, {parameters:,} parameters, {args.dtype}).")


def _token_counter(progress: Progress, new_tokens: int):
    """A transformers streamer that counts the tokens `generate` produces (the first `put` is the prompt)."""
    from transformers.generation import BaseStreamer

    class Counter(BaseStreamer):
        prompt_seen = False

        def put(self, value) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                progress.count(new_tokens, "tokens", "generated")
                return
            progress.advance(value.numel())

        def end(self) -> None:
            pass

    return Counter()


def _generate(args: argparse.Namespace, progress: Progress) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from .conversion.common import load_tokenizer

    # Importing memory_zoo (this module's package) registered every architecture with the Auto classes.
    _check_model_location(args.model_dir)
    _refuse_task_model(args.model_dir, "generate")
    progress.step(f"loading the tokenizer from {args.tokenizer or args.model_dir}")
    tokenizer = load_tokenizer(args.tokenizer or args.model_dir, args.model_dir if args.tokenizer else None,
                               trust_remote_code=args.trust_remote_code)
    progress.step(f"loading the model from {args.model_dir}")
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, trust_remote_code=args.trust_remote_code).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[-1]
    if prompt_length == 0:
        raise ValueError("The prompt is empty (0 tokens): give the text to continue, e.g. "
                         f"`memory-zoo generate {args.model_dir} \"Once upon a time\"`.")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and prompt_length >= context:
        raise ValueError(f"The prompt has {prompt_length} tokens, but this model's context is {context} tokens: "
                         "shorten the prompt.")
    if context is not None and prompt_length + args.max_new_tokens > context:
        raise ValueError(
            f"The prompt has {prompt_length} tokens and --max-new-tokens is {args.max_new_tokens}, but this model's "
            f"context is {context} tokens: shorten the prompt or lower --max-new-tokens to {context - prompt_length}."
        )
    if args.seed is not None:
        torch.manual_seed(args.seed)
    progress.step(f"generating {args.max_new_tokens} tokens" + (f" with {args.num_beams} beams" if args.num_beams > 1
                                                                else ""))
    # Beam search takes no streamer (transformers refuses one): its line shows the time spent instead of a count.
    streamer = _token_counter(progress, args.max_new_tokens) if args.num_beams == 1 else None
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature if args.do_sample else None,
            top_k=args.top_k if args.do_sample else None,
            top_p=args.top_p if args.do_sample else None,
            num_beams=args.num_beams,
            use_cache=not args.no_cache,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            streamer=streamer,
        )
    return tokenizer.decode(output[0], skip_special_tokens=True)


def _eval(args: argparse.Namespace, progress: Progress) -> str:
    from .evaluation import evaluate_dataset, evaluate_file, format_results

    _check_model_location(args.model_dir)
    _refuse_task_model(args.model_dir, "eval")
    options = dict(tokenizer=args.tokenizer, context=args.context, stride=args.stride, batch_size=args.batch_size,
                   trust_remote_code=args.trust_remote_code, device=args.device, progress=progress)
    if args.dataset is not None:
        if not args.verbose:  # `datasets` draws bars of its own while it reads and caches a data file
            import datasets

            datasets.disable_progress_bars()
        results = evaluate_dataset(args.model_dir, args.dataset, split=args.split, column=args.column,
                                   subset=args.subset, **options)
    else:
        results = evaluate_file(args.model_dir, args.text_file, **options)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return format_results(results)


def _hub_call(function, *args, **kwargs):
    """Run a Hub upload; a Hub that cannot be reached becomes an OSError naming the endpoint (reported by main)."""
    from huggingface_hub import constants

    try:  # the HTTP client huggingface_hub uses: httpx2 in recent releases, httpx before
        from httpx2 import TransportError
    except ImportError:
        from httpx import TransportError
    try:
        return function(*args, **kwargs)
    except TransportError as error:
        raise OSError(f"cannot reach the Hub at {constants.ENDPOINT} ({error}); check HF_ENDPOINT and the network.") from error


def _push(args: argparse.Namespace, progress: Progress) -> str:
    from .hub import push_model

    overwrite = True if args.overwrite_card else False if args.keep_card else None
    progress.step(f"publishing {args.model_dir} to {args.repo_id}")
    commit = _hub_call(push_model, args.model_dir, args.repo_id, private=args.private, license=args.license,
                       commit_message=args.commit_message, overwrite_card=overwrite, revision=args.revision)
    return f"Pushed {args.model_dir} -> {args.repo_id} (commit {commit.oid})."


def _push_kernels(args: argparse.Namespace, progress: Progress) -> str:
    from .hub import push_kernels

    progress.step(f"publishing the kernels {', '.join(args.kernels) if args.kernels else '(all)'}")
    pushed = _hub_call(push_kernels, args.kernels, organization=args.organization, private=args.private)
    return "\n".join(f"Pushed kernel {p.name} -> {p.repo_id} (branch {p.branch}, commit {p.commit})." for p in pushed)


# Subcommand -> what runs it: returns the text the command prints once its progress line is gone.
COMMANDS: dict[str, Callable[[argparse.Namespace, Progress], str]] = {
    "convert": _convert,
    "generate": _generate,
    "push": _push,
    "push-kernels": _push_kernels,
    "eval": _eval,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input can cause: refused values, files and configs (strict config validation raises its own
    class). A KeyboardInterrupt, a RuntimeError from inside torch or an AttributeError is not in this list."""
    from huggingface_hub.errors import StrictDataclassError

    return (ValueError, TypeError, OSError, StrictDataclassError)


def __getattr__(name: str):
    # USER_ERRORS stays importable, computed on use so that importing the CLI does not import huggingface_hub.
    if name == "USER_ERRORS":
        return _user_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(args: argparse.Namespace, progress: Progress | None = None) -> int:
    """Run the parsed command `args` (from `memory_zoo_cli.arguments.parse_args`), reporting its progress on
    `progress` (default: a new progress line on stderr); returns the exit status. A user error is one line on stderr
    with status 2; anything else is a bug of ours and keeps its traceback."""
    progress = progress or Progress(f"memory-zoo {args.command}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        output = COMMANDS[args.command](args, progress)
    except Exception as error:
        progress.close(failed=True)  # the line is gone before the error is printed
        if not isinstance(error, _user_errors()):
            raise
        # One line: the problem and its fix.
        message = " ".join(str(error).split())
        if type(error).__name__.startswith("StrictDataclass") and getattr(args, "model_dir", None):
            message = f"{args.model_dir}/config.json is not a valid configuration: {message} Fix the value in that file."
        print(f"memory-zoo {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BaseException:  # KeyboardInterrupt: the line goes, the interruption stays
        progress.close(failed=True)
        raise
    progress.close()
    if output:
        print(output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`memory-zoo` with `argv` (default: the command line), as `python -m memory_zoo.cli`; returns the exit status."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
