"""Configurations of the transformer text-compression models of blbadger/memorymodels (Badger, arXiv 2602.13466):
the unrolled transformer autoencoder and the variable-memory transformer."""

# isort: off
# First: its import refuses a transformers older than the supported range by name, before the imports below fail.
from .zoo_versions import SUPPORTED_RANGE  # noqa: F401
# isort: on
import math
import warnings
from typing import Literal

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError
from transformers import LlamaConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec

from .zoo_config import ZooConfig, finite_number, positive, std


def research_llama_config(hidden_size: int, num_hidden_layers: int, num_attention_heads: int = 4,
                          vocab_size: int = 8000, **overrides) -> LlamaConfig:
    """The Llama configuration the research scripts build: `LlamaConfig(hidden_size=D, intermediate_size=4 * D,
    num_hidden_layers=n, num_attention_heads=h, vocab_size=V)`, i.e. LlamaConfig defaults otherwise (RMSNorm eps 1e-6,
    rope theta 10000, SiLU gated MLP, no biases). `overrides` are further LlamaConfig arguments."""
    settings = dict(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=num_hidden_layers,
                    num_attention_heads=num_attention_heads, vocab_size=vocab_size)
    settings.update(overrides)
    return LlamaConfig(**settings)


def _llama_sub_config(owner: str, name: str, value, vocab_size: int, default: LlamaConfig | None) -> LlamaConfig | None:
    """A Llama sub-config from a LlamaConfig, a dict of LlamaConfig arguments (`intermediate_size` defaults to
    `4 * hidden_size`, as in the research scripts, not to LlamaConfig's 11008) or None (`default`)."""
    if value is None:
        return None if default is None else LlamaConfig(**default.to_dict())
    if isinstance(value, dict):
        settings = {k: v for k, v in value.items() if k not in ("model_type", "transformers_version", "architectures")}
        if "hidden_size" in settings:
            settings.setdefault("intermediate_size", 4 * settings["hidden_size"])
        try:
            value = LlamaConfig(**settings)
        except (StrictDataclassError, TypeError, ValueError) as error:
            message = " ".join(str(error).split())
            raise StrictDataclassFieldValidationError(field=name, cause=ValueError(f"{owner}.{name}: {message}")) from error
    # The stacks never embed tokens themselves; keep the vocabulary in step with the model's anyway.
    value.vocab_size = vocab_size
    return value


