"""The `memory-zoo` command: `convert` research checkpoints, `generate` text, `eval` perplexity, `push` models and kernels to a Hub."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _refuse_task_model(model_dir: str, command: str) -> None:
    """`generate` and `eval` need a language model; say so for the models that read embeddings instead."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        return
    import json

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


def _convert(args: argparse.Namespace) -> None:
    from .conversion import convert

    model = convert(args.source, args.checkpoint, args.output_dir, config=args.config, dtype=args.dtype,
                    tokenizer=args.tokenizer, reference=args.reference, research_commit=args.research_commit,
                    overwrite=args.overwrite, allow_non_finite=args.allow_non_finite)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"Converted {args.source} checkpoint {args.checkpoint} -> {args.output_dir} "
          f"({type(model).__name__}, {parameters:,} parameters, {args.dtype}).")


def _generate(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from .conversion.common import load_tokenizer

    # Importing memory_zoo (this module's package) registered every architecture with the Auto classes.
    _check_model_location(args.model_dir)
    _refuse_task_model(args.model_dir, "generate")
    tokenizer = load_tokenizer(args.tokenizer or args.model_dir, args.model_dir if args.tokenizer else None)
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


def _eval(args: argparse.Namespace) -> None:
    import json

    from .evaluation import evaluate_file, format_results

    _check_model_location(args.model_dir)
    _refuse_task_model(args.model_dir, "eval")
    results = evaluate_file(args.model_dir, args.text_file, tokenizer=args.tokenizer, context=args.context,
                            stride=args.stride, batch_size=args.batch_size, trust_remote_code=args.trust_remote_code,
                            device=args.device, progress=args.verbose)
    print(format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


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


def _push(args: argparse.Namespace) -> None:
    from .hub import push_model

    overwrite = True if args.overwrite_card else False if args.keep_card else None
    commit = _hub_call(push_model, args.model_dir, args.repo_id, private=args.private, license=args.license,
                       commit_message=args.commit_message, overwrite_card=overwrite, revision=args.revision)
    print(f"Pushed {args.model_dir} -> {args.repo_id} (commit {commit.oid}).")


def _push_kernels(args: argparse.Namespace) -> None:
    from .hub import push_kernels

    for pushed in _hub_call(push_kernels, args.kernels, organization=args.organization, private=args.private):
        print(f"Pushed kernel {pushed.name} -> {pushed.repo_id} (branch {pushed.branch}, commit {pushed.commit}).")


class _Parser(argparse.ArgumentParser):
    """argparse, reporting a usage error in one line (with where to find the usage) instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from .conversion import DTYPES, SOURCES

    parser = _Parser(prog="memory-zoo", description=__doc__)
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
    convert.add_argument("--reference", metavar="FILE",
                         help="safetensors with `input_ids` (or, for retrieval-mixer, `inputs_embeds`) and the research "
                              "model's `logits` for them: the converted model must match within 1e-5; the "
                              "difference is recorded in conversion.json")
    convert.add_argument("--research-commit", metavar="SHA",
                         help="commit of the research code the checkpoint was trained with (recorded)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace the contents of a non-empty OUTPUT_DIR (by default it is refused)")
    convert.add_argument("--allow-non-finite", action="store_true",
                         help="convert weights holding NaN or infinite values, with a warning (by default refused)")
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

    push = commands.add_parser("push", help="publish a model folder (weights, tokenizer, remote code, model card)")
    push.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained or memory-zoo convert")
    push.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, ORGANISATION/NAME (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--license", help="license of the model card (default: apache-2.0; other for converted "
                                        "research checkpoints, pointing at the research repository)")
    push.add_argument("--commit-message", help="message of the upload commit")
    push.add_argument("--revision", help="branch to push to (default: main)")
    card = push.add_mutually_exclusive_group()
    card.add_argument("--overwrite-card", action="store_true", help="replace an existing README.md, even hand-written")
    card.add_argument("--keep-card", action="store_true", help="never replace an existing README.md (default: "
                                                               "regenerate it only if memory-zoo wrote it)")
    push.set_defaults(func=_push)

    push_kernels = commands.add_parser("push-kernels", help="publish memory-zoo's kernels as Hub kernel repositories")
    push_kernels.add_argument("kernels", nargs="*", metavar="NAME",
                              help="kernels to publish (default: all), e.g. masked_mixing")
    push_kernels.add_argument("--organization", help="organisation to publish to (default: the repo-id of each "
                                                     "kernel's build.toml, memory-zoo/<name>)")
    push_kernels.add_argument("--private", action="store_true", help="create the repositories private")
    push_kernels.set_defaults(func=_push_kernels)

    evaluate = commands.add_parser("eval", help="perplexity of a causal LM (reconstruction metrics of an autoencoder) "
                                                "on a text file")
    evaluate.add_argument("model_dir", metavar="MODEL_DIR")
    evaluate.add_argument("text_file", metavar="TEXT_FILE", help="UTF-8 text, tokenized as one document")
    evaluate.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder, if MODEL_DIR has none")
    evaluate.add_argument("--context", type=int, metavar="N",
                          help="tokens per window (default: the model's context from its config)")
    evaluate.add_argument("--stride", type=int, metavar="N",
                          help="tokens between window starts (default: --context, no overlap); a smaller stride "
                               "scores every token with at least context - stride tokens before it")
    evaluate.add_argument("--batch-size", type=int, default=8, metavar="N", help="windows per forward pass")
    evaluate.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    evaluate.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    evaluate.add_argument("--trust-remote-code", action="store_true",
                          help="allow the folder's own code for architectures memory-zoo does not know")
    evaluate.set_defaults(func=_eval)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        args.func(args)
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        # One line: the problem and its fix. Anything else is a bug of ours and keeps its traceback.
        message = " ".join(str(error).split())
        if type(error).__name__.startswith("StrictDataclass") and getattr(args, "model_dir", None):
            message = f"{args.model_dir}/config.json is not a valid configuration: {message} Fix the value in that file."
        print(f"memory-zoo {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
