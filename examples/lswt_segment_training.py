"""Segment-recurrent training of an LSWT, the way the research code trains it (Transformer-XL style).

Each batch row is one continuous token stream. Every optimizer step trains on the next `--segment` tokens of every
row while attending to the previous segments' keys and values, carried in the `LSWTCache` from step to step,
detached (no gradient crosses a segment boundary) and trimmed to `--memory` positions. With `--recompute-kv` the cache
holds the attention inputs instead and keys/values are recomputed from them, so the key/value projections also learn
from the memory (the research Medium model's setting). At the end the held-out text is scored twice, segment by
segment with the memory and each segment alone, to show what the memory buys.

    python examples/lswt_segment_training.py                      # embedded sonnets, ~6 s on 2 CPU cores
    python examples/lswt_segment_training.py --text ../shared/data/tinyshakespeare.txt --steps 400 --recompute-kv
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quickstart import encode, load_corpus, train_tokenizer  # noqa: E402  (sibling example: corpus + tokenizer)

from memory_zoo import LSWTCache, LSWTConfig, LSWTForCausalLM  # noqa: E402


def streams(tokens: torch.Tensor, rows: int) -> torch.Tensor:
    """Cut one token stream into `rows` continuous streams of equal length `[rows, n]`."""
    length = len(tokens) // rows
    return tokens[: rows * length].view(rows, length)


def score(model: LSWTForCausalLM, data: torch.Tensor, segment: int, memory: int | None) -> float:
    """Mean next-token loss over consecutive segments; `memory=None` runs every segment alone (no cache)."""
    model.eval()
    cache, total, count = None, 0.0, 0
    with torch.no_grad():
        for start in range(0, data.shape[1] - 1, segment):
            chunk = data[:, start:start + segment + 1]
            if chunk.shape[1] < 2:
                break
            out = model(chunk[:, :-1], cache=cache if memory is not None else None,
                        use_cache=memory is not None, max_key_values=memory)
            cache = out.cache
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
            total, count = total + loss.item(), count + chunk[:, 1:].numel()
    return total / max(count, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=None, help="UTF-8 text (default: the quickstart's sonnets)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps (one segment per row each)")
    parser.add_argument("--rows", type=int, default=4, help="parallel token streams")
    parser.add_argument("--segment", type=int, default=32, help="tokens per segment")
    parser.add_argument("--memory", type=int, default=32, help="memory positions kept (research: segment length)")
    parser.add_argument("--recompute-kv", action="store_true", help="research recompute_kv training")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/lswt-segments"))
    args = parser.parse_args(argv)
    if args.text is not None and not args.text.is_file():
        parser.error(f"--text {args.text}: no such file")
    torch.manual_seed(args.seed)

    corpus = load_corpus(args.text)
    tokenizer = train_tokenizer(corpus.train_text, 512)
    train = streams(encode(tokenizer, corpus.train_text), args.rows)
    held_out = streams(encode(tokenizer, corpus.held_out_text), 1)
    config = LSWTConfig(vocab_size=len(tokenizer), embedding_size=64, hidden_size=128, intermediate_size=256,
                        num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=args.segment + args.memory,
                        max_key_values=args.memory, recompute_kv=args.recompute_kv,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    model = LSWTForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    print(f"model: LSWTForCausalLM, {sum(p.numel() for p in model.parameters()):,} parameters; {args.rows} streams of "
          f"{train.shape[1]:,} tokens, segments of {args.segment}, memory {args.memory}, "
          f"recompute_kv={args.recompute_kv}")
    before = score(model, held_out, args.segment, args.memory)

    cache: LSWTCache | None = None
    position, losses = 0, []
    model.train()
    for step in range(args.steps):
        if position + args.segment + 1 > train.shape[1]:  # end of the streams: start over with an empty memory
            position, cache = 0, None
        chunk = train[:, position:position + args.segment + 1]
        out = model(chunk[:, :-1], labels=None, cache=cache, use_cache=True)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), chunk[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        cache = out.cache.detach()  # carried to the next segment, without its graph
        position += args.segment
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  memory {cache.get_seq_length()} positions")

    with_memory = score(model, held_out, args.segment, args.memory)
    without_memory = score(model, held_out, args.segment, None)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    print(f"held-out loss before training {before:.3f}; after: with memory {with_memory:.3f}, "
          f"each segment alone {without_memory:.3f} (ppl {math.exp(with_memory):.1f} vs {math.exp(without_memory):.1f})")
    print(f"train loss: {losses[0]:.2f} -> {sum(losses[-10:]) / len(losses[-10:]):.2f} in {args.steps} steps; "
          f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
