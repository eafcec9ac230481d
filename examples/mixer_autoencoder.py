"""Train a tiny masked-mixer autoencoder on CPU and measure how well it compresses text (fully offline).

A `MixerAutoencoderModel` reads a window of `--window` tokens and compresses it to one vector of
`hidden // --compression` floats (`encode`); its decoder rebuilds the whole window from that vector (`decode`).
The research (Badger, "Language Model Memory and Memory Models for Language"; blbadger/memorymodels) measures
compression with the functions of `memory_zoo.metrics`, which this script reports on held-out windows (the last
10% of the text, never trained on) before and after training:

* reconstruction loss in nats and bits per token (bits = nats / ln 2), token-weighted over all windows;
* token accuracy of the argmax reconstruction (what the research calls the "Hamming" metric; 1 = perfect);
* the compression ratio: tokens per window / floats in the code.

It then encodes the held-out text with `encode_texts` (texts cut into windows, a short last window left-padded as
the research trains, encoded in batches with a progress bar), decodes two windows back to text with
`decode_memories`, and prints them next to the originals.

The default corpus is the dozen sonnets embedded in `quickstart.py` (about 7 KB), so the script runs anywhere.
That is far too little text to generalise from: the training windows are reconstructed much better than the
held-out ones, and held-out reconstructions are recognisable only in fragments. Use
`--corpus ../shared/data/tinyshakespeare.txt --steps 3000` for more.

    python examples/mixer_autoencoder.py                      # ~10 s on 2 idle CPU cores
    python examples/mixer_autoencoder.py --compression 4 --window 16 --json metrics.json --output-dir outputs/ae

Flags: --corpus PATH (alias --text), --steps N (default 600), --window L (default 32), --compression C (default 1:
no bottleneck, the code is the encoder's `hidden` floats), --hidden D (default 64), --kernel K (default 4),
--vocab-size N (default 300), --batch-size N, --lr LR, --seed N, --output-dir DIR (save model + tokenizer; default:
not saved), --json PATH (write the metrics).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never reach the Hugging Face Hub

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from quickstart import encode, eval_windows, load_corpus, sample_batch, train_tokenizer  # noqa: E402  (sibling example)

from memory_zoo import MixerAutoencoderConfig, MixerAutoencoderModel  # noqa: E402
from memory_zoo.metrics import IGNORE_INDEX, decode_memories, encode_texts, reconstruction_metrics  # noqa: E402

PAD_FRACTION = 0.25  # share of training windows with a left-padded prefix, so short (padded) windows work too


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a tiny masked-mixer autoencoder on CPU and report its compression metrics (offline).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--corpus", "--text", type=Path, default=None,
                        help="UTF-8 text file (default: the sonnets embedded in quickstart.py)")
    parser.add_argument("--steps", type=int, default=600, help="optimisation steps")
    parser.add_argument("--window", type=int, default=32, help="tokens per window (config.window_length)")
    parser.add_argument("--compression", type=int, default=1, help="bottleneck factor: the code has hidden // C floats")
    parser.add_argument("--hidden", type=int, default=64, help="width of encoder and decoder")
    parser.add_argument("--kernel", type=int, default=4, help="mixing kernel size of encoder and decoder")
    parser.add_argument("--vocab-size", type=int, default=300, help="BPE vocabulary size (special tokens included)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per optimisation step")
    parser.add_argument("--lr", type=float, default=5e-3, help="AdamW peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--output-dir", type=Path, default=None, help="save model and tokenizer here (default: no)")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics to this JSON file")
    args = parser.parse_args(argv)
    for name in ("steps", "window", "compression", "hidden", "kernel", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    if args.vocab_size <= 256 + 4:
        parser.error("--vocab-size must exceed 260 (256 bytes + 4 special tokens).")
    if args.window < 2:
        parser.error("--window must be at least 2.")
    if args.hidden % args.compression:
        parser.error(f"--compression {args.compression} must divide --hidden {args.hidden}.")
    if args.corpus is not None and not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus}: no such file (pass a plain UTF-8 text file, or omit --corpus).")
    return args


def left_pad_some(batch: torch.Tensor, pad_id: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of a training batch: a `PAD_FRACTION` of the windows get a left-padded prefix of random
    length (labels -100 there), as the research trains on left-padded windows."""
    batch, labels = batch.clone(), batch.clone()
    rows, length = batch.shape
    padded = torch.rand(rows, generator=generator) < PAD_FRACTION
    cut = torch.randint(1, length, (rows,), generator=generator) * padded  # 0 = no padding
    prefix = torch.arange(length)[None, :] < cut[:, None]
    batch[prefix], labels[prefix] = pad_id, IGNORE_INDEX
    return batch, labels


