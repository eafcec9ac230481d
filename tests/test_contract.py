"""One contract every causal language model of the zoo passes, on every supported transformers release.

The architectures come from ``memory_zoo.ARCHITECTURES`` (every entry with a causal-LM class), so one added later is
tested by construction: until it has a ``CASES`` entry below, each check fails and says so. The checks are what a user
of ``transformers`` relies on: save/reload, remote code where memory-zoo is not installed, exact cached generation
(greedy, beam search, sampling), left-padded batches, the cache under both of its names (``past_key_values`` before
transformers 5.24, ``cache`` since), multi-token chunks through the cache, assisted and prompt-lookup decoding equal to
greedy decoding, a clear error past a fixed context, and no warning printed on the way. ``benchmarks/compat_matrix.py`` runs this file under each transformers release it lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import (
    LSWT_VARIANTS,
    MEMORY_LAYERS_VARIANTS,
    MOSAICS_VARIANTS,
    VARIANTS,
    printed_warnings,
    tiny_lswt,
    tiny_memory_layers,
    tiny_model,
    tiny_mosaics,
    train_tokenizer,
)
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Cache

import memory_zoo
from memory_zoo.architectures import architecture as record_of
from memory_zoo.modeling.zoo_compat import CACHE_NAME
from memory_zoo.modeling.zoo_rollback import RollbackMixin

VOCAB = 128  # above the probe tokenizer's 90 tokens, so a tokenizer can travel with every model
PROBE = Path(__file__).parent / "contract_probe.py"


@dataclass(frozen=True)
class ContractCase:
    """How to build small random models of one architecture, and what its contract allows.

    ``build(**overrides)`` returns a model in eval mode; ``variants`` name the overrides worth covering separately
    (the generation checks run for each; the rest for the first). ``context``: the fixed number of positions the
    model can read (None where it has no such limit; it must then generate past its training window).
    ``left_padding``: "exact" when a left-padded row computes and generates what it does alone; "uncached" when the
    model's cache cannot hold padded rows (chunks at fixed positions): cached generation must refuse them naming the
    fix, ``use_cache=False``, and with it each padded row must generate what it generates alone; "refused" when no path
    can (the model reads padding as tokens, as its research code does): it must refuse left padding and name the fix.
    """

    build: Callable[..., torch.nn.Module]
    variants: dict[str, dict] = field(default_factory=lambda: {"default": {}})
    context: int | None = None
    left_padding: str = "exact"


def _memory_mixer(cls_name: str, **overrides) -> torch.nn.Module:
    settings = dict(vocab_size=VOCAB, encoder_hidden_size=16, hidden_size=24, encoder_layers=2, decoder_layers=2,
                    chunk_length=6, compression=2, use_kernels=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if cls_name == "VariableMemoryMixerForCausalLM":
        settings.update(num_chunks=4, encoder_mixing_kernel_size=3, encoder_num_mixing_heads=2)
    else:
        settings.update(mixing_kernel_size=2, memory_source="previous_chunk")
    torch.manual_seed(0)
    config_class = getattr(memory_zoo, cls_name.replace("ForCausalLM", "Config"))
    return getattr(memory_zoo, cls_name)(config_class(**{**settings, **overrides})).eval()


def _memory_transformer(**overrides) -> torch.nn.Module:
    from memory_zoo import VariableMemoryTransformerConfig, VariableMemoryTransformerForCausalLM

    def llama(hidden: int, **extra) -> dict:
        return dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, **extra)

    settings = dict(vocab_size=VOCAB, encoder_config=llama(16), decoder_config=llama(24, num_key_value_heads=2),
                    chunk_length=4, num_chunks=5, compression=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = VariableMemoryTransformerForCausalLM(VariableMemoryTransformerConfig(**{**settings, **overrides})).eval()
    with torch.no_grad():  # larger-than-init weights, so that attention is far from uniform
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, parameter.shape[-1] ** -0.5)
    return model


# model_type -> case. Every causal LM in memory_zoo.ARCHITECTURES needs one (test_every_causal_lm_has_a_case).
CASES: dict[str, ContractCase] = {
    "masked_mixer": ContractCase(lambda **o: tiny_model(vocab_size=VOCAB, **o), variants=VARIANTS, context=24),
    "memory_mosaics": ContractCase(lambda **o: tiny_mosaics(vocab_size=VOCAB, **o), variants=MOSAICS_VARIANTS),
    "memory_layers": ContractCase(lambda **o: tiny_memory_layers(vocab_size=VOCAB, **o),
                                  variants={"default": {}, **MEMORY_LAYERS_VARIANTS}),
    # registers and dynamic RoPE are not shift-invariant: cached decoding is the research one-call-per-token
    # semantics there (tests/test_lswt_modeling.py), not the uncached result
    "lswt": ContractCase(lambda **o: tiny_lswt(vocab_size=VOCAB, **o),
                         variants={name: LSWT_VARIANTS[name] for name in ("default", "plain_rope_mlp")}),
    "variable_memory_mixer": ContractCase(
        lambda **o: _memory_mixer("VariableMemoryMixerForCausalLM", **o), context=24, left_padding="refused",
        variants={"default": {}, "encoder_context": {"encoder_context": 9, "compression": 1}}),
    "memory_mixer": ContractCase(
        lambda **o: _memory_mixer("MemoryMixerForCausalLM", **o), left_padding="refused",
        variants={"memory_token": {}, "memory_embedding": {"combination": "embedding"}}),
    "variable_memory_transformer": ContractCase(
        _memory_transformer, context=20,
        variants={"fixed_c2_proj": {}, "variable": {"fixed_memory": False, "compression": 1},
                  "no_memory": {"no_memory": True, "encoder_config": None, "compression": 1}}),
}

CAUSAL_LMS = sorted(config.model_type for config, _, causal_lm in memory_zoo.ARCHITECTURES if causal_lm is not None)
# (architecture, variant) pairs, as "architecture-variant" test ids
VARIANT_IDS = [f"{arch}-{variant}" for arch in CAUSAL_LMS for variant in (CASES[arch].variants if arch in CASES
                                                                           else {"default": {}})]


def case_of(architecture: str) -> ContractCase:
    if architecture not in CASES:
        pytest.fail(f"{architecture} is a causal LM in memory_zoo.ARCHITECTURES but has no ContractCase in "
                    f"{Path(__file__).name}: add one (a small random model and its context limit).")
    return CASES[architecture]


def build(architecture: str, variant: str | None = None) -> torch.nn.Module:
    case = case_of(architecture)
    variant = variant or next(iter(case.variants))
    return case.build(**case.variants[variant])


def prompt_and_length(case: ContractCase, prompt_length: int = 5, wanted: int = 20) -> tuple[torch.Tensor, int]:
    """A prompt of `prompt_length` tokens and how many to generate: `wanted` (past every training window of the
    small models), but within a fixed context."""
    new_tokens = wanted if case.context is None else min(wanted, case.context - prompt_length)
    prompt = torch.randint(3, VOCAB, (2, prompt_length), generator=torch.Generator().manual_seed(7))
    return prompt, new_tokens


@contextmanager
def no_warnings_printed() -> Iterator[None]:
    """Fail if Python warnings or transformers/model log records of level WARNING and above are emitted inside."""
    with printed_warnings() as printed:
        yield
    assert not printed, "warnings were printed:\n" + "\n".join(printed)


def generate(model, prompt: torch.Tensor, new_tokens: int, **kwargs) -> torch.Tensor:
    return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_save_reload(architecture, tmp_path):
    model = build(architecture)
    input_ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    with no_warnings_printed():
        model.save_pretrained(tmp_path)
        config = AutoConfig.from_pretrained(tmp_path)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(config) is type(model.config) and type(reloaded) is type(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reloaded(input_ids).logits)
        assert base(input_ids) is not None


MODES = {
    "greedy": {"do_sample": False},
    "beam": {"num_beams": 3, "do_sample": False},
    "sample": {"do_sample": True, "top_k": 0, "num_return_sequences": 2},
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_cached_equals_uncached(variant, mode):
    architecture, variant = variant.split("-", 1)
    case, model = case_of(architecture), build(architecture, variant)
    prompt, new_tokens = prompt_and_length(case)
    outputs = []
    with no_warnings_printed():
        for use_cache in (True, False):
            torch.manual_seed(11)
            outputs.append(generate(model, prompt, new_tokens, use_cache=use_cache, **MODES[mode]))
    assert outputs[0].shape[1] == prompt.shape[1] + new_tokens
    assert torch.equal(outputs[0], outputs[1]), f"{mode}: cached and uncached generation differ"


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_left_padding(variant):
    architecture, variant = variant.split("-", 1)
    case, model = case_of(architecture), build(architecture, variant)
    prompt, new_tokens = prompt_and_length(case)
    padded, mask = prompt.clone(), torch.ones_like(prompt)
    padded[1, :2], mask[1, :2] = 0, 0  # row 1 is a 3-token prompt, left-padded
    if case.left_padding == "refused":
        with pytest.raises(ValueError, match="(?i)left padding(.|\n)*padding_side = 'right'"):
            generate(model, padded, new_tokens, attention_mask=mask, do_sample=False)
        return
    fix = {}
    if case.left_padding == "uncached":
        with pytest.raises(ValueError, match="(?i)pad(.|\n)*use_cache=False"):
            generate(model, padded, new_tokens, attention_mask=mask, do_sample=False)
        fix = {"use_cache": False}
    with no_warnings_printed():
        batched = generate(model, padded, new_tokens, attention_mask=mask, do_sample=False, **fix)
        alone = [generate(model, prompt[:1], new_tokens, do_sample=False),
                 generate(model, prompt[1:, 2:], new_tokens, do_sample=False)]
    assert torch.equal(batched[0], alone[0][0])
    assert torch.equal(batched[1, 2:], alone[1][0])
    with torch.no_grad():  # the padded forward pass too: real positions as if the row were alone
        padded_logits = model(padded, attention_mask=mask, use_cache=False).logits
        torch.testing.assert_close(padded_logits[1, 2:], model(prompt[1:, 2:]).logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_cache_chunks(variant):
    """Feeding a sequence through the cache in uneven multi-token pieces gives the one-shot logits."""
    architecture, variant = variant.split("-", 1)
    case, model = case_of(architecture), build(architecture, variant)
    length = 30 if case.context is None else case.context
    input_ids = torch.randint(3, VOCAB, (2, length), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), no_warnings_printed():
        full = model(input_ids).logits
        pieces, cache, start = [], None, 0
        for size in (3, 1, 4, 2, 7, 1, length):
            stop = min(start + size, length)
            if start == stop:
                break
            out = model(input_ids[:, start:stop], cache=cache, use_cache=True)
            pieces.append(out.logits)
            cache, start = out.cache, stop
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_both_cache_names(architecture):
    """The cache goes in and comes out under either name, with no deprecation message, on every release."""
    model = build(architecture)
    input_ids = torch.randint(3, VOCAB, (1, 6), generator=torch.Generator().manual_seed(9))
    with torch.no_grad(), no_warnings_printed():
        first = model(input_ids[:, :4], use_cache=True)
        assert first.cache is first.past_key_values is first[CACHE_NAME]
        by_new = model(input_ids[:, 4:], cache=first.cache, use_cache=True).logits
        first = model(input_ids[:, :4], use_cache=True)
        by_old = model(input_ids[:, 4:], past_key_values=first.past_key_values, use_cache=True).logits
        with pytest.raises(ValueError, match="passed twice"):
            model(input_ids[:, 4:], cache=first.cache, past_key_values=first.cache)
    assert torch.equal(by_new, by_old)
    assert torch.allclose(by_new, model(input_ids).logits[:, 4:], atol=1e-5, rtol=1e-5)


BAD_INPUTS = {  # name -> (keyword arguments from good input_ids [2, 6], error class, message pattern)
    "float_ids": (lambda ids: {"input_ids": ids.float()}, TypeError, r"integer token ids.*torch\.float32"),
    "bool_ids": (lambda ids: {"input_ids": ids > 5}, TypeError, r"integer token ids.*torch\.bool"),
    "ids_past_vocab": (lambda ids: {"input_ids": ids + VOCAB}, ValueError, rf"vocabulary has {VOCAB} ids.*tokenizer"),
    "negative_ids": (lambda ids: {"input_ids": ids - 100}, ValueError, r"token ids from -\d+.*-100"),
    "empty_ids": (lambda ids: {"input_ids": ids[:, :0]}, ValueError, r"input_ids is empty.*bos_token"),
    "zero_rows": (lambda ids: {"input_ids": ids[:0]}, ValueError, r"input_ids is empty"),
    "one_dimensional": (lambda ids: {"input_ids": ids[0]}, ValueError, r"\[batch, seq_len\].*input_ids\[None\]"),
    "ids_as_list": (lambda ids: {"input_ids": ids.tolist()}, TypeError, r"return_tensors='pt'"),
    "mask_batch": (lambda ids: {"input_ids": ids, "attention_mask": torch.ones(3, 6)}, ValueError,
                   r"attention_mask \(3, 6\) does not fit input_ids \(2, 6\)"),
    "mask_too_short": (lambda ids: {"input_ids": ids, "attention_mask": torch.ones(2, 4)}, ValueError,
                       r"attention_mask \(2, 4\) does not fit"),
    "labels_shape": (lambda ids: {"input_ids": ids, "labels": ids[:, :4]}, ValueError,
                     r"labels \(2, 4\) must have the shape of input_ids \(2, 6\)"),
    "float_labels": (lambda ids: {"input_ids": ids, "labels": ids.float()}, TypeError, r"labels must hold integer"),
}


@pytest.mark.parametrize("bad", sorted(BAD_INPUTS))
@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_bad_inputs_are_refused_with_the_fix(architecture, bad):
    """Wrong ids, masks and labels get an error naming the argument, what was seen and the fix, before any layer."""
    model = build(architecture)
    make, error, pattern = BAD_INPUTS[bad]
    input_ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    kwargs = make(input_ids)
    with pytest.raises(error, match=pattern):
        model(**kwargs)
    base = getattr(model, model.base_model_prefix, None)
    if isinstance(base, torch.nn.Module) and "labels" not in kwargs:  # the bare model (AutoModel) checks the same
        with pytest.raises(error, match=pattern):
            base(**kwargs)


# Configurations whose multi-token calls compute otherwise than one-token calls (LSWT trims its memory after every
# call; dynamic RoPE rescales with a call's length): assisted decoding must then verify one token per call.
ASSISTED_EXTRA = {"lswt-trimmed_memory": {"max_key_values": 6}, "lswt-dynamic_rope":
                  {"rope_dynamic": True, "max_position_embeddings": 10, "max_key_values": 9}}


def _build_any(variant: str) -> torch.nn.Module:
    architecture, name = variant.split("-", 1)
    overrides = ASSISTED_EXTRA.get(variant)
    return case_of(architecture).build(**overrides) if overrides is not None else build(architecture, name)


def _draft_model(variant: str) -> torch.nn.Module:
    """A draft model that agrees with `variant`'s model on some tokens only, so that drafts are both accepted and
    rejected: the architecture's next variant (a different configuration), its weights perturbed."""
    architecture = variant.split("-", 1)[0]
    siblings = [v for v in VARIANT_IDS if v.startswith(f"{architecture}-")]
    draft = _build_any(siblings[(siblings.index(variant) + 1) % len(siblings)] if variant in siblings else siblings[0])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in draft.parameters():
            if parameter.is_floating_point() and parameter.numel() > 1:
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(noise * 0.6 * parameter.std())
    return draft


