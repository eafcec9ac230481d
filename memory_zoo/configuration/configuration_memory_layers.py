"""Configuration of Memory Layers at Scale (Berges et al., "Memory Layers at Scale", arXiv 2412.09764)."""

from typing import Literal, get_args

from huggingface_hub.dataclasses import strict

from .zoo_config import KERNEL_REVISION, ZooConfig, default_kernel_repo, dropout, positive, positive_number, std

ValueDtype = Literal["float32", "bfloat16", "float16"]
VALUE_DTYPES = get_args(ValueDtype)


@strict
class MemoryLayersConfig(ZooConfig):
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

    vocab_size: int = positive(default=32000)
    hidden_size: int = positive(default=1024)
    num_hidden_layers: int = positive(default=24)
    num_attention_heads: int = positive(default=16)
    num_key_value_heads: int | None = positive(default=None)
    head_dim: int | None = positive(default=None)
    intermediate_size: int | None = positive(default=None)
    ffn_dim_multiplier: int | float | None = positive_number(default=None)
    multiple_of: int = positive(default=256)
    rms_norm_eps: int | float = positive_number(default=1e-5)
    rope_theta: int | float = positive_number(default=10000.0)
    max_position_embeddings: int = positive(default=1024)
    memory_layers: list[int] | tuple[int, ...] = ()
    memory_n_keys: int = positive(default=1024)
    memory_heads: int = positive(default=4)
    memory_knn: int = positive(default=32)
    memory_k_dim: int = positive(default=512)
    memory_v_dim: int | None = None
    memory_share_values: bool = True
    memory_swilu_projection: bool = True
    memory_gated: bool = False
    memory_value_dtype: ValueDtype | None = "bfloat16"
    memory_value_lr: int | float | None = positive_number(default=0.001)
    attention_dropout: int | float = dropout(default=0.0)
    use_kernels: bool = True
    kernel_repo_id: str | None = default_kernel_repo("embedding_bag")
    kernel_revision: str | None = KERNEL_REVISION
    initializer_range: int | float | None = std(default=None)
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def _fill_defaults(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = max(self.hidden_size // self.num_attention_heads, 1)
        if self.intermediate_size is None:
            self.intermediate_size = swiglu_hidden_size(self.hidden_size, self.ffn_dim_multiplier, self.multiple_of)
        self.memory_layers = sorted(self.memory_layers)
        if self.memory_v_dim is not None and self.memory_v_dim <= 0:  # the research "-1 = model width"
            self.memory_v_dim = None

    def validate_attention(self) -> None:
        """Grouped-query attention and rotary embeddings."""
        self._require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
            f"({self.num_key_value_heads}): each key/value head serves a whole group of query heads.",
        )
        self._require(self.head_dim % 2 == 0, f"head_dim must be even for rotary embeddings, got {self.head_dim}.")

    def validate_memory(self) -> None:
        """Where the memories sit and how the product keys split."""
        bad = [i for i in self.memory_layers if not 0 <= i < self.num_hidden_layers]
        self._require(
            not bad and len(set(self.memory_layers)) == len(self.memory_layers),
            f"memory_layers must be distinct block indices in [0, {self.num_hidden_layers}), got {self.memory_layers}.",
        )
        self._require(self.memory_heads >= 2,
                      f"memory_heads must be an integer >= 2 (as in the research code), got {self.memory_heads!r}.")
        self._require(self.memory_k_dim % 2 == 0, f"memory_k_dim must be even (queries and keys are split in two "
                      f"halves), got {self.memory_k_dim}.")
        self._require(self.memory_knn <= self.memory_n_keys,
                      f"memory_knn ({self.memory_knn}) cannot exceed memory_n_keys ({self.memory_n_keys}): the top-k "
                      "runs over the sub-keys of each half.")

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
