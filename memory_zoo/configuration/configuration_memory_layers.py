"""Configuration of Memory Layers at Scale (Berges et al., "Memory Layers at Scale", arXiv 2412.09764)."""

from __future__ import annotations

from transformers import PretrainedConfig

from .zoo_config import KERNEL_REVISION, KEYS_TO_IGNORE_AT_INFERENCE, check_integers, default_kernel_repo

VALUE_DTYPES = ("float32", "bfloat16", "float16")


class MemoryLayersConfig(PretrainedConfig):
    r"""
    Configuration of a [`MemoryLayersModel`] / [`MemoryLayersForCausalLM`].

    A Llama-style decoder (RMSNorm, rotary attention with grouped key/value heads, SwiGLU feed-forward, untied head)
    in which the feed-forward of the blocks listed in `memory_layers` is replaced by a *product-key memory*: a query
    network scores two sets of `memory_n_keys` sub-keys per head, keeps the top `memory_knn` per half, then the top
    `memory_knn` of the `knn x knn` grid of sums, and returns the softmax-weighted sum of those slots' rows of a value
    table with `memory_n_keys ** 2` rows. PK+ ("Memory+", `memory_swilu_projection=True`) multiplies the read-out by
    `silu(swilu_projection(x))` and projects it back; one value table may serve every memory layer.

    ```
    q = query_proj(x)  per head: [q1 | q2]            s1 = q1 . keys1,  s2 = q2 . keys2     (no scaling, no norm)
    top-k of s1, top-k of s2  ->  top-k of the k x k sums  ->  slots i1 * n_keys + i2,  w = softmax(scores)
    y = sum over heads and slots of w * values[slot]                      # heads are summed
    PK+: y = value_proj(y * silu(swilu_projection(x)));  with memory_v_dim only: y = value_proj(y)
    gated: y = sigmoid(gating(x)) * y
    ```

    Args:
        vocab_size (`int`, defaults to 32000): vocabulary size (research `vocab_size`, from the tokenizer).
        hidden_size (`int`, defaults to 1024): model width (research `dim`).
        num_hidden_layers (`int`, defaults to 24): number of blocks (research `n_layers`).
        num_attention_heads (`int`, defaults to 16): query heads (research `n_heads`).
        num_key_value_heads (`int`, *optional*): key/value heads for grouped-query attention (research `n_kv_heads`);
            defaults to `num_attention_heads`.
        head_dim (`int`, *optional*): per-head width; defaults to `hidden_size // num_attention_heads`.
        intermediate_size (`int`, *optional*): SwiGLU width. Defaults to the research rule: `int(2 * 4 * hidden / 3)`,
            times `ffn_dim_multiplier` if set, rounded up to a multiple of `multiple_of`.
        ffn_dim_multiplier (`float`, *optional*), multiple_of (`int`, defaults to 256): inputs of that rule.
        rms_norm_eps (`float`, defaults to 1e-5): epsilon of every RMSNorm (research `norm_eps`).
        rope_theta (`float`, defaults to 10000.0): rotary base. The rotation acts on interleaved pairs
            `(x[2i], x[2i+1])` as in the research code (Meta Llama layout), so converted weights need no permutation.
        max_position_embeddings (`int`, defaults to 1024): the training sequence length (research `max_seqlen`).
            Rotary angles are computed for any position, so it is informative, not a limit.
        memory_layers (`list[int]`, defaults to `[]`): 0-based indices of the blocks whose feed-forward is a
            product-key memory (research `productkey_args.layers`, e.g. `"4,12,20"`).
        memory_n_keys (`int`, defaults to 1024): sub-keys per half and head; the memory has `memory_n_keys ** 2` slots.
        memory_heads (`int`, defaults to 4): memory read heads (at least 2, as in the research code).
        memory_knn (`int`, defaults to 32): slots read per head (also the per-half candidate count).
        memory_k_dim (`int`, defaults to 512): query/key width per head (even: two halves).
        memory_v_dim (`int`, *optional*): value width; `None` (research `-1`) uses `hidden_size`. When set, a
            `value_proj` maps it back to `hidden_size`.
        memory_share_values (`bool`, defaults to `True`): all memory layers read one value table (stored once, as
            `model.memory_values.weight`).
        memory_swilu_projection (`bool`, defaults to `True`): the PK+ output projection.
        memory_gated (`bool`, defaults to `False`): scale the output by `sigmoid(gating(x))`.
        memory_value_dtype (`str`, *optional*, defaults to `"bfloat16"`): dtype of the value tables, kept when the rest
            of the model is float32 (the research code trains them in bfloat16); `None` follows the model dtype.
        memory_value_lr (`float`, *optional*, defaults to 0.001): the fixed base learning rate of the value tables in
            the research recipe (research `value_fixed_lr`); see `memory_layers_param_groups`.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities (the research code has none).
        use_kernels (`bool`, defaults to `True`): on GPUs, read the value table with the Triton `embedding_bag` Hub
            kernel (float32 accumulation); elsewhere `F.embedding_bag` runs, after one log line.
        kernel_repo_id (`str`, defaults to `"memory-zoo/embedding-bag"`), kernel_revision (`str`, defaults to `"v1"`):
            where remote code loads that kernel from.
        initializer_range (`float`, *optional*): base std of the linear layers (research `init_base_std`); defaults to
            `hidden_size ** -0.5`.
        use_cache (`bool`, defaults to `True`): return a key/value cache for incremental decoding.
        tie_word_embeddings (`bool`, defaults to `False`): research checkpoints are always untied.
        pad_token_id / bos_token_id / eos_token_id (`int`, *optional*): special token ids.
    """

    model_type = "memory_layers"
    keys_to_ignore_at_inference = KEYS_TO_IGNORE_AT_INFERENCE

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int | None = None,
        ffn_dim_multiplier: float | None = None,
        multiple_of: int = 256,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 1024,
        memory_layers: list[int] | tuple[int, ...] = (),
        memory_n_keys: int = 1024,
        memory_heads: int = 4,
        memory_knn: int = 32,
        memory_k_dim: int = 512,
        memory_v_dim: int | None = None,
        memory_share_values: bool = True,
        memory_swilu_projection: bool = True,
        memory_gated: bool = False,
        memory_value_dtype: str | None = "bfloat16",
        memory_value_lr: float | None = 0.001,
        attention_dropout: float = 0.0,
        use_kernels: bool = True,
        kernel_repo_id: str | None = default_kernel_repo("embedding_bag"),
        kernel_revision: str | None = KERNEL_REVISION,
        initializer_range: float | None = None,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.ffn_dim_multiplier = ffn_dim_multiplier
        self.multiple_of = multiple_of
        self.intermediate_size = (
            intermediate_size if intermediate_size is not None
            else swiglu_hidden_size(hidden_size, ffn_dim_multiplier, multiple_of)
        )
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.memory_layers = sorted(int(i) for i in memory_layers)
        self.memory_n_keys = memory_n_keys
        self.memory_heads = memory_heads
        self.memory_knn = memory_knn
        self.memory_k_dim = memory_k_dim
        self.memory_v_dim = memory_v_dim if memory_v_dim is not None and memory_v_dim > 0 else None
        self.memory_share_values = memory_share_values
        self.memory_swilu_projection = memory_swilu_projection
        self.memory_gated = memory_gated
        self.memory_value_dtype = memory_value_dtype
        self.memory_value_lr = memory_value_lr
        self.attention_dropout = attention_dropout
        self.use_kernels = use_kernels
        self.kernel_repo_id = kernel_repo_id
        self.kernel_revision = kernel_revision
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self._check()
        super().__init__(**kwargs)

    def _check(self) -> None:
        check_integers(self, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                              "num_key_value_heads", "head_dim", "intermediate_size", "multiple_of",
                              "memory_n_keys", "memory_knn", "memory_k_dim"))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads}): each key/value head serves a whole group of query heads."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}.")
        bad = [i for i in self.memory_layers if not 0 <= i < self.num_hidden_layers]
        if bad or len(set(self.memory_layers)) != len(self.memory_layers):
            raise ValueError(
                f"memory_layers must be distinct block indices in [0, {self.num_hidden_layers}), got "
                f"{self.memory_layers}."
            )
        if not isinstance(self.memory_heads, int) or self.memory_heads < 2:
            raise ValueError(f"memory_heads must be an integer >= 2 (as in the research code), got {self.memory_heads!r}.")
        if self.memory_k_dim % 2:
            raise ValueError(f"memory_k_dim must be even (queries and keys are split in two halves), got "
                             f"{self.memory_k_dim}.")
        if self.memory_knn > self.memory_n_keys:
            raise ValueError(f"memory_knn ({self.memory_knn}) cannot exceed memory_n_keys ({self.memory_n_keys}): the "
                             "top-k runs over the sub-keys of each half.")
        if self.memory_value_dtype is not None and self.memory_value_dtype not in VALUE_DTYPES:
            raise ValueError(f"memory_value_dtype must be one of {VALUE_DTYPES} or None, got "
                             f"{self.memory_value_dtype!r}.")

    @property
    def memory_size(self) -> int:
        """Number of memory slots (rows of a value table)."""
        return self.memory_n_keys**2

    @property
    def memory_value_width(self) -> int:
        """Width of a value-table row."""
        return self.memory_v_dim or self.hidden_size


def swiglu_hidden_size(hidden_size: int, multiplier: float | None, multiple_of: int) -> int:
    """The research SwiGLU width: `int(2 * 4 * hidden / 3)`, times the multiplier, rounded up to `multiple_of`."""
    hidden = int(2 * (4 * hidden_size) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


__all__ = ["MemoryLayersConfig", "swiglu_hidden_size"]
