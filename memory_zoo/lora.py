"""LoRA fine-tuning of every memory-zoo architecture with PEFT (`pip install peft`; optional for the package).

`LORA_TARGET_MODULES[model_type]` lists the module-name suffixes LoRA adapts: the linear projections that read and
write the residual stream of every block (attention or token mixing, MLP, memory read-out). PEFT matches a suffix
against the end of a module's dotted name, so `"mlp.up_proj"` adapts `model.layers.3.mlp.up_proj`; names a
configuration does not build are skipped. LoRA (in PEFT) adapts `nn.Linear`, `nn.Embedding` and `nn.Conv*` layers
only, so parameters that live outside such layers (mixing matrices, leaky-average rates, product keys, ...) cannot
carry an adapter. They stay frozen, or train in full next to the adapter where they form a module of their own:
`lora_config(model, modules_to_save=["token_mixer.mix"])` (Masked Mixer mixing matrices), `["memory_values"]`
(the shared Memory Layers value table), `["pmem"]` (Memory Mosaics persistent memories) are saved with the adapter,
reload and merge like it (tested in `tests/test_lora.py`).

| model_type | adapted (suffixes) | not adaptable by LoRA / not adapted by default |
|---|---|---|
| `masked_mixer` | `token_mixer.in_proj`, `token_mixer.out_proj` (multi-head / out-proj variants), `mlp.up_proj`, `mlp.down_proj` | the `L x L` masked mixing matrices (`MaskedMixerPositionMixing`, a parameter module, also `mix_out` of expanded mixing); embeddings, `lm_head` |
| `memory_mosaics` | `key_features.proj`, `value_features.proj`, `o_proj` (context and persistent memories) | leaky-average and kernel rates (`*_beta`), `lowrlinearconv` mixing `coef`, persistent `memory_keys` / `memory_values` tables |
| `memory_layers` | `self_attn.{q,k,v,o}_proj`, dense `mlp.{gate,up,down}_proj`, product-key memory `mlp.query_proj` (slot selection), `mlp.value_proj`, `mlp.swilu_projection` (PK+ read-out) | product `keys` and the value table (`MemoryLayersValueTable`, not a Linear/Embedding); `mlp.gating` (one output) not adapted |
| `lswt` | `self_attn.{q,k,v,o}_proj`, `mlp.{up,gate,down}_proj` | attention registers, q/k head norms; `input_proj` / `head_proj` / embeddings not adapted; the preference-head pooler (`LSWTForPreferenceHeads`) has its own adapter layers and is not adapted |
| `mixer_autoencoder` | encoder and decoder blocks: `token_mixer.in_proj`, `token_mixer.out_proj` (head variants), `mlp.up_proj`, `mlp.down_proj` | mixing matrices; the bottleneck `down` / `up` / `projection` (plain Linears: add them to `target_modules` to adapt the code) |
| `variable_memory_mixer` | as `mixer_autoencoder` (encoder and decoder blocks) | mixing matrices; `down` / `up` / `decoder_proj` not adapted by default |
| `memory_mixer` | as `mixer_autoencoder` (encoder and decoder blocks) | mixing matrices; `down` / `up` / `decoder_proj` not adapted by default |
| `transformer_autoencoder` | Llama blocks of encoder and decoder: `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj` | `down` / `up` / `projection` / `bridge_proj` not adapted by default |
| `variable_memory_transformer` | as `transformer_autoencoder` | `down` / `up` / `decoder_proj` not adapted by default |
| `retrieval_mixer` | `mlp.up_proj`, `mlp.down_proj` | the `n x n` slot-mixing matrices (`slot_mixing`, train them with `modules_to_save=["slot_mixing"]`); `score_head` not adapted |

Suffixes are qualified (`self_attn.q_proj`, not `q_proj`) where a bare name would also match a module LoRA cannot
wrap (the LSWT preference pooler's `q_proj` is an adapter module, not an `nn.Linear`).

Importing `memory_zoo` calls [`register_peft_target_modules`] when PEFT is installed, so
`LoraConfig(task_type="CAUSAL_LM")` (or `"SEQ_CLS"`) without `target_modules` picks these defaults for memory-zoo
models; [`lora_config`] builds the config explicitly (the right `task_type` included).

Sequence classifiers (`...ForSequenceClassification`, one per causal LM) adapt the same targets with
`task_type="SEQ_CLS"`: PEFT then trains their new `score` head in full next to the adapter (it adds `score` to
`modules_to_save`, as for transformers' own classifiers), saves it with the adapter and restores it on
`PeftModel.from_pretrained`, also onto a classifier loaded from the causal-LM checkpoint (whose `score` starts random).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from .architectures import ARCHITECTURES

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

# model_type -> module-name suffixes LoRA adapts (the records' `lora_targets`; the table in the module docstring).
LORA_TARGET_MODULES: dict[str, list[str]] = {record.model_type: list(record.lora_targets) for record in ARCHITECTURES}

__all__ = ["LORA_TARGET_MODULES", "lora_config", "register_peft_target_modules"]


def register_peft_target_modules() -> bool:
    """Add `LORA_TARGET_MODULES` to PEFT's default LoRA targets (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`),
    so that a `LoraConfig` without `target_modules` works on memory-zoo models.

    Entries PEFT (or the user) already has for a model type are kept. Does nothing when PEFT is not installed, and
    never raises: it runs on `import memory_zoo`, which must not fail because of an optional integration.

    Returns:
        Whether the defaults are registered.
    """
    if importlib.util.find_spec("peft") is None:  # cheap: looks for the package without importing it
        return False
    try:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping
    except Exception as error:  # a broken or incompatible PEFT install must not break `import memory_zoo`
        logger.warning("memory-zoo: PEFT is installed but could not be imported (%s: %s); LoRA defaults for "
                       "memory-zoo models are not registered.", type(error).__name__, error)
        return False
    for model_type, targets in LORA_TARGET_MODULES.items():
        # A copy, so that PEFT (which turns the entry into a set on use) never shares our list.
        mapping.setdefault(model_type, list(targets))
    return True


def _model_type(model_or_model_type: str | PretrainedConfig | PreTrainedModel) -> str:
    if isinstance(model_or_model_type, str):
        return model_or_model_type
    config = getattr(model_or_model_type, "config", model_or_model_type)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise TypeError(f"Expected a model type, a config or a model, got {type(model_or_model_type).__name__}.")
    return model_type


def lora_config(
    model_or_model_type: str | PretrainedConfig | PreTrainedModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    **kwargs: Any,
) -> LoraConfig:
    """A `peft.LoraConfig` for a memory-zoo architecture, with its documented `target_modules`.

    Causal LMs get `task_type="CAUSAL_LM"` (so `PeftModel` generation works); sequence classifiers (a model, or a
    config whose `architectures` names one) get `"SEQ_CLS"` (PEFT trains and saves their `score` head in full);
    autoencoders get no task type: the plain `PeftModel` passes `forward(input_ids=..., labels=...)`, `encode` and
    `decode` straight through to the model, which is what a reconstruction model needs (the feature-extraction
    wrapper would add arguments it ignores).

    Args:
        model_or_model_type: a model, its config, or a `model_type` string (`"masked_mixer"`, ...).
        r: LoRA rank.
        alpha: LoRA scaling numerator (`lora_alpha`; the update is scaled by `alpha / r`).
        dropout: dropout on the adapter's input (`lora_dropout`).
        **kwargs: any other `LoraConfig` field; `target_modules` and `task_type` override the defaults.

    Raises:
        ImportError: PEFT is not installed.
        KeyError: the model type is not a memory-zoo architecture.
    """
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise ImportError("LoRA needs PEFT: pip install peft (or memory-zoo[test]).") from error
    model_type = _model_type(model_or_model_type)
    if model_type not in LORA_TARGET_MODULES:
        raise KeyError(f"{model_type!r} is not a memory-zoo architecture; LoRA targets are known for "
                       f"{', '.join(sorted(LORA_TARGET_MODULES))}. Pass target_modules to peft.LoraConfig instead.")
    kwargs.setdefault("target_modules", list(LORA_TARGET_MODULES[model_type]))
    kwargs.setdefault("task_type", _task_type(model_or_model_type, model_type))
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, **kwargs)


def _task_type(model_or_model_type: str | PretrainedConfig | PreTrainedModel, model_type: str) -> str | None:
    """PEFT's task type for a model, a config or a model type, from the architecture's record."""
    record = next(record for record in ARCHITECTURES if record.model_type == model_type)
    if isinstance(model_or_model_type, str):
        class_names = []
    elif hasattr(model_or_model_type, "config"):  # a model: its class (by name, so remote-code classes count too)
        class_names = [type(model_or_model_type).__name__]
    else:  # a config: the classes it was saved from
        class_names = list(getattr(model_or_model_type, "architectures", None) or [])
    if record.sequence_classification_class_name in class_names:
        return "SEQ_CLS"
    return "CAUSAL_LM" if record.causal_lm_class_name else None