def _check_llama(owner: str, name: str, config: LlamaConfig) -> None:
    """Refuse sizes and constants a LlamaConfig accepts but no model can be built or run with."""
    problems = []
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "head_dim"):
        value = getattr(config, field, None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{field} must be an integer >= 1, got {value!r}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if not problems and kv_heads and heads % kv_heads:
        problems.append(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
    rope_theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", 1.0))
    for field, value in (("rms_norm_eps", config.rms_norm_eps), ("rope_theta", rope_theta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            problems.append(f"{field} must be a finite number > 0, got {value!r}")
    dropout = config.attention_dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        problems.append(f"attention_dropout must be a probability in [0, 1), got {dropout!r}")
    if config.hidden_act not in ACT2FN:
        problems.append(f"hidden_act {config.hidden_act!r} is not an activation transformers knows")
    if problems:
        raise ValueError(f"{owner}.{name}: " + "; ".join(problems) + ".")


class _TransformerCompressionConfig(ZooConfig):
    """Fields and checks shared by the two configurations (not a model type of its own)."""

    # transformers 5 sub-configs: saved as nested dicts, and `attn_implementation` reaches both. Optional, so that a
    # missing encoder (no_memory) stays None instead of becoming a default 7B-sized LlamaConfig.
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=LlamaConfig, optional=True),
                            "decoder_config": SubConfigSpec(config_class=LlamaConfig, optional=True)}

    def _build_stacks(self, encoder_default: LlamaConfig | None, decoder_default: LlamaConfig | None) -> None:
        owner = type(self).__name__
        self.encoder_config = _llama_sub_config(owner, "encoder_config", self.encoder_config, self.vocab_size,
                                                encoder_default)
        self.decoder_config = _llama_sub_config(owner, "decoder_config", self.decoder_config, self.vocab_size,
                                                self.encoder_config or decoder_default)

    def validate_stacks(self) -> None:
        """Both Llama stacks can be built, and the bottleneck leaves a code."""
        owner = type(self).__name__
        self._require(self.decoder_config is not None, "decoder_config is required (a LlamaConfig or a dict of its "
                      "arguments).")
        for name in ("encoder_config", "decoder_config"):
            if getattr(self, name) is not None:
                _check_llama(owner, name, getattr(self, name))
        if self.encoder_config is not None:
            self._require(
                self.encoder_config.hidden_size // self.compression >= 1,
                f"compression={self.compression} leaves no code: the bottleneck has encoder_config.hidden_size // "
                f"compression = {self.encoder_config.hidden_size // self.compression} features. Use a compression of "
                "at most encoder_config.hidden_size (1 = no bottleneck).",
            )

    def _check_memory_position(self, length: int, field: str) -> None:
        self._require(
            -length <= self.memory_position <= -1,
            f"memory_position must be a negative position counted from the end, between -{field} = {-length} and -1 "
            f"(research: -1), got {self.memory_position!r}.",
        )

    @property
    def encoder_hidden_size(self) -> int:
        """Width of the encoder and of its memory vector (research `dim` / `encoder_dim`)."""
        return self.encoder_config.hidden_size

    @property
    def decoder_hidden_size(self) -> int:
        """Width of the decoder (research `decoder_dim` / `dim`)."""
        return self.decoder_config.hidden_size

    @property
    def memory_size(self) -> int:
        """Number of floats a window or chunk is compressed to: `encoder_config.hidden_size // compression` (the same
        name as in the mixer configs)."""
        return self.encoder_config.hidden_size // self.compression

    @property
    def code_size(self) -> int:
        """Deprecated name of `memory_size`."""
        warnings.warn("code_size is deprecated; use memory_size (the same number, the name every memory-zoo config "
                      "uses).", FutureWarning, stacklevel=2)
        return self.memory_size


@strict
class TransformerAutoencoderConfig(_TransformerCompressionConfig):
    r"""
    Configuration of a [`TransformerAutoencoderModel`] (research `UnrolledAutoencodingTransformer`).

    A window of `window_length` tokens is encoded by a causal Llama stack; the hidden state at its last position is
    the memory (optionally squeezed through a `down`/`up` bottleneck). The decoder rebuilds all positions in parallel
    from it: row `i` of its input holds the `D / 2` features of the memory starting at `i mod D` (cyclically, "unroll"),
    mapped back to `D` features by `projection`, and a causal Llama stack and `lm_head` give per-position logits.

    ```
    e = encoder(embed_tokens(ids))[:, -1]                 # [B, De]; code = down(e) when compression > 1
    m = up(down(bridge_proj(e)))                           # absent pieces skipped; width Dd
    logits = lm_head(decoder(projection(unroll(m, L))))    # [B, L, V]
    ```

    Args:
        vocab_size (`int`, defaults to 8000): token vocabulary (research `n_vocab`).
        encoder_config (`LlamaConfig` or `dict`, *optional*): the encoder's Llama settings: `hidden_size` (research
            `dim`), `intermediate_size` (default `4 * hidden_size` when given as a dict, as in the research scripts),
            `num_hidden_layers` (the layers that are RUN: an `AbbreviatedModel`'s `depth`), `num_attention_heads`,
            `num_key_value_heads`, `rms_norm_eps`, `rope_parameters` (or `rope_theta`), `attention_bias`, `mlp_bias`,
            `hidden_act`, `max_position_embeddings` (only read by scaled rope types). Defaults to
            `research_llama_config(512, 8, 4)`.
        decoder_config (`LlamaConfig` or `dict`, *optional*): the decoder's Llama settings; defaults to a copy of
            `encoder_config`. A different `hidden_size` adds `bridge_proj` (`Linear(De, Dd)`, research `decoder_dim`).
        window_length (`int`, defaults to 512): tokens per window (research `tokenized_length`). Longer inputs are
            refused. A shorter input of `T` tokens is encoded from its own last token and decoded at `T` positions
            (the first `T` rows of the unroll); the decoder is causal, so these equal the first `T` positions of
            `decode(memory)` at full length. The research models were trained on full (left-padded) windows only.
        compression (`int`, defaults to 1): bottleneck factor: `down = Linear(De, De // compression)` and
            `up = Linear(De // compression, De)`; 1 means no bottleneck. Needs equal encoder and decoder widths (the
            research model applies its encoder-width bottleneck after the bridge, so other combinations crash there).
        decoder_input (`str`, defaults to `"unroll"`): `"unroll"` (research `UnrolledAutoencodingTransformer`: cyclic
            sliding views plus `projection`) or `"repeat"` (older `AutoencodingTransformer`: the memory copied to every
            position, no `projection`).
        memory_position (`int`, defaults to -1): encoder position read as the memory, counted from the end (-1, the
            only position that has seen the whole window, in every research transformer autoencoder).
        encoder_final_norm (`bool`, defaults to `False`): apply the encoder stack's final RMSNorm before reading the
            memory. `False` for the research `AbbreviatedModel` (first `depth` layers, no norm); `True` for a plain
            `LlamaModel` encoder (e.g. a frozen pretrained LLM run on token ids).
        decoder_final_norm (`bool`, defaults to `False`): the same for the decoder (a plain `LlamaModel` decoder called
            with `inputs_embeds` applies it).
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation of linear and embedding weights.
        tie_word_embeddings (`bool`, defaults to `False`): must stay `False` (the research autoencoder never ties).
        pad_token_id / bos_token_id / eos_token_id (`int`, *optional*): special token ids (research: pad = eos).
    """

    model_type = "transformer_autoencoder"

    vocab_size: int = positive(default=8000)
    encoder_config: LlamaConfig | dict | None = None
    decoder_config: LlamaConfig | dict | None = None
    window_length: int = positive(default=512)
    compression: int = positive(default=1)
    decoder_input: Literal["unroll", "repeat"] = "unroll"
    memory_position: int = -1
    encoder_final_norm: bool = False
    decoder_final_norm: bool = False
    initializer_range: int | float = std(default=0.02)
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def _fill_defaults(self) -> None:
        self._build_stacks(research_llama_config(512, 8, 4, vocab_size=self.vocab_size), None)

    def validate_autoencoder(self) -> None:
        """Where the memory is read, how it is unrolled, and what the bottleneck needs."""
        self._check_memory_position(self.window_length, "window_length")
        if self.decoder_config is None or self.encoder_config is None:
            return
        self._require(self.decoder_input != "unroll" or self.decoder_hidden_size >= 2,
                      "decoder_input='unroll' needs decoder_config.hidden_size >= 2 (rows of D // 2 features).")
        self._require(
            self.compression == 1 or not self.has_bridge,
            f"compression={self.compression} needs equal encoder and decoder widths (got {self.encoder_hidden_size} "
            f"and {self.decoder_hidden_size}): the research model applies its encoder-width bottleneck after the "
            "bridge, which only runs when there is no bridge. Set compression=1 or give both Llama configs the same "
            "hidden_size.",
        )
        self._require(not self.tie_word_embeddings, "tie_word_embeddings must be False: the encoder's input embedding "
                      "and the decoder's lm_head are separate matrices in every research model.")

    @property
    def has_bridge(self) -> bool:
        """Whether the memory is projected from the encoder width to a different decoder width (`bridge_proj`)."""
        return self.encoder_hidden_size != self.decoder_hidden_size


@strict
class VariableMemoryTransformerConfig(_TransformerCompressionConfig):
    r"""
    Configuration of a [`VariableMemoryTransformerForCausalLM`] (research `VariableMemoryTransformer` /
    `ObjectiveMemoryTransformer`, which share their weights).

    The context is cut into `num_chunks` chunks of `chunk_length` tokens. Every finished chunk is encoded by a causal
    Llama encoder into one memory vector (the last position's final-normed hidden state, then the optional bottleneck
    and `decoder_proj` to the decoder width). Chunk `c` is decoded by a causal Llama decoder that reads, before the
    chunk's own tokens, memory slots holding the memories of chunks `0 .. c - 1`:

    ```
    fixed_memory=True:  [m_0, ..., m_{c-1}, fill x (num_chunks - c), tokens of chunk c]   positions 0 .. n + L - 1
    fixed_memory=False: [m_0, ..., m_{c-1}, tokens of chunk c]                             positions 0 .. c + L - 1
    ```
    The logits of the slot positions are dropped, so the output has one row per input token.

    Args:
        vocab_size (`int`, defaults to 8000): token vocabulary (research `n_vocab`).
        encoder_config (`LlamaConfig` or `dict`, *optional*): the encoder's Llama settings (research: `hidden_size`
            `encoder_dim`, `intermediate_size` 4x, `num_hidden_layers` `depth`, `num_attention_heads` `n_heads`; a frozen
            pretrained encoder brings its own). Defaults to `research_llama_config(512, 16, 4)`; `None` with
            `no_memory=True` builds no encoder.
        decoder_config (`LlamaConfig` or `dict`, *optional*): the decoder's Llama settings (research `dim`, `depth`,
            `n_heads`, or the config of the pretrained `LlamaForCausalLM` passed as `decoder=`). Defaults to a copy of
            `encoder_config`. Different widths add `decoder_proj` (`Linear(De, Dd)`).
        chunk_length (`int`, defaults to 256): tokens per chunk (research `length`).
        num_chunks (`int`, defaults to 4): chunks per context (research `n_chunks`); inputs may hold at most
            `num_chunks * chunk_length` tokens. The last chunk may be partial.
        compression (`int`, defaults to 1): bottleneck `down = Linear(De, De // c)`, `up = Linear(De // c, De)` on the
            encoder vector (1 = none; NOTE the research class default is 1 here, unlike the mixer's 4).
        fixed_memory (`bool`, defaults to `True`): the slot layout above.
        memory_position (`int`, defaults to -1): encoder position of a chunk read as its memory, counted from the end
            (research: -1, the chunk's last token).
        memory_fill_value (`float`, defaults to 1.0): value of every feature of an empty slot (research: ones).
        no_memory (`bool`, defaults to `False`): research ablation: nothing is encoded and every slot is filled with
            `memory_fill_value`; no encoder is built.
        encoder_final_norm (`bool`, defaults to `True`): apply the encoder's final RMSNorm before reading the memory
            (the research encoder is a full `LlamaModel`).
        decoder_final_norm (`bool`, defaults to `True`): apply the decoder's final RMSNorm before `lm_head`.
        tie_word_embeddings (`bool`, defaults to `False`): share `lm_head` with the decoder's token embedding (research
            `decoder=` a pretrained LLM with tied embeddings, e.g. Llama-3.2-1B).
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation of linear and embedding weights.
        use_cache (`bool`, defaults to `True`): return a [`VariableMemoryTransformerCache`] (memories of finished chunks
            plus the decoder's key/value cache of the current chunk) for incremental decoding.
        pad_token_id / bos_token_id / eos_token_id (`int`, *optional*): special token ids (research: pad = eos).
    """

    model_type = "variable_memory_transformer"
    vocab_size: int = positive(default=8000)
    encoder_config: LlamaConfig | dict | None = None
    decoder_config: LlamaConfig | dict | None = None
    chunk_length: int = positive(default=256)
    num_chunks: int = positive(default=4)
    compression: int = positive(default=1)
    fixed_memory: bool = True
    memory_position: int = -1
    memory_fill_value: int | float = finite_number(default=1.0)
    no_memory: bool = False
    encoder_final_norm: bool = True
    decoder_final_norm: bool = True
    tie_word_embeddings: bool = False
    initializer_range: int | float = std(default=0.02)
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def _fill_defaults(self) -> None:
        default = research_llama_config(512, 16, 4, vocab_size=self.vocab_size)
        self._build_stacks(None if self.no_memory else default, default)

    def validate_memory(self) -> None:
        """Where the memory is read, and that there is an encoder to read it from."""
        self._check_memory_position(self.chunk_length, "chunk_length")
        self._require(self.no_memory or self.encoder_config is not None, "encoder_config is required unless "
                      "no_memory=True (a LlamaConfig or a dict of its arguments).")

    @property
    def context_length(self) -> int:
        """The most tokens the model reads: `num_chunks * chunk_length`."""
        return self.num_chunks * self.chunk_length

    @property
    def memory_slots(self) -> int:
        """Memory positions in front of the tokens of the last chunk (all chunks with `fixed_memory`)."""
        return self.num_chunks if self.fixed_memory else self.num_chunks - 1


__all__ = ["TransformerAutoencoderConfig", "VariableMemoryTransformerConfig", "research_llama_config"]
