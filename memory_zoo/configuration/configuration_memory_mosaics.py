"""Configuration of Memory Mosaics (Zhang et al., "Memory Mosaics", arXiv 2405.06394)."""

from typing import Literal, get_args

from huggingface_hub.dataclasses import strict

from .zoo_config import (
    KERNEL_REVISION,
    ZooConfig,
    default_kernel_repo,
    dropout,
    non_negative,
    positive,
    positive_number,
)

FeatureExtractor = Literal["linearconv", "lowrlinearconv"]
LongContextMode = Literal["extend", "crop"]
FEATURE_EXTRACTORS = get_args(FeatureExtractor)
LONG_CONTEXT_MODES = get_args(LongContextMode)


@strict
class MemoryMosaicsConfig(ZooConfig):
    r"""
    Configuration of a [`MemoryMosaicsModel`] / [`MemoryMosaicsForCausalLM`].

    A Memory Mosaic is a stack of associative memories. Every block has an in-context memory (kernel regression over
    the past: keys are leaky averages of the inputs, values look `value_shift` tokens ahead) and a persistent memory
    (the same key against `pmem_count` learned tables of `pmem_size` key/value pairs), in place of attention and
    MLP. There are no positional embeddings: order enters only through the leaky averages and the value look-ahead.

    ```
    x = x + InContextMemory(LayerNorm_1(x))          # pre_layernorm=True; post-LN: x = LN(x); x = x + f(x)
    x = x + PersistentMemory(LayerNorm_2(x))         # absent when attn_only=True
    logits = lm_head(LayerNorm_out(x)) / sqrt(hidden_size)          # the scale only when scale_logits=True
    ```
    Per memory, with `s = 10` scaling every per-head scalar parameter:
    ```
    key_t   = normalize(sum_{u<=t} exp(-s|leaky_key_beta| (t-u)) f_u) * exp(min(s * kernel_beta, 5))^p
    value_t = normalize(g(x_t, x_{t+value_shift})) * exp(s * value_beta)          (in-context memory only)
    in-context:  out_t = sum_{u <= t - value_shift} softmax_u(<key_t, key_u>) value_u      (no 1/sqrt(d); 0 if empty)
    persistent:  out_t = mean_i sum_j softmax_j(<key_t, K_i[j]>) V_i[j] * exp(s * value_beta)
    ```
    with `p = 1` in the in-context memory and `p = 2` in the persistent memory, `f` the key feature extractor and `g`
    the value feature extractor.

    Args:
        vocab_size (`int`, defaults to 50304): token vocabulary (research: GPT-2's 50257 padded to a multiple of 64).
        hidden_size (`int`, defaults to 768): model width `C` (research `n_embd`).
        num_hidden_layers (`int`, defaults to 12): number of blocks (research `n_layer`).
        num_attention_heads (`int`, defaults to 12): heads `H` of every associative memory (research `n_head`);
            `hidden_size` must be divisible by it.
        block_size (`int`, defaults to 512): the training context. No weight depends on it; it only matters for
            `long_context="crop"`.
        long_context (`str`, defaults to `"extend"`): what happens beyond `block_size` tokens.
            `"extend"` — the model simply continues: its leaky averages and in-context memory keep every past token,
            forward passes accept any length and cached generation costs one step per token. This is the natural
            behaviour of a model without positional embeddings, and the default.
            `"crop"` — the research code's behaviour: `generate` conditions every new token on the last `block_size`
            tokens only (the cache is rebuilt from that window at each step once it is full, as the research code
            re-runs its forward), and a forward pass over more than `block_size` tokens raises an error.
        key_feature_extractor (`str`, defaults to `"linearconv"`): `"linearconv"` (a causal convolution over
            `key_kernel_size` tokens, a plain `Linear` for size 1) or `"lowrlinearconv"` (a `Linear`; with no look-ahead
            its two-tap interpolation is the identity). Research `k_fe_type`.
        key_kernel_size (`int`, defaults to 1): width of the key convolution (research `k_kernel_size`; must be 2 for
            `"lowrlinearconv"`).
        value_feature_extractor (`str`, defaults to `"lowrlinearconv"`): research `v_fe_type`.
            `"linearconv"`: a convolution over the window `[t - (value_kernel_size - 1 - value_shift), t + value_shift]`;
            `"lowrlinearconv"`: `z = Linear(x)`, `value_t = (1 - coef_h) z_{t+value_shift} + coef_h z_t` per head.
        value_kernel_size (`int`, defaults to 2): width of the value convolution (research `v_kernel_size`; must be 2
            for `"lowrlinearconv"`).
        value_shift (`int`, defaults to 1): how many tokens a value looks ahead; the in-context memory of token `t`
            reads only values `u <= t - value_shift`, whose look-ahead has been seen (research `v_shift`).
        pmem_size (`int`, defaults to 2688): key/value pairs per persistent memory table (research `pmem_size`).
        pmem_count (`int`, defaults to 1): number of persistent memory tables, averaged (research `pmem_count`).
        attn_only (`bool`, defaults to `False`): blocks without the persistent memory (and its LayerNorm).
        pre_layernorm (`bool`, defaults to `True`): pre-LN blocks; `False` gives the research post-LN variant.
        bias (`bool`, defaults to `False`): biases in the LayerNorms, feature extractors and output projections (the
            LM head never has one).
        scale_logits (`bool`, defaults to `True`): multiply the logits by `1 / sqrt(hidden_size)`, as the research
            model does (it is part of the model: its checkpoints are only right with it).
        skip_tokens (`int`, defaults to 0): the loss ignores the predictions made at the first `skip_tokens`
            positions (research `skip_tokens`). Logits are still returned for every position.
        attention_dropout (`float`, defaults to 0.05): dropout on the in-context and persistent memory read-out
            probabilities (research `ic_dropout`; the research kernel ("eft") model skipped it in the in-context
            memory, its pure-torch model did not — this is the latter).
        hidden_dropout (`float`, defaults to 0.05): dropout after each output projection (research `hd_dropout`).
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.
        leaky_chunk_size (`int`, defaults to 64): chunk length of the pure-torch leaky average (memory grows with
            `chunk ** 2 * heads`, time with `seq_len / chunk` sequential steps).
        use_kernels (`bool`, defaults to `True`): on GPUs, compute the leaky averages with the Triton `leaky_average`
            Hub kernel; wherever it cannot be loaded the pure-torch path runs, after one log line.
        kernel_repo_id (`str`, defaults to `"memory-zoo/leaky-average"`): Hub kernel repository used where the copy
            packaged with memory-zoo is not available (remote code).
        kernel_revision (`str`, defaults to `"v1"`): branch, tag or commit of `kernel_repo_id`.
        use_cache (`bool`, defaults to `True`): return a [`MemoryMosaicsCache`] for incremental decoding.
        tie_word_embeddings (`bool`, defaults to `True`): share the input embedding and the LM head (research
            `weight_tying`).
        pad_token_id / bos_token_id / eos_token_id (`int`, *optional*): special token ids (research tokenizer: GPT-2,
            `<|endoftext|>` = 50256).
    """

    model_type = "memory_mosaics"
    attribute_map = {"n_embd": "hidden_size", "n_head": "num_attention_heads", "n_layer": "num_hidden_layers"}

    vocab_size: int = positive(default=50304)
    hidden_size: int = positive(default=768)
    num_hidden_layers: int = positive(default=12)
    num_attention_heads: int = positive(default=12)
    block_size: int = positive(default=512)
    long_context: LongContextMode = "extend"
    key_feature_extractor: FeatureExtractor = "linearconv"
    key_kernel_size: int = positive(default=1)
    value_feature_extractor: FeatureExtractor = "lowrlinearconv"
    value_kernel_size: int = positive(default=2)
    value_shift: int = non_negative(default=1)
    pmem_size: int = positive(default=2688)
    pmem_count: int = positive(default=1)
    attn_only: bool = False
    pre_layernorm: bool = True
    bias: bool = False
    scale_logits: bool = True
    skip_tokens: int = non_negative(default=0)
    attention_dropout: int | float = dropout(default=0.05)
    hidden_dropout: int | float = dropout(default=0.05)
    layer_norm_eps: int | float = positive_number(default=1e-5)
    leaky_chunk_size: int = positive(default=64)
    use_kernels: bool = True
    kernel_repo_id: str | None = default_kernel_repo("leaky_average")
    kernel_revision: str | None = KERNEL_REVISION
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def validate_heads(self) -> None:
        """Heads split the width evenly."""
        self._require(
            self.hidden_size % self.num_attention_heads == 0,
            f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads}): "
            "every head owns hidden_size / num_attention_heads channels.",
        )

    def validate_feature_extractors(self) -> None:
        """The two-tap interpolation has two taps."""
        for role in ("key", "value"):
            size = getattr(self, f"{role}_kernel_size")
            self._require(
                getattr(self, f"{role}_feature_extractor") != "lowrlinearconv" or size == 2,
                f"{role}_feature_extractor='lowrlinearconv' is a two-tap interpolation: {role}_kernel_size must be 2, "
                f"got {size}.",
            )

    @property
    def head_dim(self) -> int:
        """Channels per head, `d = hidden_size / num_attention_heads`."""
        return self.hidden_size // self.num_attention_heads


__all__ = ["MemoryMosaicsConfig"]
