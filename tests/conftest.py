"""Shared fixtures: tiny models and a tokenizer trained on the spot; nothing is downloaded."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"

TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "All that glitters is not gold. The early bird catches the worm. "
) * 20


PRINTING_LOGGERS = ("transformers", "memory_zoo", "transformers_modules")  # ours, in-package and as remote code


@contextmanager
def printed_warnings(loggers: tuple[str, ...] = PRINTING_LOGGERS) -> Iterator[list[str]]:
    """Collect what a user would see printed inside the block: Python warnings and log records of level WARNING and
    above from ``loggers``. The list is filled when the block ends."""
    from transformers.utils import logging as hf_logging

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name}: {record.getMessage()}")

    handler = Collect(level=logging.WARNING)
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    # `warning_once` messages would otherwise stay silent after the first test that triggered them.
    cache_clear = getattr(hf_logging.get_logger("transformers").warning_once, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
    printed: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield printed
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)
    printed.extend([f"{w.category.__name__}: {w.message}" for w in caught] + records)


def train_tokenizer(vocab_size: int = 120):
    """A small BPE tokenizer (Metaspace, so spaces survive decoding) trained in milliseconds, wrapped for transformers.

    It stays below the 128-token vocabulary of the research fixtures so it can be attached to converted models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.train_from_iterator([TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer()


# Every token-mixing layout the config supports, as small as possible.
VARIANTS = {
    "plain": {},
    "expanded": {"mixing_expanded": True},
    "multihead": {"num_mixing_heads": 2, "mixing_head_dim": 8},
    "last_head_softmax": {"mixing_out_proj": True, "mixing_softmax": True},
    "no_bias": {"mixing_bias": False},
}


def assert_kernel_matches_fallback(kernel, function: str, monkeypatch, build, input_ids):
    """One training step of `build()` (Hub kernel) and `build(use_kernels=False)` (pure torch): the kernel must be
    called, and the losses and every parameter's gradient must agree. Returns the kernel model."""
    calls = []
    original = getattr(kernel, function)
    monkeypatch.setattr(kernel, function, lambda *a: calls.append(1) or original(*a))
    with_kernel, without = build().train(), build(use_kernels=False).train()
    losses = [m(input_ids, labels=input_ids).loss for m in (with_kernel, without)]
    assert calls, "the kernel was not used"
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    for loss in losses:
        loss.backward()
    for (name, a), b in zip(with_kernel.named_parameters(), without.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    return with_kernel


def tiny_config(vocab_size: int = 300, **overrides):
    from memory_zoo import MaskedMixerConfig

    settings = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, max_position_embeddings=24,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2)
    settings.update(overrides)
    return MaskedMixerConfig(**settings)


def tiny_model(seed: int = 0, **overrides):
    from memory_zoo import MaskedMixerForCausalLM

    torch.manual_seed(seed)
    return MaskedMixerForCausalLM(tiny_config(**overrides)).eval()


# Memory Mosaics options worth covering separately, as small as possible (4 heads of 4 channels).
MOSAICS_VARIANTS = {
    "default": {},
    "linearconv_values": {"value_feature_extractor": "linearconv", "value_kernel_size": 3, "value_shift": 2,
                          "bias": True, "pmem_count": 2, "tie_word_embeddings": False},
    "lookahead_only_window": {"value_feature_extractor": "linearconv", "value_kernel_size": 2, "value_shift": 3,
                              "key_kernel_size": 3},
    "lowr_keys": {"key_feature_extractor": "lowrlinearconv", "key_kernel_size": 2, "value_shift": 2},
    "post_ln_attn_only": {"pre_layernorm": False, "attn_only": True, "value_shift": 0},
}


def tiny_mosaics_config(vocab_size: int = 300, **overrides):
    from memory_zoo import MemoryMosaicsConfig

    settings = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, pmem_size=12,
                    block_size=24, leaky_chunk_size=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    settings.update(overrides)
    return MemoryMosaicsConfig(**settings)


def tiny_mosaics(seed: int = 0, **overrides):
    """A small random Memory Mosaics whose per-head scalars are spread out, so that every code path matters."""
    from memory_zoo import MemoryMosaicsForCausalLM

    torch.manual_seed(seed)
    model = MemoryMosaicsForCausalLM(tiny_mosaics_config(**overrides)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("_beta", "coef")):
                parameter.add_(torch.rand_like(parameter).sub(0.5).mul(0.1))
    return model


# Memory Layers options worth covering separately (vocabulary 300, width 32, 4 blocks).
MEMORY_LAYERS_VARIANTS = {
    "pkplus_shared": {"memory_layers": [1, 3]},
    "pk_plain_unshared": {"memory_layers": [2], "memory_swilu_projection": False, "memory_share_values": False},
    "gated_vdim_gqa": {"memory_layers": [0, 2], "memory_v_dim": 16, "memory_gated": True, "num_key_value_heads": 2,
                       "memory_share_values": False, "memory_heads": 3, "memory_knn": 3},
}


def tiny_memory_layers_config(vocab_size: int = 300, **overrides):
    from memory_zoo import MemoryLayersConfig

    settings = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, multiple_of=16,
                    memory_layers=[1, 3], memory_n_keys=8, memory_heads=2, memory_knn=4, memory_k_dim=16,
                    memory_value_dtype="float32", max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2)
    settings.update(overrides)
    return MemoryLayersConfig(**settings)


def tiny_memory_layers(seed: int = 0, **overrides):
    """A small random Memory Layers model; its memory biases are non-zero so that every term matters."""
    from memory_zoo import MemoryLayersForCausalLM

    torch.manual_seed(seed)
    model = MemoryLayersForCausalLM(tiny_memory_layers_config(**overrides)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.05)
    return model


# LSWT options worth covering separately (vocabulary 300, embedding width 24, model width 32, 2 blocks).
LSWT_VARIANTS = {
    "default": {},
    "registers_qknorm_nobias": {"num_registers": 3, "qk_norm": True, "attention_bias": False},
    "plain_rope_mlp": {"rope_reversed": False, "gated_ffn": False, "hidden_act": "gelu", "rope_base_freq": 10000.0},
    "dynamic_rope": {"rope_dynamic": True, "max_position_embeddings": 12},
}


def tiny_lswt_config(vocab_size: int = 300, **overrides):
    from memory_zoo import LSWTConfig

    settings = dict(vocab_size=vocab_size, embedding_size=24, hidden_size=32, intermediate_size=48,
                    num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=64, pad_token_id=0,
                    bos_token_id=1, eos_token_id=2)
    settings.update(overrides)
    return LSWTConfig(**settings)


def tiny_lswt(seed: int = 0, **overrides):
    """A small random LSWT with larger-than-default weights, so that logits differ visibly between positions."""
    from memory_zoo import LSWTForCausalLM

    torch.manual_seed(seed)
    model = LSWTForCausalLM(tiny_lswt_config(**overrides)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and parameter.dim() == 2:
                parameter.mul_(8.0)
            elif "norm" in name or name.endswith("bias") or "registers" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model
