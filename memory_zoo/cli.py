"""The `memory-zoo` command: `convert` research checkpoints, `generate` text from a model folder."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _convert(args: argparse.Namespace) -> None:
    from .conversion import convert

    model = convert(args.source, args.checkpoint, args.output_dir, config=args.config, dtype=args.dtype,
                    tokenizer=args.tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"Converted {args.source} checkpoint {args.checkpoint} -> {args.output_dir} "
          f"({type(model).__name__}, {parameters:,} parameters, {args.dtype}).")


def _generate(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Importing memory_zoo (this module's package) registered every architecture with the Auto classes.

    source = Path(args.tokenizer or args.model_dir)
    if source.is_dir() and not any((source / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(
            f"{source} has no tokenizer ({' or '.join(_TOKENIZER_FILES)}). Converted research checkpoints carry "
            "none: pass --tokenizer DIR, or convert with --tokenizer."
        )
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, trust_remote_code=args.trust_remote_code).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[-1]
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and prompt_length + args.max_new_tokens > context:
        raise ValueError(
            f"The prompt has {prompt_length} tokens and --max-new-tokens is {args.max_new_tokens}, but this model's "
            f"context is {context} tokens: shorten the prompt or lower --max-new-tokens to {context - prompt_length}."
        )
    if args.seed is not None:
        torch.manual_seed(args.seed)
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
        )
    print(tokenizer.decode(output[0], skip_special_tokens=True))


def build_parser() -> argparse.ArgumentParser:
    from .conversion import DTYPES, SOURCES

    parser = argparse.ArgumentParser(prog="memory-zoo", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log conversion notes and library messages")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a research checkpoint into a Hub-format model folder")
    convert.add_argument("source", choices=sorted(SOURCES), metavar="SOURCE",
                         help=f"research code the checkpoint came from: {', '.join(sorted(SOURCES))}")
    convert.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder or weights file")
    convert.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder to write the converted model to")
    convert.add_argument("--config", metavar="FILE",
                         help="JSON object of the research code's hyperparameters under its own names "
                              "(constructor arguments and module globals such as tokenized_length); "
                              "checked against the tensor shapes")
    convert.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    convert.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder to save with the model")
    convert.set_defaults(func=_convert)

    generate = commands.add_parser("generate", help="generate text from a model folder")
    generate.add_argument("model_dir", metavar="MODEL_DIR")
    generate.add_argument("prompt", metavar="PROMPT")
    generate.add_argument("--max-new-tokens", type=int, default=50)
    generate.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam decoding")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=50)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--num-beams", type=int, default=1)
    generate.add_argument("--seed", type=int, help="random seed for sampling")
    generate.add_argument("--no-cache", action="store_true", help="re-run the whole sequence for every token")
    generate.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder, if MODEL_DIR has none")
    generate.add_argument("--trust-remote-code", action="store_true",
                          help="allow the folder's own code for architectures memory-zoo does not know")
    generate.set_defaults(func=_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        args.func(args)
    except (ValueError, TypeError, OSError) as error:
        print(f"memory-zoo {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
