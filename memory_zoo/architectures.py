"""One record per architecture: everything the rest of memory-zoo lists about it, in one place.

The Auto-class registry (`memory_zoo/__init__.py`), the converters' SOURCE table (`memory_zoo.conversion`), the model
card (`memory_zoo.model_card`), PEFT's default LoRA targets (`memory_zoo.lora`) and the benchmarks all derive their
lists from `ARCHITECTURES` below. Adding an architecture is one `Architecture(...)` here plus its configuration,
modeling and (if it has research checkpoints) conversion files.

This module sits just above `configuration` in the import graph: it imports the config classes and names everything
else (model classes, converter modules) by string, resolved on use, so any layer may read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal

from .configuration import (
    LSWTConfig,
    MaskedMixerConfig,
    MemoryLayersConfig,
    MemoryMixerConfig,
    MemoryMosaicsConfig,
    MixerAutoencoderConfig,
    RetrievalMixerConfig,
    TransformerAutoencoderConfig,
    VariableMemoryMixerConfig,
    VariableMemoryTransformerConfig,
)
from .configuration.zoo_config import ZooConfig

Role = Literal["causal_lm", "autoencoder", "task"]


@dataclass(frozen=True)
class Parity:
    """How a converter's parity with the research code is tested: the test file, the tolerance it asserts on float32
    logits, and the largest difference observed when the test was written."""

    test: str
    tolerance: str
    observed: str


@dataclass(frozen=True)
class Research:
    """The research code an architecture reproduces: repository, the commit the parity fixtures were made at, and
    the fixtures folder (with its generator script) under tests/fixtures/."""

    repository: str
    commit: str
    fixtures: tuple[str, ...] = ()


@dataclass(frozen=True)
class Architecture:
    """Everything memory-zoo knows about one architecture (one `model_type`)."""

    model_type: str
    name: str  # for people: model cards, tables
    description: str  # one line, for model cards
    config_class: type[ZooConfig]
    modeling_module: str  # module under memory_zoo.modeling
    # transformers Auto class name -> model class name in `modeling_module` (causal LMs: AutoModel,
    # AutoModelForCausalLM and AutoModelForSequenceClassification)
    auto_classes: dict[str, str]
    role: Role  # causal LM, autoencoder (encode/decode, no causal LM), or task model (reads embeddings)
    research: Research
    lora_targets: tuple[str, ...]  # module-name suffixes PEFT adapts by default (see memory_zoo/lora.py)
    cache: str  # what the generation cache holds and supports, for people
    kernels: tuple[str, ...] = ()  # memory_zoo/hub_kernels/<name> kernels its models can load
    converter: str | None = None  # module under memory_zoo.conversion
    sources: tuple[str, ...] = ()  # `memory-zoo convert SOURCE` names
    checkpoint_is_folder: bool = False  # research checkpoints are folders (else one weights file, or a folder holding it)
    parity: Parity | None = None
    extra_exports: tuple[str, ...] = field(default=())  # further public model classes of `modeling_module`
    # What `output_attentions=True` returns per block, for people (docs/generation.md); None: refused, no such weights
    attentions: str | None = None

    @property
    def base_class_name(self) -> str:
        return self.auto_classes["AutoModel"]

    @property
    def causal_lm_class_name(self) -> str | None:
        return self.auto_classes.get("AutoModelForCausalLM")

    @property
    def sequence_classification_class_name(self) -> str | None:
        """The `...ForSequenceClassification` class (every causal LM has one: `zoo_classification`), or None."""
        return self.auto_classes.get("AutoModelForSequenceClassification")

    def model_class(self, auto_class: str = "AutoModel") -> type:
        """The model class registered for `auto_class` (imported on first use)."""
        module = importlib.import_module(f"memory_zoo.modeling.{self.modeling_module}")
        return getattr(module, self.auto_classes[auto_class])

    def class_named(self, name: str) -> type | None:
        """A public model class of this architecture by name (e.g. the class a saved config's `architectures` names)."""
        if name not in (*self.auto_classes.values(), *self.extra_exports):
            return None
        return getattr(importlib.import_module(f"memory_zoo.modeling.{self.modeling_module}"), name)

    @property
    def fsdp_units(self) -> list[str]:
        """The blocks FSDP wraps one by one: the model's own `_no_split_modules` (kept on the class, which travels
        as remote code)."""
        return list(self.model_class()._no_split_modules or [])


_MIXER_BLOCK = ("token_mixer.in_proj", "token_mixer.out_proj", "mlp.up_proj", "mlp.down_proj")
_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_SWIGLU = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

MASKEDMIXERS = Research("blbadger/maskedmixers", "8f9515d4f0a76740babc9437594a3c59ecbcc611",
                        ("masked_mixer", "masked_mixer_retrieval"))
MEMORYMODELS = Research("blbadger/memorymodels", "b5bbc77497f15e7814f4428847a299d28b00a76a",
                        ("mixer_autoencoder", "memory_transformer", "compression_metrics"))

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        model_type="masked_mixer", name="Masked Mixer",
        description="a decoder whose token mixing is a learned lower-triangular matrix per block (no attention, no "
                    "positional embeddings), followed by a per-token MLP",
        config_class=MaskedMixerConfig, modeling_module="modeling_masked_mixer",
        auto_classes={"AutoModel": "MaskedMixerModel", "AutoModelForCausalLM": "MaskedMixerForCausalLM",
                      "AutoModelForSequenceClassification": "MaskedMixerForSequenceClassification"},
        role="causal_lm", research=MASKEDMIXERS, lora_targets=_MIXER_BLOCK,
        cache="the mixed inputs of every block so far (O(T) per token); beam reorder; crop (assisted decoding); "
              "left padding exact",
        attentions="mixing matrices [batch, mixing heads, new, cached + new] (learned, input-independent)",
        kernels=("masked_mixing",), converter="masked_mixer",
        sources=("masked-mixer", "multiheaded-mixer", "multiconv-mixer"),
        parity=Parity("tests/test_masked_mixer_conversion.py", "1e-5 (absolute and relative)", "9.6e-7"),
    ),
    Architecture(
        model_type="memory_mosaics", name="Memory Mosaics",
        description="a stack of associative memories (leaky-average keys, look-ahead values, kernel-regression "
                    "read-out) in place of attention and MLP",
        config_class=MemoryMosaicsConfig, modeling_module="modeling_memory_mosaics",
        auto_classes={"AutoModel": "MemoryMosaicsModel", "AutoModelForCausalLM": "MemoryMosaicsForCausalLM",
                      "AutoModelForSequenceClassification": "MemoryMosaicsForSequenceClassification"},
        role="causal_lm",
        research=Research("facebookresearch/MemoryMosaics", "1fff63bf1c754f87a4c1f370e02f30a259b6e825",
                          ("memory_mosaics",)),
        lora_targets=("key_features.proj", "value_features.proj", "o_proj"),
        cache="keys and values of every past token plus the leaky-average states; beam reorder; crop by snapshot "
              "and replay (assisted decoding); left padding exact",
        attentions="in-context memory read weights [batch, heads, new, finished values]",
        kernels=("leaky_average",), converter="memory_mosaics", sources=("memory-mosaics",),
        parity=Parity("tests/test_memory_mosaics_conversion.py", "1e-4 (absolute)", "3.8e-5"),
    ),
    Architecture(
        model_type="memory_layers", name="Memory Layers at Scale",
        description="a Llama-style transformer whose chosen blocks use a product-key memory (PK / PK+) in place of "
                    "the MLP",
        config_class=MemoryLayersConfig, modeling_module="modeling_memory_layers",
        auto_classes={"AutoModel": "MemoryLayersModel", "AutoModelForCausalLM": "MemoryLayersForCausalLM",
                      "AutoModelForSequenceClassification": "MemoryLayersForSequenceClassification"},
        role="causal_lm",
        research=Research("facebookresearch/memory", "7f85280cee4a4696f5e0444d5657dc09282408ff", ("memory_layers",)),
        lora_targets=(*_ATTENTION, *_SWIGLU, "mlp.query_proj", "mlp.value_proj", "mlp.swilu_projection"),
        cache="a transformers DynamicCache of keys and values (memory lookups need none); crop, beam reorder, "
              "assisted decoding; left padding exact",
        attentions="attention weights [batch, heads, new, cached + new]",
        kernels=("embedding_bag",), converter="memory_layers", sources=("memory-layers",),
        checkpoint_is_folder=True,
        parity=Parity("tests/test_memory_layers_conversion.py", "1e-4 (absolute)", "0 (exact)"),
    ),
    Architecture(
        model_type="lswt", name="Long-Short-Working Transformer",
        description="a pre-LN transformer with a Transformer-XL memory of earlier segments' keys and values",
        config_class=LSWTConfig, modeling_module="modeling_lswt",
        auto_classes={"AutoModel": "LSWTModel", "AutoModelForCausalLM": "LSWTForCausalLM",
                      "AutoModelForSequenceClassification": "LSWTForSequenceClassification"},
        role="causal_lm",
        research=Research("Avelina9X/memory-transformer-pt4", "5219fa7b0e64ded2173e98c11169c76c0564fc48", ("lswt",)),
        lora_targets=(*_ATTENTION, "mlp.up_proj", "mlp.gate_proj", "mlp.down_proj"),
        cache="the XL memory: raw keys and values of past segments, trimmed to max_key_values; beam reorder; crop by "
              "snapshot and replay (assisted decoding)",
        attentions="attention weights [batch, heads, new, registers + cached + new]",
        converter="lswt", sources=("lswt",), checkpoint_is_folder=True,
        parity=Parity("tests/test_lswt_conversion.py", "1e-4 (absolute)", "2e-6"),
        extra_exports=("LSWTForPreferenceHeads",),
    ),
    Architecture(
        model_type="mixer_autoencoder", name="Masked-mixer autoencoder",
        description="a causal mixer encoder compresses a window of tokens into one vector that a mixer decoder "
                    "expands back into the window",
        config_class=MixerAutoencoderConfig, modeling_module="modeling_mixer_autoencoder",
        auto_classes={"AutoModel": "MixerAutoencoderModel"}, role="autoencoder", research=MEMORYMODELS,
        lora_targets=_MIXER_BLOCK, cache="none (encode / decode one window)", kernels=("masked_mixing",),
        converter="mixer_autoencoder", sources=("autoencoding-mixer",),
        parity=Parity("tests/test_mixer_autoencoder.py", "1e-5 (absolute)", "1.2e-6"),
    ),
    Architecture(
        model_type="variable_memory_mixer", name="Variable-memory mixer",
        description="a causal LM that encodes each finished chunk into one memory vector and decodes every chunk from "
                    "the memories of the chunks before it",
        config_class=VariableMemoryMixerConfig, modeling_module="modeling_memory_mixer",
        auto_classes={"AutoModel": "VariableMemoryMixerForCausalLM",
                      "AutoModelForCausalLM": "VariableMemoryMixerForCausalLM",
                      "AutoModelForSequenceClassification": "VariableMemoryMixerForSequenceClassification"},
        role="causal_lm", research=MEMORYMODELS, lora_targets=_MIXER_BLOCK,
        cache="the memories of finished chunks plus the decoder's mixing state of the current chunk; beam reorder; "
              "crop by snapshot and replay (assisted decoding); left padding refused",
        attentions="decoder mixing matrices [batch, mixing heads, new, num_chunks + chunk_length] over each token's "
                   "chunk pass (the memory slots, then its tokens)",
        kernels=("masked_mixing",), converter="mixer_autoencoder", sources=("variable-memory-mixer",),
        parity=Parity("tests/test_mixer_autoencoder.py", "1e-5 (absolute)", "1.2e-6"),
    ),
    Architecture(
        model_type="memory_mixer", name="Memory mixer",
        description="a mixer decoder conditioned on an encoded memory of a chunk, as a first token or concatenated "
                    "to every embedding",
        config_class=MemoryMixerConfig, modeling_module="modeling_memory_mixer",
        auto_classes={"AutoModel": "MemoryMixerForCausalLM", "AutoModelForCausalLM": "MemoryMixerForCausalLM",
                      "AutoModelForSequenceClassification": "MemoryMixerForSequenceClassification"},
        role="causal_lm", research=MEMORYMODELS, lora_targets=_MIXER_BLOCK,
        cache="the memory of the previous chunk plus the decoder's mixing state; beam reorder; crop by snapshot and "
              "replay (assisted decoding); left padding refused",
        attentions="decoder mixing matrices [batch, mixing heads, new, 1 + chunk_length] over each token's chunk pass "
                   "(the memory token, then its tokens; chunk_length wide with the embedding combination)",
        kernels=("masked_mixing",), converter="mixer_autoencoder", sources=("memory-mixer",),
        parity=Parity("tests/test_mixer_autoencoder.py", "1e-5 (absolute)", "1.2e-6"),
    ),
    Architecture(
        model_type="transformer_autoencoder", name="Transformer autoencoder",
        description="the Llama-block counterpart of the masked-mixer autoencoder",
        config_class=TransformerAutoencoderConfig, modeling_module="modeling_memory_transformer",
        auto_classes={"AutoModel": "TransformerAutoencoderModel"}, role="autoencoder", research=MEMORYMODELS,
        lora_targets=(*_ATTENTION, *_SWIGLU), cache="none (encode / decode one window)",
        converter="memory_transformer", sources=("autoencoding-transformer",),
        parity=Parity("tests/test_memory_transformer_conversion.py", "1e-5 (absolute)", "0"),
    ),
    Architecture(
        model_type="variable_memory_transformer", name="Variable-memory transformer",
        description="the Llama-block counterpart of the variable-memory mixer",
        config_class=VariableMemoryTransformerConfig, modeling_module="modeling_memory_transformer",
        auto_classes={"AutoModel": "VariableMemoryTransformerForCausalLM",
                      "AutoModelForCausalLM": "VariableMemoryTransformerForCausalLM",
                      "AutoModelForSequenceClassification": "VariableMemoryTransformerForSequenceClassification"},
        role="causal_lm", research=MEMORYMODELS, lora_targets=(*_ATTENTION, *_SWIGLU),
        cache="the memories of finished chunks plus the decoder's key/value cache of the current chunk; beam "
              "reorder; crop by snapshot and replay (assisted decoding); left-padded batches decode without the cache",
        attentions="decoder attention weights [batch, heads, new, memory slots + chunk length] over each token's chunk "
                   "pass (its chunk's memory slots, then its tokens)",
        converter="memory_transformer", sources=("variable-memory-transformer",),
        parity=Parity("tests/test_memory_transformer_conversion.py", "1e-5 (absolute)", "0"),
    ),
    Architecture(
        model_type="retrieval_mixer", name="Retrieval mixer",
        description="a bidirectional mixer over the embeddings of a query and its candidate documents that scores "
                    "every candidate (the second stage of the Masked Mixer retrieval method)",
        config_class=RetrievalMixerConfig, modeling_module="modeling_retrieval_mixer",
        auto_classes={"AutoModel": "RetrievalMixerModel"}, role="task", research=MASKEDMIXERS,
        lora_targets=("mlp.up_proj", "mlp.down_proj"), cache="none (scores one set of embeddings)",
        converter="retrieval_mixer", sources=("retrieval-mixer",),
        parity=Parity("tests/test_retrieval_mixer.py", "1e-5 (absolute)", "2.4e-7"),
    ),
)

BY_MODEL_TYPE: dict[str, Architecture] = {record.model_type: record for record in ARCHITECTURES}
BY_SOURCE: dict[str, Architecture] = {source: record for record in ARCHITECTURES for source in record.sources}


def sources_of(converter: str) -> tuple[str, ...]:
    """The `memory-zoo convert` SOURCE names the converter module `converter` handles."""
    return tuple(source for record in ARCHITECTURES if record.converter == converter for source in record.sources)


def architecture(model_type: str) -> Architecture:
    """The record of `model_type`, or a KeyError naming the known ones."""
    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        raise KeyError(f"{model_type!r} is not a memory-zoo architecture; known: {', '.join(BY_MODEL_TYPE)}.") from None


__all__ = ["ARCHITECTURES", "Architecture", "BY_MODEL_TYPE", "BY_SOURCE", "Parity", "Research", "architecture",
           "sources_of"]