def train(model: MixerAutoencoderModel, tokens: torch.Tensor, args: argparse.Namespace, pad_id: int,
          generator: torch.Generator) -> None:
    """AdamW on random windows of the training text: linear warm-up over 10% of the steps, then cosine decay."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    smoothed = None
    progress = tqdm(range(args.steps), desc="training", unit="step", dynamic_ncols=True)
    for _ in progress:
        inputs, labels = left_pad_some(sample_batch(tokens, args.window, args.batch_size, generator), pad_id, generator)
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        smoothed = loss.item() if smoothed is None else 0.9 * smoothed + 0.1 * loss.item()
        progress.set_postfix(loss=f"{smoothed:.3f}")


def report(label: str, metrics: dict) -> None:
    print(f"{label}: loss {metrics['loss_nats']:.3f} nats/token = {metrics['bits_per_token']:.3f} bits/token, "
          f"token accuracy {metrics['token_accuracy']:.3f} ({metrics['tokens']:,} tokens, {metrics['windows']} windows)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    corpus = load_corpus(args.corpus)
    tokenizer = train_tokenizer(corpus.train_text, args.vocab_size)
    train_tokens, held_out_tokens = encode(tokenizer, corpus.train_text), encode(tokenizer, corpus.held_out_text)
    if len(train_tokens) < args.window:
        raise SystemExit(f"The training text is only {len(train_tokens)} tokens; it must exceed --window {args.window}.")
    print(f"corpus: {corpus.name}; tokenizer: byte-level BPE, {len(tokenizer)} tokens; "
          f"{len(train_tokens):,} training / {len(held_out_tokens):,} held-out tokens")

    config = MixerAutoencoderConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, encoder_layers=2, decoder_layers=2,
        window_length=args.window, encoder_mixing_kernel_size=args.kernel, decoder_mixing_kernel_size=args.kernel,
        compression=args.compression, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = MixerAutoencoderModel(config)
    print(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, hidden "
          f"{config.hidden_size}, {config.encoder_layers}+{config.decoder_layers} blocks, kernel {args.kernel}, "
          f"window {config.window_length} tokens -> code of {config.memory_size} floats "
          f"(compression ratio {config.window_length / config.memory_size:.2f} tokens/float)")

    held_out = eval_windows(held_out_tokens, args.window, generator)
    train_fixed = eval_windows(train_tokens, args.window, generator)
    before, train_before = reconstruction_metrics(model, held_out), reconstruction_metrics(model, train_fixed)
    report("held-out before training", before)
    report("training windows before ", train_before)
    print(f"  (uniform guess: ln {len(tokenizer)} = {math.log(len(tokenizer)):.3f} nats/token)")

    train_started = time.perf_counter()
    train(model, train_tokens, args, tokenizer.pad_token_id, generator)
    train_seconds = time.perf_counter() - train_started
    after, train_after = reconstruction_metrics(model, held_out), reconstruction_metrics(model, train_fixed)
    report("held-out after training ", after)
    report("training windows after  ", train_after)

    # Whole held-out paragraphs: windows of `--window` tokens, the last one of each left-padded.
    texts = [paragraph.strip() for paragraph in corpus.held_out_text.split("\n\n") if paragraph.strip()]
    encoded = encode_texts(model, tokenizer, texts, batch_size=8, progress=True)
    padded = int((encoded.lengths < args.window).sum())
    print(f"encode_texts: {len(texts)} held-out paragraphs -> {len(encoded)} windows ({padded} left-padded) -> "
          f"memories {tuple(encoded.memories.shape)}")
    paragraphs = reconstruction_metrics(model, encoded.input_ids)
    report("held-out paragraphs (padding ignored)", paragraphs)
    shown = [0, len(encoded) - 1] if len(encoded) > 1 else [0]
    reconstructions = decode_memories(model, tokenizer, encoded.memories[shown])
    for index, reconstruction in zip(shown, reconstructions, strict=True):
        original = tokenizer.decode(encoded.input_ids[index], skip_special_tokens=True)
        print(f"--- window {index} of text {int(encoded.text_index[index])} ({int(encoded.lengths[index])} tokens)\n"
              f"original:       {original!r}\nreconstruction: {reconstruction!r}")

    if args.output_dir is not None:
        model.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
        print(f"saved model and tokenizer to {args.output_dir}: "
              f"{', '.join(sorted(p.name for p in args.output_dir.iterdir()))}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({
            "settings": settings, "corpus": corpus.name, "before": before, "after": after,
            "train_windows_before": train_before, "train_windows_after": train_after,
            "held_out_paragraphs": paragraphs, "encoded_windows": len(encoded), "train_seconds": train_seconds,
        }, indent=2) + "\n")
        print(f"metrics written to {args.json}")

    print(f"loss: {before['loss_nats']:.3f} -> {after['loss_nats']:.3f} nats/token "
          f"({before['bits_per_token']:.3f} -> {after['bits_per_token']:.3f} bits/token), token accuracy "
          f"{before['token_accuracy']:.3f} -> {after['token_accuracy']:.3f} on {after['windows']} held-out windows, "
          f"in {args.steps} steps, {train_seconds:.0f} s ({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    sys.exit(main())
