"""Retrieval embeddings: a Masked Mixer against a same-size transformer, trained the same way on the same text.

The Masked Mixer paper's retrieval comparison (Badger, *Masked Mixers for Language Generation and Retrieval*: top-1
of 32 on Finemath, mixer 98.2% vs transformer 95.0%, and accuracy against 32 ... 8192 candidates), rebuilt offline
at CPU scale:

1. text: `--text` (default `../shared/data/tinyshakespeare.txt` next to the repository, else the sonnets embedded
   in `examples/quickstart.py`, with a warning); its last `--held-out-fraction` (cut at a line break) is held out;
2. one byte-level BPE tokenizer, trained on the training part;
3. two models from the same seed: a `MaskedMixerForCausalLM` and a transformers `LlamaForCausalLM` of the same
   width, depth and context, whose MLP width is chosen so that the non-embedding parameter counts match as closely
   as possible (both counts are printed and saved);
4. causal-LM pre-training of each on the same batches (same steps, learning rate, schedule, batch);
5. InfoNCE fine-tuning of each with `memory_zoo.retrieval.InfoNCETrainer` (cosine, temperature 0.02, in-batch
   negatives plus `--num-negatives` random documents per query; the same pairs, order and negatives for both) on
   query -> document pairs of the training text (`make_retrieval_pairs`: a passage of `--passage-words` words and a
   span of `--query-words` words of it; with `--remove-query` the span is cut out of the document, the inverse
   cloze task, on which both models stayed at chance in our CPU-scale trials);
6. top-1 accuracy on the held-out pairs (never seen by either training stage) against 32, 64, ..., 1024 random
   candidates (candidate counts above the number of held-out documents are left out, and the output says so),
   after pre-training and after fine-tuning. Both models embed a text as the hidden state of its second-to-last
   real token (the research convention; `embed` for the mixer, `hidden_state_embeddings` for Llama).

    python benchmarks/retrieval.py                 # default scale: about 15 minutes on 2 CPU cores
    python benchmarks/retrieval.py --quick         # smoke run (about a minute); writes to the temp dir
    python benchmarks/retrieval.py --text my.txt --hidden-size 128 --clm-steps 2000

Writes `retrieval.json` (machine, load averages, settings, parameter counts, losses, accuracies, timings) and
`retrieval.png` (accuracy against candidates, log x, both models, before and after InfoNCE) to `--output-dir`
(default benchmarks/results/retrieval/; with --quick a temp dir) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples"))
from bench_common import load_average, machine_info  # noqa: E402
from quickstart import SONNETS, encode, eval_windows, mean_loss, train, train_tokenizer  # noqa: E402

from memory_zoo import MaskedMixerConfig, MaskedMixerForCausalLM  # noqa: E402
from memory_zoo.retrieval import (  # noqa: E402
    InfoNCETrainer,
    RetrievalPairsDataset,
    embed_texts,
    hidden_state_embeddings,
    make_retrieval_pairs,
    model_embeddings,
    retrieval_accuracy,
)

DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
RESULTS = HERE / "results" / "retrieval"
CANDIDATES = (32, 64, 128, 256, 512, 1024)
MODELS = ("masked_mixer", "llama")

# Scales: flags given explicitly win over these (their argparse defaults are None).
SCALES = {
    "quick": {"hidden_size": 64, "layers": 2, "context": 64, "vocab_size": 512, "clm_steps": 30, "infonce_steps": 20,
              "batch_size": 16, "max_chars": 60_000},
    "default": {"hidden_size": 128, "layers": 4, "context": 64, "vocab_size": 1024, "clm_steps": 1000,
                "infonce_steps": 400, "batch_size": 32, "max_chars": None},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-test scale (about a minute); output to a temp dir")
    parser.add_argument("--text", type=Path, default=None,
                        help=f"UTF-8 text (default: {DEFAULT_TEXT} if present, else the quickstart's sonnets)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where retrieval.json and retrieval.png go (default: benchmarks/results/retrieval/, "
                             "with --quick a temp dir)")
    scale = "flag of the scale (default: see SCALES in the script)"
    parser.add_argument("--hidden-size", type=int, default=None, help=f"width of both models; {scale}")
    parser.add_argument("--layers", type=int, default=None, help=f"blocks of both models; {scale}")
    parser.add_argument("--context", type=int, default=None, help=f"the mixer's fixed context, both models' window; "
                                                                  f"texts are truncated to it; {scale}")
    parser.add_argument("--vocab-size", type=int, default=None, help=f"BPE vocabulary; {scale}")
    parser.add_argument("--heads", type=int, default=4, help="transformer attention heads (research: 4)")
    parser.add_argument("--clm-steps", type=int, default=None, help=f"causal-LM steps; {scale}")
    parser.add_argument("--infonce-steps", type=int, default=None, help=f"InfoNCE steps; {scale}")
    parser.add_argument("--batch-size", type=int, default=None, help=f"windows / pairs per step; {scale}")
    parser.add_argument("--max-chars", type=int, default=None, help="use only the first N characters of the text")
    parser.add_argument("--clm-lr", type=float, default=3e-3, help="causal-LM peak learning rate (both models)")
    parser.add_argument("--infonce-lr", type=float, default=1e-3, help="InfoNCE peak learning rate (both models)")
    parser.add_argument("--temperature", type=float, default=0.02, help="InfoNCE temperature (research: 0.02)")
    parser.add_argument("--num-negatives", type=int, default=1, help="random negative documents per query, on top "
                                                                     "of the in-batch negatives")
    parser.add_argument("--passage-words", type=int, default=20, help="words per passage (one pair per passage)")
    parser.add_argument("--query-words", type=int, default=5, help="words per query span")
    parser.add_argument("--remove-query", action="store_true",
                        help="cut the query span out of its document (the inverse cloze task; much harder)")
    parser.add_argument("--held-out-fraction", type=float, default=0.2,
                        help="the end of the text held out for evaluation pairs (0.2 of tinyshakespeare gives "
                             "over 1024 pairs)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of models, batches, pairs and candidates")
    args = parser.parse_args(argv)
    for name, value in SCALES["quick" if args.quick else "default"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("hidden_size", "layers", "context", "clm_steps", "infonce_steps", "batch_size", "heads",
                 "passage_words", "query_words"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    if args.hidden_size % args.heads:
        parser.error(f"--hidden-size ({args.hidden_size}) must be a multiple of --heads ({args.heads}).")
    if not 0 < args.held_out_fraction < 1:
        parser.error(f"--held-out-fraction must be between 0 and 1, got {args.held_out_fraction}.")
    if args.text is not None and not args.text.is_file():
        parser.error(f"--text {args.text}: no such file (pass a plain UTF-8 text file, or omit --text).")
    if args.output_dir is None:
        args.output_dir = Path(tempfile.mkdtemp(prefix="retrieval_quick_")) if args.quick else RESULTS
    return args


def load_text(args: argparse.Namespace) -> tuple[str, str]:
    """(name, text): `--text`, else tinyshakespeare next to the repository, else the embedded sonnets (warned)."""
    if args.text is not None:
        name, text = str(args.text), args.text.read_text(encoding="utf-8")
    elif DEFAULT_TEXT.is_file():
        name, text = str(DEFAULT_TEXT), DEFAULT_TEXT.read_text(encoding="utf-8")
    else:
        print(f"WARNING: {DEFAULT_TEXT} not found; using the sonnets embedded in examples/quickstart.py (about 1,200 "
              "words: few held-out pairs, few candidates, figures of little meaning). Pass --text for a real run.")
        name, text = "embedded sonnets (examples/quickstart.py)", SONNETS
    if args.max_chars:
        text = text[: args.max_chars]
    return name, text


def split_text(text: str, fraction: float) -> tuple[str, str]:
    cut = text.rfind("\n", 0, int(len(text) * (1 - fraction))) + 1
    if cut <= 0:
        cut = int(len(text) * (1 - fraction))
    return text[:cut], text[cut:]


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the input embedding and the LM head (both untied here)."""
    excluded = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def build_mixer(args: argparse.Namespace, tokenizer) -> MaskedMixerForCausalLM:
    config = MaskedMixerConfig(vocab_size=len(tokenizer), hidden_size=args.hidden_size,
                               num_hidden_layers=args.layers, max_position_embeddings=args.context,
                               pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id)
    return MaskedMixerForCausalLM(config)


