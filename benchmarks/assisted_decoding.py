"""Greedy against prompt-lookup decoding, side by side, for every causal LM of the zoo and a same-size Llama.

Prompt lookup drafts tokens by copying what followed the last n-gram earlier in the text and verifies the draft in
one forward pass; on repetitive text (code, extraction, quoting) it saves forward passes. The caches that cannot cut
tokens (Memory Mosaics, LSWT, the chunk-memory models) take rejected tokens back by snapshot and replay (see
memory_zoo/modeling/zoo_rollback.py), which costs the replayed tokens once more; this measures what is left of the
speed-up. Each model generates from a prompt that repeats a random pattern, greedy and with prompt lookup, in
alternation (medians of `--repeats`); the tokens must be identical. Small random models on the CPU, one thread:
read the ratios, not the times.

    python benchmarks/assisted_decoding.py                     # writes benchmarks/results/assisted_decoding.json
    python benchmarks/assisted_decoding.py --new-tokens 64 --repeats 3 --output /tmp/assisted.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bench_common import machine_info  # noqa: E402
from test_contract import CASES, VOCAB, build  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def llama() -> torch.nn.Module:
    """A Llama of the contract's model sizes (the yardstick a user would otherwise pick)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, pad_token_id=0, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


def timed(model, prompt: torch.Tensor, new_tokens: int, **options) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=0, **options)
    return time.perf_counter() - start, out


def measure(name: str, model, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    plain_times, lookup_times = [], []
    for _ in range(repeats):  # alternate, so that drifts of the machine hit both sides alike
        seconds, plain = timed(model, prompt, new_tokens)
        plain_times.append(seconds)
        seconds, looked_up = timed(model, prompt, new_tokens, prompt_lookup_num_tokens=4)
        lookup_times.append(seconds)
    if not torch.equal(plain, looked_up):
        raise AssertionError(f"{name}: prompt lookup changed the tokens")
    plain_s, lookup_s = statistics.median(plain_times), statistics.median(lookup_times)
    row = {"model": name, "greedy_s": plain_s, "prompt_lookup_s": lookup_s, "speedup": plain_s / lookup_s,
           "tokens": int(plain.shape[1] - prompt.shape[1])}
    print(f"{name:32s} greedy {plain_s * 1e3:8.1f} ms   prompt lookup {lookup_s * 1e3:8.1f} ms   "
          f"speed-up x{row['speedup']:.2f}   ({row['tokens']} tokens)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "assisted_decoding.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pattern = torch.randint(3, VOCAB, (1, 4), generator=torch.Generator().manual_seed(0))
    rows = []
    for architecture, case in sorted(CASES.items()):
        prompt = pattern.repeat(1, 2)
        new_tokens = args.new_tokens if case.context is None else case.context - prompt.shape[1]
        rows.append(measure(architecture, build(architecture), prompt, new_tokens, args.repeats))
    rows.append(measure("llama (yardstick)", llama(), pattern.repeat(1, 2), args.new_tokens, args.repeats))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": machine_info(), "new_tokens": args.new_tokens,
                                       "repeats": args.repeats, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
