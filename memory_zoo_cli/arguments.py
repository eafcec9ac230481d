"""The arguments of the `memory-zoo` command: its argparse parser, built from the standard library alone.

`memory-zoo --help` and `memory-zoo SUBCOMMAND --help` are answered from this parser before torch, transformers or any
model is imported, which is why the choices below are written out here instead of read from the records (a test,
tests/test_layers.py, checks they are exactly the records' converter sources and `memory_zoo.conversion.DTYPES`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

DESCRIPTION = ("The `memory-zoo` command: `convert` research checkpoints, `generate` text, `eval` perplexity, `push` "
               "models and kernels to a Hub.")

# `memory-zoo convert SOURCE`: the research code a checkpoint came from (the records' `sources`).
SOURCES = ("autoencoding-mixer", "autoencoding-transformer", "lswt", "masked-mixer", "memory-layers", "memory-mixer",
           "memory-mosaics", "multiconv-mixer", "multiheaded-mixer", "retrieval-mixer", "variable-memory-mixer",
           "variable-memory-transformer")
# `memory-zoo convert --dtype`: the dtypes a converted model can be saved in (`memory_zoo.conversion.DTYPES`).
DTYPES = ("bfloat16", "float16", "float32")


class Parser(argparse.ArgumentParser):
    """argparse, reporting a usage error in one line (with where to find the usage) instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line (default: sys.argv); a usage error, including a combination of arguments that does not
    go together, ends the process with status 2 here, before anything is imported."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "eval":
        usage = parser.commands["eval"]
        if args.text_file is None and args.dataset is None:
            usage.error("give the text to score: TEXT_FILE or --dataset PATH_OR_NAME")
        if args.text_file is not None and args.dataset is not None:
            usage.error("give TEXT_FILE or --dataset PATH_OR_NAME, not both")
        if args.dataset is None and (args.split is not None or args.subset is not None or args.column != "text"):
            usage.error("--subset, --split and --column choose the texts of a --dataset; a TEXT_FILE is scored whole")
    return args


def build_parser() -> argparse.ArgumentParser:
    """The parser of `memory-zoo`; `args.command` names the subcommand to run."""
    parser = Parser(prog="memory-zoo", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log conversion notes and library messages")
    commands = parser.add_subparsers(dest="command", required=True)
    parser.commands = commands.choices  # subcommand -> its parser (parse_args reports its usage errors with it)

    convert = commands.add_parser("convert", help="convert a research checkpoint into a Hub-format model folder")
    convert.add_argument("source", choices=SOURCES, metavar="SOURCE",
                         help=f"research code the checkpoint came from: {', '.join(SOURCES)}")
    convert.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder or weights file")
    convert.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder to write the converted model to")
    convert.add_argument("--config", metavar="FILE",
                         help="JSON object of the research code's hyperparameters under its own names "
                              "(constructor arguments and module globals such as tokenized_length); "
                              "checked against the tensor shapes")
    convert.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the saved weights")
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

    push_kernels = commands.add_parser("push-kernels", help="publish memory-zoo's kernels as Hub kernel repositories")
    push_kernels.add_argument("kernels", nargs="*", metavar="NAME",
                              help="kernels to publish (default: all), e.g. masked_mixing")
    push_kernels.add_argument("--organization", help="organisation to publish to (default: the repo-id of each "
                                                     "kernel's build.toml, memory-zoo/<name>)")
    push_kernels.add_argument("--private", action="store_true", help="create the repositories private")

    evaluate = commands.add_parser("eval", help="perplexity of a causal LM (reconstruction metrics of an autoencoder) "
                                                "on a text file or a `datasets` dataset")
    evaluate.add_argument("model_dir", metavar="MODEL_DIR")
    evaluate.add_argument("text_file", metavar="TEXT_FILE", nargs="?",
                          help="UTF-8 text, tokenized as one document (or give --dataset instead)")
    evaluate.add_argument("--dataset", metavar="PATH_OR_NAME",
                          help="a `datasets` dataset instead of TEXT_FILE: a folder written by save_to_disk, a data "
                               "file (.jsonl, .json, .csv, .parquet, .txt, .arrow) or folder of them, or a dataset "
                               "name for datasets.load_dataset; every row is scored as a document of its own")
    evaluate.add_argument("--subset", metavar="NAME",
                          help="configuration of --dataset, for datasets that have several (e.g. wikitext-2-raw-v1)")
    evaluate.add_argument("--split", metavar="SPLIT",
                          help="split of --dataset to score (default: its only split, else `test`)")
    evaluate.add_argument("--column", metavar="COLUMN", default="text",
                          help="column of --dataset holding the text (default: text)")
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
    return parser