def build_llama(args: argparse.Namespace, tokenizer, target: int):
    """A Llama of the mixer's width, depth and context whose SwiGLU width brings its non-embedding parameters
    closest to `target` (a Llama block has 4 d^2 attention + 3 d i MLP + 2 d norm parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d, layers = args.hidden_size, args.layers
    per_block = (target - d) / layers  # minus the final norm
    intermediate = max(1, round((per_block - 4 * d * d - 2 * d) / (3 * d)))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=d, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=args.context, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def accuracy_of(model, tokenizer, pairs, candidates, args, embed_fn) -> dict[int, float]:
    queries = embed_texts(model, tokenizer, [p["query"] for p in pairs], max_length=args.context, embed_fn=embed_fn)
    documents = embed_texts(model, tokenizer, [p["document"] for p in pairs], max_length=args.context,
                            embed_fn=embed_fn)
    return retrieval_accuracy(queries, documents, candidates, seed=args.seed)


def run_model(name: str, model, tokenizer, data: dict, args: argparse.Namespace) -> dict:
    """Pre-train `model` as a causal LM, fine-tune it with InfoNCE; losses, accuracies and timings."""
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    embed_fn = model_embeddings if name == "masked_mixer" else hidden_state_embeddings
    result = {"model": name, "class": type(model).__name__,
              "parameters": sum(p.numel() for p in model.parameters()),
              "non_embedding_parameters": non_embedding_parameters(model),
              "config": {k: v for k, v in model.config.to_diff_dict().items() if isinstance(v, int | float | str)}}
    print(f"\n== {name}: {type(model).__name__}, {result['non_embedding_parameters']:,} non-embedding parameters "
          f"({result['parameters']:,} in all)", flush=True)

    held_out_windows = data["held_out_windows"]
    result["clm_held_out_loss_before"] = mean_loss(model, held_out_windows)
    started = time.perf_counter()
    # The same generator seed for both models: identical causal-LM batches.
    train(model, data["train_tokens"], args.context, args.clm_steps, args.batch_size, args.clm_lr,
          torch.Generator().manual_seed(args.seed))
    result["clm_seconds"] = time.perf_counter() - started
    result["clm_held_out_loss"] = mean_loss(model, held_out_windows)
    print(f"causal LM: held-out loss {result['clm_held_out_loss_before']:.3f} -> {result['clm_held_out_loss']:.3f} "
          f"in {result['clm_seconds']:.0f} s", flush=True)
    result["accuracy_after_clm"] = accuracy_of(model, tokenizer, data["eval_pairs"], data["candidates"], args, embed_fn)

    training_args = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp(prefix="retrieval_trainer_"))), max_steps=args.infonce_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.infonce_lr,
        warmup_steps=max(1, args.infonce_steps // 10), lr_scheduler_type="cosine", max_grad_norm=1.0,
        logging_steps=max(1, args.infonce_steps // 10), save_strategy="no", report_to=[], use_cpu=True,
        seed=args.seed, disable_tqdm=True,
    )
    trainer = InfoNCETrainer(
        model=model, args=training_args, processing_class=tokenizer, embed_fn=embed_fn,
        train_dataset=RetrievalPairsDataset(data["train_pairs"], num_negatives=args.num_negatives, seed=args.seed),
        temperature=args.temperature,
    )
    trainer.remove_callback(PrinterCallback)  # the losses are summarised below and saved
    started = time.perf_counter()
    trainer.train()
    result["infonce_seconds"] = time.perf_counter() - started
    result["infonce_losses"] = [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e]
    result["accuracy"] = accuracy_of(model, tokenizer, data["eval_pairs"], data["candidates"], args, embed_fn)
    first = data["candidates"][0]
    print(f"InfoNCE: loss {result['infonce_losses'][0]:.3f} -> {result['infonce_losses'][-1]:.3f} in "
          f"{result['infonce_seconds']:.0f} s; top-1 of {first}: {result['accuracy_after_clm'][first]:.3f} -> "
          f"{result['accuracy'][first]:.3f}", flush=True)
    return result


def report_table(report: dict) -> str:
    candidates = report["candidates"]
    header = "| model | non-embedding params | CLM held-out loss | stage | " + " | ".join(
        f"top-1 of {n}" for n in candidates) + " |"
    lines = [header, "|" + "---|" * (4 + len(candidates))]
    for row in report["results"]:
        for stage, key in (("after CLM", "accuracy_after_clm"), ("after InfoNCE", "accuracy")):
            accuracy = " | ".join(f"{row[key][n]:.3f}" for n in candidates)
            lines.append(f"| {row['model']} | {row['non_embedding_parameters']:,} | {row['clm_held_out_loss']:.3f} | "
                         f"{stage} | {accuracy} |")
    lines.append("| chance | | | | " + " | ".join(f"{1 / n:.3f}" for n in candidates) + " |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidates = report["candidates"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, row in enumerate(report["results"]):
        color = f"C{index}"
        ax.plot(candidates, [row["accuracy"][n] for n in candidates], marker="o", color=color,
                label=f"{row['model']} ({row['non_embedding_parameters'] / 1e6:.2f}M), after InfoNCE")
        ax.plot(candidates, [row["accuracy_after_clm"][n] for n in candidates], marker=".", linestyle="--",
                color=color, alpha=0.5, label=f"{row['model']}, causal LM only")
    ax.plot(candidates, [1 / n for n in candidates], color="gray", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(candidates)
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    settings = report["settings"]
    ax.set(xlabel="candidates", ylabel="top-1 accuracy", ylim=(0, 1.02),
           title=f"Held-out retrieval, {Path(report['text']).name}: d={settings['hidden_size']}, "
                 f"{settings['layers']} blocks, L={settings['context']}", )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    machine = machine_info("cpu")
    machine["load_average_before"] = load_average()
    started = time.perf_counter()

    name, text = load_text(args)
    train_text, held_out_text = split_text(text, args.held_out_fraction)
    pair_options = dict(passage_words=args.passage_words, query_words=args.query_words,
                        remove_query=args.remove_query, seed=args.seed)
    try:
        train_pairs = make_retrieval_pairs(train_text, **pair_options)
        eval_pairs = make_retrieval_pairs(held_out_text, **pair_options)
    except ValueError as error:
        raise SystemExit(f"{name}: {error}") from None
    candidates = [n for n in CANDIDATES if n <= len(eval_pairs)]
    omitted = [n for n in CANDIDATES if n > len(eval_pairs)]
    if not candidates:
        candidates = [len(eval_pairs)]
    if omitted:
        print(f"NOTE: only {len(eval_pairs)} held-out pairs, so {', '.join(map(str, omitted))} candidates are left "
              f"out{'' if candidates[0] in CANDIDATES else f' (evaluating among all {candidates[0]} instead)'}. "
              "Hold out more text (--held-out-fraction) or shorten passages (--passage-words) for more.")
    if args.num_negatives > len(train_pairs) - 1:
        raise SystemExit(f"--num-negatives {args.num_negatives} needs more than {len(train_pairs)} training pairs.")

    tokenizer = train_tokenizer(train_text, args.vocab_size)
    train_tokens = encode(tokenizer, train_text)
    held_out_tokens = encode(tokenizer, held_out_text)
    if len(train_tokens) <= args.context:
        raise SystemExit(f"The training text is only {len(train_tokens)} tokens; it must exceed --context.")
    data = {"train_tokens": train_tokens, "train_pairs": train_pairs, "eval_pairs": eval_pairs,
            "candidates": candidates,
            "held_out_windows": eval_windows(held_out_tokens, args.context, torch.Generator().manual_seed(args.seed))}
    document_tokens = [len(tokenizer(p["document"])["input_ids"]) for p in eval_pairs]
    truncated = sum(n > args.context for n in document_tokens) / len(document_tokens)
    print(f"text: {name}, {len(text):,} characters; {len(train_pairs)} training pairs, {len(eval_pairs)} held-out "
          f"pairs ({args.passage_words}-word passages, {args.query_words}-word query spans "
          f"{'cut out of' if args.remove_query else 'kept in'} their documents); "
          f"tokenizer {len(tokenizer)} tokens; held-out documents {sum(document_tokens) / len(document_tokens):.0f} "
          f"tokens on average, {truncated:.0%} truncated to {args.context}")

    torch.manual_seed(args.seed)
    mixer = build_mixer(args, tokenizer)
    torch.manual_seed(args.seed)
    llama = build_llama(args, tokenizer, non_embedding_parameters(mixer))
    counts = {"masked_mixer": non_embedding_parameters(mixer), "llama": non_embedding_parameters(llama)}
    print(f"non-embedding parameters: masked mixer {counts['masked_mixer']:,}, llama {counts['llama']:,} "
          f"(intermediate_size {llama.config.intermediate_size}; {counts['llama'] / counts['masked_mixer'] - 1:+.2%})")

    results = [run_model("masked_mixer", mixer, tokenizer, data, args)]
    del mixer
    results.append(run_model("llama", llama, tokenizer, data, args))

    machine["load_average_after"] = load_average()
    report = {
        "machine": machine,
        "text": name,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": " ".join(["python", "benchmarks/retrieval.py", *(argv if argv is not None else sys.argv[1:])]),
        "pairs": {"train": len(train_pairs), "held_out": len(eval_pairs),
                  "held_out_document_tokens_mean": sum(document_tokens) / len(document_tokens),
                  "held_out_documents_truncated": truncated},
        "candidates": candidates,
        "candidates_omitted": omitted,
        "results": results,
        "total_seconds": time.perf_counter() - started,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    output = args.output_dir / "retrieval.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    figure = plot(report, args.output_dir / "retrieval.png")

    print(f"\nmachine: {machine['processor']}, {machine['cpu_count']} CPUs, {machine['num_threads']} threads, "
          f"torch {machine['torch']}, transformers {machine['transformers']}; load average "
          f"{machine['load_average_before']} -> {machine['load_average_after']}")
    print(f"top-1 accuracy on {len(eval_pairs)} held-out pairs (chance 1/n):\n")
    print(report_table(report))
    first = candidates[0]
    mixer_row, llama_row = results
    verdict = "beats" if mixer_row["accuracy"][first] > llama_row["accuracy"][first] else "does not beat"
    print(f"\nafter InfoNCE, the masked mixer {verdict} the transformer at {first} candidates "
          f"({mixer_row['accuracy'][first]:.3f} vs {llama_row['accuracy'][first]:.3f}); "
          f"held-out CLM loss {mixer_row['clm_held_out_loss']:.3f} vs {llama_row['clm_held_out_loss']:.3f}")
    print(f"total {report['total_seconds']:.0f} s; wrote {output}" + (f" and {figure}" if figure else ""))
    if any(not math.isfinite(loss) for row in results for loss in row["infonce_losses"]):
        print("WARNING: a non-finite InfoNCE loss was logged; lower --infonce-lr.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