@contextmanager
def counting_rollbacks() -> Iterator[list[int]]:
    """Record the token counts every cache is asked to take back (`crop(-n)`), to know the check rejected drafts."""
    taken_back: list[int] = []
    originals = {cls: cls.__dict__["crop"] for cls in (Cache, RollbackMixin)}

    def spy(original):
        def crop(self, tokens_to_remove: int) -> None:
            taken_back.append(-tokens_to_remove)
            return original(self, tokens_to_remove)
        return crop

    for cls, original in originals.items():
        cls.crop = spy(original)
    try:
        yield taken_back
    finally:
        for cls, original in originals.items():
            cls.crop = original


# What transformers itself prints here for its own models too (a LlamaForCausalLM with a Llama assistant prints the
# first; the second is its reminder when a sequence outgrows max_position_embeddings, which dynamic RoPE is for).
UPSTREAM_WARNINGS = ("Passing `generation_config` together with generation-related arguments",
                     "exceeded the model's predefined maximum length")

DECODINGS = {"assisted": lambda variant: {"assistant_model": _draft_model(variant)},
             "prompt_lookup": lambda variant: {"prompt_lookup_num_tokens": 3}}


@pytest.mark.parametrize("decoding", sorted(DECODINGS))
@pytest.mark.parametrize("variant", VARIANT_IDS + sorted(ASSISTED_EXTRA))
def test_assisted_decoding_equals_greedy(variant, decoding):
    """Assisted (draft model) and prompt-lookup decoding keep exactly the tokens greedy decoding picks, taking
    rejected draft tokens back out of the cache (`crop`); a repetitive prompt gives prompt lookup something to find."""
    architecture = variant.split("-", 1)[0]
    case, model = case_of(architecture), _build_any(variant)
    pattern = torch.randint(3, VOCAB, (1, 4), generator=torch.Generator().manual_seed(9))
    prompt = pattern.repeat(1, 2)
    new_tokens = 16 if case.context is None else min(16, case.context - prompt.shape[1])
    # No min_new_tokens here: transformers warns when it passes that on to the assistant's own generate.
    settings = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    plain = model.generate(prompt, **settings)
    options = DECODINGS[decoding](variant)
    with printed_warnings() as printed, counting_rollbacks() as taken_back:
        drafted = model.generate(prompt, **settings, **options)
    ours = [line for line in printed if not any(upstream in line for upstream in UPSTREAM_WARNINGS)]
    assert not ours, "warnings were printed:\n" + "\n".join(ours)
    assert torch.equal(drafted, plain), f"{decoding} decoding changed the tokens greedy decoding picks"
    if decoding == "assisted":
        assert any(taken_back), "no draft token was ever rejected: the check did not exercise crop()"


