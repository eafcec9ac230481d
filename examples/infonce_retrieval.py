"""Retrieval embeddings from a Masked Mixer: causal-LM training, then InfoNCE fine-tuning on the HF `Trainer`.

The Masked Mixer research recipe (Badger, *Masked Mixers for Language Generation and Retrieval*; blbadger/maskedmixers
`mixer_lm/infonce_retrieval.py`), end to end on CPU and fully offline:

1. a byte-level BPE tokenizer and a small `MaskedMixerForCausalLM` trained as a causal LM on the text (the
   quickstart's plain AdamW loop);
2. query -> document pairs cut from the same text by `memory_zoo.retrieval.make_retrieval_pairs`: each passage of
   `--passage-words` words is a document, and a span of `--query-words` words of it its query (the document's one
   vector must keep enough of every word to be found by a few of them; `--remove-query` cuts the span out of the
   document instead, the much harder inverse cloze task);
3. top-1 retrieval accuracy among n candidates (the research evaluation: cosine similarity of `model.embed`
   vectors, the hidden state of each text's second-to-last real token);
4. InfoNCE fine-tuning with `memory_zoo.retrieval.InfoNCETrainer` (a `transformers.Trainer`): cosine similarity,
   temperature 0.02, the other documents of the batch plus `--num-negatives` random documents per query as
   negatives; then the accuracy again;
5. `trainer.save_model()` and the tokenizer: a normal Masked Mixer folder, which also loads as
   `SentenceTransformer(folder, trust_remote_code=True)`; its `encode` gives the same vectors as `embed`.

Default text: the dozen sonnets embedded in `quickstart.py` (about 1,300 words, 75 training pairs). That is too
little to hold pairs out, so accuracy is then measured on the training pairs (memorisation, as the script says). With
a bigger text (`--text ../shared/data/tinyshakespeare.txt`) the last 10% of the text is held out: its pairs are never trained
on, by the causal LM or by InfoNCE, and the accuracy is theirs.

Flags:
    --text PATH            plain UTF-8 text (default: the embedded sonnets)
    --clm-steps N          causal-LM steps (default 300)
    --infonce-steps N      InfoNCE steps on the Trainer (default 150)
    --batch-size N         windows per causal-LM step and pairs per InfoNCE step (default 16)
    --num-negatives K      random documents per query on top of the in-batch negatives (default 3)
    --passage-words N      words per passage (default 16); --query-words N words per query (default 4)
    --remove-query         cut each query span out of its document (the inverse cloze task)
    --context-length L     the mixer's fixed context; texts are truncated to it (default 64)
    --clm-lr / --infonce-lr  peak learning rates (default 3e-3 / 1e-3)
    --temperature T        InfoNCE temperature (default 0.02, the research value)
    --output-dir DIR       where model and tokenizer are saved (default outputs/infonce-retrieval)

Run: `python examples/infonce_retrieval.py` (about 30 s on 2 idle CPU cores), or
`python examples/infonce_retrieval.py --text ../shared/data/tinyshakespeare.txt --clm-steps 1000 --infonce-steps 400`
(about 80 s; top-1 of 32 on 1259 held-out pairs goes from 0.10 to 0.30).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never reach the Hugging Face Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).parent))
from quickstart import build_model, encode, load_corpus, train, train_tokenizer  # noqa: E402  (sibling example)

from memory_zoo.retrieval import (  # noqa: E402
    InfoNCETrainer,
    RetrievalPairsDataset,
    embed_texts,
    make_retrieval_pairs,
    retrieval_accuracy,
)

MIN_HELD_OUT_PAIRS = 32  # fewer held-out pairs than this: evaluate on the training pairs instead
CANDIDATES = (8, 16, 32, 64, 128, 256, 512, 1024)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a small Masked Mixer as a causal LM, then fine-tune it into a retrieval embedder with "
                    "InfoNCE on the Hugging Face Trainer (offline, CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--text", type=Path, default=None, help="UTF-8 text file (default: the embedded sonnets)")
    parser.add_argument("--clm-steps", type=int, default=300, help="causal-LM optimisation steps")
    parser.add_argument("--infonce-steps", type=int, default=150, help="InfoNCE optimisation steps")
    parser.add_argument("--batch-size", type=int, default=16, help="windows (causal LM) and pairs (InfoNCE) per step")
    parser.add_argument("--num-negatives", type=int, default=3, help="random negative documents per query")
    parser.add_argument("--passage-words", type=int, default=16, help="words per passage (one pair per passage)")
    parser.add_argument("--query-words", type=int, default=4, help="words per query span")
    parser.add_argument("--remove-query", action="store_true",
                        help="cut the query span out of its document (the inverse cloze task; much harder)")
    parser.add_argument("--context-length", type=int, default=64, help="the mixer's fixed context length L")
    parser.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (special tokens included)")
    parser.add_argument("--clm-lr", type=float, default=3e-3, help="causal-LM peak learning rate")
    parser.add_argument("--infonce-lr", type=float, default=1e-3, help="InfoNCE peak learning rate")
    parser.add_argument("--temperature", type=float, default=0.02, help="InfoNCE temperature (research: 0.02)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs") / "infonce-retrieval",
                        help="where the fine-tuned model and its tokenizer are saved")
    args = parser.parse_args(argv)
    for name in ("clm_steps", "infonce_steps", "batch_size", "passage_words", "query_words", "context_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    if args.num_negatives < 0:
        parser.error(f"--num-negatives must be 0 or more, got {args.num_negatives}.")
    if args.batch_size < 2 and args.num_negatives == 0:
        parser.error("--batch-size 1 with --num-negatives 0 leaves InfoNCE no negative; raise either.")
    if args.query_words >= args.passage_words:
        parser.error(f"--query-words ({args.query_words}) must be smaller than --passage-words ({args.passage_words}).")
    if args.text is not None and not args.text.is_file():
        parser.error(f"--text {args.text}: no such file (pass a plain UTF-8 text file, or omit --text).")
    return args


def accuracy_of(model, tokenizer, pairs: list[dict[str, str]], candidates: list[int], seed: int) -> dict[int, float]:
    queries = embed_texts(model, tokenizer, [pair["query"] for pair in pairs])
    documents = embed_texts(model, tokenizer, [pair["document"] for pair in pairs])
    return retrieval_accuracy(queries, documents, candidates, seed=seed)


def check_sentence_transformers(output_dir: Path, model, tokenizer, pairs: list[dict[str, str]]) -> None:
    """Load the saved folder with sentence-transformers, compare `encode` with `embed`, retrieve one document."""
    if importlib.util.find_spec("sentence_transformers") is None:
        print("sentence-transformers is not installed: skipping the SentenceTransformer check "
              "(pip install sentence-transformers)")
        return
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(output_dir), trust_remote_code=True, device="cpu")
    texts = [pair["document"] for pair in pairs[:32]]
    encoded = encoder.encode(texts, convert_to_tensor=True, batch_size=8).cpu()
    embedded = embed_texts(model, tokenizer, texts)
    difference = (encoded - embedded).abs().max().item()
    same = difference < 1e-4
    print(f"SentenceTransformer({output_dir}, trust_remote_code=True).encode matches model.embed: {same} "
          f"(max |difference| {difference:.1e} over {len(texts)} documents)")
    if not same:
        raise SystemExit("sentence-transformers and embed disagree: please report this as a memory-zoo bug.")
    query = pairs[0]["query"]
    scores = encoder.similarity(encoder.encode([query], convert_to_tensor=True).cpu(), encoded)[0]
    best = int(scores.argmax())
    print(f"\nquery:     {query!r}\nretrieved: {texts[best]!r} ({'correct' if best == 0 else 'wrong'} document, "
          f"cosine {scores[best]:.3f})\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    hf_logging.set_verbosity_error()  # the Trainer's own log lines; the losses are printed below

    # Pairs first: a text too short for retrieval should fail before anything is trained.
    corpus = load_corpus(args.text)
    pair_options = dict(passage_words=args.passage_words, query_words=args.query_words,
                        remove_query=args.remove_query, seed=args.seed)
    try:
        train_pairs = make_retrieval_pairs(corpus.train_text, **pair_options)
    except ValueError as error:
        raise SystemExit(f"{corpus.name}: {error}") from None
    try:
        held_out_pairs = make_retrieval_pairs(corpus.held_out_text, **pair_options)
    except ValueError:
        held_out_pairs = []  # too short for a single pair
    if len(held_out_pairs) >= MIN_HELD_OUT_PAIRS:
        eval_pairs, eval_name = held_out_pairs, "held-out pairs (never trained on)"
    else:
        eval_pairs, eval_name = train_pairs, "training pairs (too little text to hold pairs out: memorisation)"
    candidates = [n for n in CANDIDATES if n <= len(eval_pairs)] or [len(eval_pairs)]
    if args.num_negatives > len(train_pairs) - 1:
        raise SystemExit(f"--num-negatives {args.num_negatives} needs at least {args.num_negatives + 1} training "
                         f"pairs; this text gives {len(train_pairs)}. Lower it or give more text.")

    tokenizer = train_tokenizer(corpus.train_text, args.vocab_size)
    tokens = encode(tokenizer, corpus.train_text)
    if len(tokens) <= args.context_length:
        raise SystemExit(f"The training text is only {len(tokens)} tokens; it must exceed the context "
                         f"({args.context_length}).")
    model = build_model(tokenizer, args.context_length)
    lengths = [len(tokenizer(pair["document"])["input_ids"]) for pair in eval_pairs]
    print(f"corpus: {corpus.name}; {len(train_pairs)} training pairs, {len(held_out_pairs)} held-out pairs "
          f"({args.passage_words}-word passages, {args.query_words}-word query spans "
          f"{'cut out of' if args.remove_query else 'kept in'} their documents; documents "
          f"{sum(lengths) / len(lengths):.0f} tokens on average, "
          f"{sum(n > args.context_length for n in lengths) / len(lengths):.0%} truncated to L)")
    print(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, hidden "
          f"{model.config.hidden_size}, {model.config.num_hidden_layers} blocks, fixed context L = "
          f"{args.context_length}")
    print(f"example pair:\n  query:    {train_pairs[0]['query']!r}\n  document: {train_pairs[0]['document']!r}")

    print(f"\n1. causal-LM training, {args.clm_steps} steps")
    train(model, tokens, args.context_length, args.clm_steps, args.batch_size, args.clm_lr, generator)
    before = accuracy_of(model, tokenizer, eval_pairs, candidates, args.seed)

    print(f"\n2. InfoNCE fine-tuning on the Trainer, {args.infonce_steps} steps (temperature {args.temperature}, "
          f"in-batch negatives + {args.num_negatives} random documents per query)")
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "trainer"),
        max_steps=args.infonce_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.infonce_lr,
        warmup_steps=max(1, args.infonce_steps // 10),
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_steps=max(1, args.infonce_steps // 5),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=False,
    )
    trainer = InfoNCETrainer(
        model=model,
        args=training_args,
        train_dataset=RetrievalPairsDataset(train_pairs, num_negatives=args.num_negatives, seed=args.seed),
        processing_class=tokenizer,
        temperature=args.temperature,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    after = accuracy_of(model, tokenizer, eval_pairs, candidates, args.seed)

    print(f"\ntop-1 retrieval accuracy on {len(eval_pairs)} {eval_name}, before -> after InfoNCE:")
    for n in candidates:
        print(f"  among {n:4d} candidates: {before[n]:.3f} -> {after[n]:.3f}   (chance {1 / n:.3f})")

    trainer.save_model(str(args.output_dir))
    tokenizer.save_pretrained(args.output_dir)
    print(f"\nsaved the fine-tuned model and tokenizer to {args.output_dir}: "
          f"{', '.join(sorted(p.name for p in args.output_dir.iterdir() if p.is_file()))}")
    check_sentence_transformers(args.output_dir, model, tokenizer, eval_pairs)

    print(f"InfoNCE loss: {losses[0]:.3f} -> {losses[-1]:.3f} (first and last logged) in {args.infonce_steps} steps; "
          f"{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    sys.exit(main())
