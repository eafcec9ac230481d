"""Configuration of the Long-Short-Working Transformer (LSWT; Avelina9X/memory-transformer-pt4)."""

from huggingface_hub.dataclasses import strict

from .zoo_config import ZooConfig, activation, dropout, finite_number, non_negative, positive, positive_number, std


@strict
class LSWTConfig(ZooConfig):
    r"""
    Configuration of an [`LSWTModel`] / [`LSWTForCausalLM`].

    A pre-LN transformer with a Transformer-XL memory: the raw keys and values of earlier segments stay in the cache
    (trimmed to the last `max_key_values` positions) and later segments attend to them. Token embeddings have their own
    width (`embedding_size`) and are projected in and out of the model width, and the logits go through the input
    embedding matrix (`logits = E @ head_proj(norm(h))`). Rotary positions are reversed (the newest token is position
    0, so cached keys are simply rotated again on every call) with a raised base frequency; optional attention
    registers (learned, unrotated, uncached key/value slots every query sees) and per-head RMS normalisation of queries
    and keys.

    Args:
        vocab_size (`int`, defaults to 50272): rows of the shared embedding matrix (OPT's padded vocabulary).
        embedding_size (`int`, defaults to 768): embedding width (research `d_vocab`), projected to `hidden_size`.
        hidden_size (`int`, defaults to 768): residual width (research `d_model`).
        intermediate_size (`int`, defaults to 3072): feed-forward width after gating (research `d_ffn`).
        num_attention_heads (`int`, defaults to 12): heads (research `n_heads`); no grouped-query attention.
        num_hidden_layers (`int`, defaults to 12): blocks (research `n_layers`).
        num_registers (`int`, defaults to 0): attention registers per layer (research `n_registers`). With registers
            the model is not shift-invariant: segment-wise and one-shot runs differ, as in the research code.
        hidden_act (`str`, defaults to `"silu"`): feed-forward activation.
        gated_ffn (`bool`, defaults to `True`): SwiGLU (`down(up(x) * act(gate(x)))`), else `down(act(up(x)))`.
        qk_norm (`bool`, defaults to `False`): per-head RMS normalisation of queries and keys (eps added after the
            square root), before the rotation.
        attention_bias (`bool`, defaults to `True`): biases of the q/k/v/o projections (research `enable_bias`). The
            feed-forward always has biases, the embedding projections never.
        rope_base_freq (`float`, defaults to 500000): rotary base.
        rope_reversed (`bool`, defaults to `True`): reversed positions (newest token = 0).
        max_position_embeddings (`int`, *optional*): the trained attention span (research `rope_positions`), needed by
            `rope_dynamic`; also the default cache limit when generating.
        rope_dynamic (`bool`, defaults to `False`): beyond `max_position_embeddings` positions, raise the base (NTK,
            `base * s ** (2 * d / (d - 2))`) and scale queries, keys and registers by `rope_yarn_a * ln(s) +
            rope_yarn_b`, with `s = total / max_position_embeddings`.
        rope_ntk_scale (`float`, defaults to 1.0), rope_yarn_a (`float`, defaults to 0.07), rope_yarn_b (`float`,
            defaults to 1.0): the research rotary scaling constants.
        max_key_values (`int`, *optional*): the cache keeps the last `max_key_values` positions of every layer after
            each call (the research `max_key_values` argument; its training used the segment length). `None` keeps
            everything.
        dropout_att_mat / dropout_att_out / dropout_ffn_int / dropout_ffn_out (`float`, defaults to 0.0): dropout on
            the attention probabilities, after the attention output projection, after the gated product and after the
            feed-forward output (research names).
        recompute_kv (`bool`, defaults to `False`): in training, the cache holds the attention inputs and keys/values
            are recomputed from them, so the key/value projections also learn from the memory (research option).
        trainable_embeddings (`bool`, defaults to `True`): `False` freezes the embedding matrix (kept in the model
            dtype, unlike the research code, which cast it to float16).
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm (and of the q/k RMS norms).
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation (research `init_std`).
        use_kernels (`bool`, defaults to `True`): on GPUs, in float16/bfloat16 and without padding, attention runs
            through the flash-attention Hub kernel (`kernel_repo_id`) when it loads, else (and on any failure, after
            one log line) through SDPA.
        kernel_repo_id (`str`, defaults to `"kernels-community/flash-attn2"`), kernel_revision (`str`, defaults to
            `"main"`): the kernel repository and its branch; pin a commit for reproducible runs.
        use_cache (`bool`, defaults to `True`): return an [`LSWTCache`].
        pooler_config (`dict`, *optional*): the direct preference heads of [`LSWTForPreferenceHeads`] (research
            `LSWTPoolerConfig` fields): `reward_heads` (list of head names), `reward_head_bias`, `embedding_dropout`,
            `layer_pooling` (`"layer"`: the hidden state `layer_pooling_select`, default -1 = final normed state;
            `"weighted_sum"`: softmax-weighted sum of the hidden states listed in `layer_pooling_select`),
            `layer_pooling_norm` (`"post"`: LayerNorms after layer and token pooling), `token_pooling` (`"cls"`),
            `token_pooling_config` (`{"cls_token_id": ...}`: rewards are read at the last such token),
            `embedding_pooling` (`None` or `"sgpt"`: a weighted running mean restarted at every CLS token), and, for
            research checkpoints of the legacy format, `legacy_pipeline` (`"identity"`, `"bert"`, `"t5"`,
            `"swiglu_bert"` or `"swiglu_t5"`: the projection applied to the final state before the heads).
        pad_token_id / bos_token_id / eos_token_id (`int`, defaults to 1 / 2 / 2): OPT ids.
    """

    model_type = "lswt"
    attribute_map = {"d_model": "hidden_size", "d_vocab": "embedding_size", "d_ffn": "intermediate_size",
                     "n_heads": "num_attention_heads", "n_layers": "num_hidden_layers", "n_registers": "num_registers",
                     "rope_positions": "max_position_embeddings"}

    vocab_size: int = positive(default=50272)
    embedding_size: int = positive(default=768)
    hidden_size: int = positive(default=768)
    intermediate_size: int = positive(default=3072)
    num_attention_heads: int = positive(default=12)
    num_hidden_layers: int = positive(default=12)
    num_registers: int = non_negative(default=0)
    hidden_act: str = activation(default="silu")
    gated_ffn: bool = True
    qk_norm: bool = False
    attention_bias: bool = True
    rope_base_freq: int | float = positive_number(default=500000.0)
    rope_reversed: bool = True
    max_position_embeddings: int | None = positive(default=None)
    rope_dynamic: bool = False
    rope_ntk_scale: int | float = positive_number(default=1.0)
    rope_yarn_a: int | float = finite_number(default=0.07)
    rope_yarn_b: int | float = finite_number(default=1.0)
    max_key_values: int | None = non_negative(default=None)
    dropout_att_mat: int | float = dropout(default=0.0)
    dropout_att_out: int | float = dropout(default=0.0)
    dropout_ffn_int: int | float = dropout(default=0.0)
    dropout_ffn_out: int | float = dropout(default=0.0)
    recompute_kv: bool = False
    trainable_embeddings: bool = True
    layer_norm_eps: int | float = positive_number(default=1e-5)
    initializer_range: int | float = std(default=0.02)
    use_kernels: bool = True
    kernel_repo_id: str | None = "kernels-community/flash-attn2"
    kernel_revision: str | None = "main"
    use_cache: bool = True
    pooler_config: dict | None = None
    tie_word_embeddings: bool = False  # the head is tied through head_proj, not by tie_weights
    pad_token_id: int | None = 1
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 2

    def _fill_defaults(self) -> None:
        self.pooler_config = _pooler_defaults(self.pooler_config)

    def validate_heads(self) -> None:
        """Rotary embeddings rotate pairs of channels within a head."""
        self._require(
            self.hidden_size % self.num_attention_heads == 0 and (self.hidden_size // self.num_attention_heads) % 2 == 0,
            f"hidden_size ({self.hidden_size}) must split into num_attention_heads ({self.num_attention_heads}) heads "
            "of an even width (rotary embeddings rotate pairs).",
        )

    def validate_rope(self) -> None:
        """Dynamic scaling scales beyond a known length."""
        self._require(
            not self.rope_dynamic or self.max_position_embeddings is not None,
            "rope_dynamic=True scales positions beyond max_position_embeddings, so it must be set (the research "
            "rope_positions, e.g. 4096).",
        )

    def validate_pooler(self) -> None:
        """The research pooler options this implementation knows."""
        pooler = self.pooler_config
        for key, choices in (("layer_pooling", ("layer", "weighted_sum")), ("token_pooling", ("cls", "attn")),
                             ("embedding_pooling", (None, "sgpt")), ("legacy_pipeline", (None, *LEGACY_PIPELINES))):
            self._require(pooler[key] in choices,
                          f"pooler_config.{key} must be one of {list(choices)}, got {pooler[key]!r}.")
        for key in ("embedding_dropout", "layer_pooling_dropout"):
            value = pooler[key]
            self._require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
                          f"pooler_config.{key} must be a probability in [0, 1), got {value!r}.")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads


LEGACY_PIPELINES = ("identity", "bert", "t5", "swiglu_bert", "swiglu_t5")
_POOLER_DEFAULTS = {"reward_heads": None, "reward_head_bias": False, "embedding_dropout": 0.0, "layer_pooling": "layer",
                    "layer_pooling_norm": None, "layer_pooling_select": -1, "layer_pooling_dropout": 0.0,
                    "token_pooling": "cls", "token_pooling_config": {}, "embedding_pooling": None,
                    "legacy_pipeline": None}


def _pooler_defaults(pooler: dict | None) -> dict:
    """The research `LSWTPoolerConfig` fields with their defaults filled in (unknown research fields are kept)."""
    pooler = dict(pooler or {})
    pooler.pop("model_type", None)
    return {**_POOLER_DEFAULTS, **pooler}


__all__ = ["LSWTConfig"]