@pytest.mark.parametrize("variant", [v for v in VARIANT_IDS if v.split("-", 1)[0] != "memory_layers"])
def test_crop_takes_tokens_back_exactly(variant):
    """After recording, `crop(-n)` leaves the cache as if the last n tokens were never fed: the next tokens get the
    logits of a run that never saw them (the replay of accepted tokens included)."""
    architecture, name = variant.split("-", 1)
    model = build(architecture, name)
    ids = torch.randint(3, VOCAB, (1, 14), generator=torch.Generator().manual_seed(4))
    wrong = torch.randint(3, VOCAB, (1, 4), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(ids).logits[:, 9:]
        cache = model(ids[:, :6], use_cache=True).cache
        cache.activate_past_recording()
        cache = model(torch.cat([ids[:, 6:8], wrong], dim=1), cache=cache, use_cache=True).cache
        cache.crop(-4)  # keep ids 6 and 7, forget the wrong ones
        assert cache.get_seq_length() == 8
        cache = model(ids[:, 8:9], cache=cache, use_cache=True).cache
        cache.crop(0)
        got = model(ids[:, 9:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_output_attentions(variant):
    """`output_attentions=True` returns one `[batch, heads, new tokens, keys]` tensor per block where the record says
    the architecture has attention-like weights (the same rows through the cache, the same logits as without),
    and is refused naming why where it says there are none, never a silent None."""
    architecture, name = variant.split("-", 1)
    model = build(architecture, name)
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))
    if record_of(architecture).attentions is None:
        with pytest.raises(ValueError, match="does not return attentions"):
            model(ids, output_attentions=True)
        return
    with torch.no_grad(), no_warnings_printed():
        plain = model(ids)
        full = model(ids, output_attentions=True)
        cache = model(ids[:, :3], use_cache=True).cache  # the rest crosses chunk boundaries of the chunked models
        rest = model(ids[:, 3:], cache=cache, use_cache=True, output_attentions=True)
    torch.testing.assert_close(full.logits, plain.logits, atol=1e-5, rtol=1e-5)
    config = model.config
    blocks = (config.decoder_config.num_hidden_layers if hasattr(config, "decoder_config")
              else getattr(config, "decoder_layers", None) or config.num_hidden_layers)
    assert isinstance(full.attentions, tuple) and len(full.attentions) == blocks
    for weights, cached in zip(full.attentions, rest.attentions, strict=True):
        assert weights.dim() == 4 and weights.shape[0] == 2 and weights.shape[2] == ids.shape[1]
        assert torch.isfinite(weights).all()
        torch.testing.assert_close(cached, weights[:, :, 3:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_output_hidden_states_is_answered_or_refused(architecture):
    """`output_hidden_states=True` gives one state per layer boundary, or a ValueError naming it: never a silent None."""
    model = build(architecture)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad():
            states = model(ids, output_hidden_states=True).hidden_states
    except ValueError as error:
        assert "does not return hidden_states" in str(error)
        return
    assert isinstance(states, tuple) and len(states) >= 2 and all(s.shape[:2] == ids.shape for s in states)


def test_generation_docs_name_every_causal_lm():
    """docs/generation.md's `output_attentions` table has a row for every causal LM, refused ones in the refused row."""
    section = (Path(__file__).parents[1] / "docs" / "generation.md").read_text().split("## `output_attentions`")[1]
    rows = {line.split("|")[1]: line for line in section.splitlines() if line.startswith("| `")}
    for architecture in CAUSAL_LMS:
        row = next((line for names, line in rows.items() if f"`{architecture}`" in names), None)
        assert row is not None, f"docs/generation.md: no output_attentions row for {architecture}"
        assert ("refused" in row) == (record_of(architecture).attentions is None), row


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_generation_past_context(architecture):
    case = case_of(architecture)
    if case.context is None:
        pytest.skip(f"{architecture} has no fixed context: it generates past any training window")
    model = build(architecture)
    prompt, _ = prompt_and_length(case)
    with pytest.raises(ValueError, match=str(case.context)):
        generate(model, prompt, case.context, do_sample=False)
    with no_warnings_printed():  # filling the context exactly is fine
        assert generate(model, prompt, case.context - prompt.shape[1], do_sample=False).shape[1] == case.context


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_cli_generate(architecture, tmp_path, capsys):
    """`memory-zoo generate DIR PROMPT` prints the greedy continuation, the same with and without the cache."""
    from memory_zoo.cli import main as cli_main

    case, model = case_of(architecture), build(architecture)
    tokenizer = train_tokenizer(vocab_size=90)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    _, new_tokens = prompt_and_length(case, prompt_length=4, wanted=8)
    prompt = "The quick brown fox"
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)
    printed = []
    with no_warnings_printed():
        for extra in ([], ["--no-cache"]):
            assert cli_main(["generate", str(tmp_path), prompt, "--max-new-tokens", str(new_tokens), *extra]) in (0, None)
            printed.append(capsys.readouterr().out.strip())
    assert printed[0] == printed[1] == tokenizer.decode(expected[0], skip_special_tokens=True)


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_remote_code_load(architecture, tmp_path):
    """The saved folder loads where memory-zoo cannot be imported (AutoConfig, AutoModel, AutoModelForCausalLM,
    pipeline), gives the same logits and generations, saves itself again with the same code, and prints no
    warning."""
    case, model = case_of(architecture), build(architecture)
    tokenizer = train_tokenizer(vocab_size=90)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompt, new_tokens = prompt_and_length(case, wanted=6)
    input_ids = torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        save_file({"input_ids": input_ids, "logits": model(input_ids).logits, "prompt": prompt,
                   "max_new_tokens": torch.tensor(new_tokens),
                   "generated": generate(model, prompt, new_tokens, do_sample=False)},
                  str(model_dir / "probe.safetensors"))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, str(PROBE), str(model_dir), str(tmp_path / "resaved")],
                            capture_output=True, text=True,
                            cwd=Path(__file__).parent, env=env, timeout=600)
    assert result.returncode == 0, (result.stderr.strip().splitlines() or [""])[-1] + "\n" + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocked"] and report["model_module"].startswith("transformers_modules.")
    assert report["config_class"] == type(model.config).__name__
    assert report["logits_max_diff"] <= 1e-5
    assert report["cached_equals_saved"] and report["cached_equals_uncached"]
    assert report["pipeline_text"].startswith("The quick")
    assert report["resaved_max_diff"] <= 1e-5
    code = sorted(path.name for path in model_dir.glob("*.py"))
    assert code == sorted(path.name for path in (tmp_path / "resaved").glob("*.py"))
    for name in code:
        assert (tmp_path / "resaved" / name).read_text() == (model_dir / name).read_text()
    assert report["warnings"] == []


def test_every_causal_lm_has_a_case():
    assert set(CASES) == set(CAUSAL_LMS), "CASES must cover exactly the causal LMs of memory_zoo.ARCHITECTURES"
