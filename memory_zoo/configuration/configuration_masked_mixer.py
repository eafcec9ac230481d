"""Configuration of the Masked Mixer (Badger, "Masked Mixers for Language Generation and Retrieval", 2024)."""

from typing import Literal

from huggingface_hub.dataclasses import strict

from .zoo_config import KERNEL_REVISION, ZooConfig, activation, default_kernel_repo, positive, positive_number, std


@strict
class MaskedMixerConfig(ZooConfig):
    r"""
    Configuration of a [`MaskedMixerModel`] / [`MaskedMixerForCausalLM`].

    A masked mixer is a pre-norm decoder whose attention is replaced by a learned, lower-triangular
    `L x L` matrix that mixes token positions (one matrix per block and mixing head, one bias per output
    position). There are no positional embeddings: the context length `L` is part of the parameter shapes,
    so `max_position_embeddings` is a hard limit, not a default.

    Block (pre-norm, two residual branches):

    ```
    h = LayerNorm_token(x)
    x = x + out_proj( M_h[:T, :T] masked causal  @  in_proj(h)_h  + m_h[:T] )   # per mixing head h
    x = x + down_proj(act(up_proj(LayerNorm_channel(x))))
    ```
    and `logits = lm_head(x)` after the last block (no final norm, as in the research code).

    Args:
        vocab_size (`int`, defaults to 4096): size of the token vocabulary.
        hidden_size (`int`, defaults to 1024): model width `D` (research `dim`).
        num_hidden_layers (`int`, defaults to 8): number of mixer blocks (research `depth`).
        max_position_embeddings (`int`, defaults to 512): the fixed context length `L` (research global
            `tokenized_length`). Inputs may be shorter; longer inputs raise an error.
        intermediate_size (`int`, *optional*): width of the channel-mixing MLP; defaults to `4 * hidden_size`.
        hidden_act (`str`, defaults to `"gelu"`): activation of the MLP (exact erf GELU in the research code).
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of both LayerNorms of a block.
        num_mixing_heads (`int`, defaults to 1): number of token-mixing heads, each with its own `L x L` matrix.
            More than one head needs `mixing_head_dim`.
        mixing_head_dim (`int`, *optional*): when set, the normalised input is projected to
            `num_mixing_heads * mixing_head_dim` features (`in_proj`), each head mixes its own slice, and
            `out_proj` maps the concatenation back to `hidden_size` (the research `MixerHead`, with a correct
            per-head split). `None`: the mixing acts directly on the `hidden_size` features.
        mixing_out_proj (`bool`, defaults to `False`): add a `Linear(hidden, hidden)` after the mixing when there
            is no `in_proj`. Needed by research "multi-headed" checkpoints whose heads all compute the same
            (last) head: their `n` identical copies followed by `Linear(n * D, D)` are folded at conversion into
            one mixing matrix and this projection, which is exact. Implied when `mixing_head_dim` is set.
        mixing_expanded (`bool`, defaults to `False`): the research "expanded" token mixing (`expand_conv=True`):
            two masked matrices with a GELU in between. The research expansion factor is irrelevant for outputs
            (rows beyond `L` of the first matrix can never reach a causal output) and is dropped at conversion.
        mixing_softmax (`bool`, defaults to `False`): research quirk of `multiheaded_mixer_tinystories.py`: the
            effective mixing matrix is `tril(softmax(tril(W), dim=output position))`, computed over the full
            `L x L` matrix (the masked zeros take part in the softmax). The research code overwrote its weights
            with this transform on every call; here it is applied functionally, which reproduces the research
            model's first forward after loading and keeps training a proper reparameterisation.
        mixing_kernel_size (`int`, defaults to 1): the research `kernel` of blbadger/memorymodels. The research mixing
            is a `Conv1d` whose channels are token positions, so its kernel slides along the *features*: with
            `K > 1` every mixing matrix becomes `K` matrices, tap `k` mixing the features shifted by
            `k - (K - 1) // 2` (zero-padded, "same" padding). Still causal over positions; the Hub kernel only
            covers `K = 1`.
        mixing_bias (`bool`, defaults to `True`): whether each mixing matrix has a per-output-position bias.
        use_kernels (`bool`, defaults to `True`): on GPUs, run the causal mixing through the Triton `masked_mixing`
            Hub kernel (about half the FLOPs of a dense matmul); it falls back to the pure-torch path, with one log
            line, wherever the kernel cannot be loaded. Padded (re-based) batches always use the pure-torch path.
        kernel_repo_id (`str`, defaults to `"memory-zoo/masked-mixing"`): Hub kernel repository to load the kernel
            from where the copy packaged with memory-zoo is not available (remote code).
        kernel_revision (`str`, defaults to `"v1"`): branch, tag or commit of `kernel_repo_id`.
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear and embedding weights.
        use_cache (`bool`, defaults to `True`): return a [`MaskedMixerCache`] for incremental decoding.
        embedding_pooling (`str`, defaults to `"second_to_last"`): which hidden state `embed(...)` (and the
            sentence-transformers config saved with the model) returns as a text's embedding: `"second_to_last"`,
            the research retrieval convention (the second-to-last real token), or `"last"` (the last real token,
            as in the research Fineweb embedding files).
        tie_word_embeddings (`bool`, defaults to `False`): share the input embedding with `lm_head`.
        pad_token_id / bos_token_id / eos_token_id (`int`, *optional*): special token ids (research: pad = eos).
    """

    model_type = "masked_mixer"

    vocab_size: int = positive(default=4096)
    hidden_size: int = positive(default=1024)
    num_hidden_layers: int = positive(default=8)
    max_position_embeddings: int = positive(default=512)
    intermediate_size: int | None = positive(default=None)
    hidden_act: str = activation(default="gelu")
    layer_norm_eps: int | float = positive_number(default=1e-5)
    num_mixing_heads: int = positive(default=1)
    mixing_head_dim: int | None = positive(default=None)
    mixing_out_proj: bool = False
    mixing_expanded: bool = False
    mixing_softmax: bool = False
    mixing_bias: bool = True
    mixing_kernel_size: int = positive(default=1)
    use_kernels: bool = True
    kernel_repo_id: str | None = default_kernel_repo("masked_mixing")
    kernel_revision: str | None = KERNEL_REVISION
    initializer_range: int | float = std(default=0.02)
    use_cache: bool = True
    embedding_pooling: Literal["second_to_last", "last"] = "second_to_last"
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def _fill_defaults(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self.mixing_out_proj = self.mixing_out_proj or self.mixing_head_dim is not None

    def validate_mixing(self) -> None:
        """The mixing options that go together."""
        self._require(
            self.num_mixing_heads == 1 or self.mixing_head_dim is not None,
            f"num_mixing_heads={self.num_mixing_heads} needs mixing_head_dim (the per-head projection width, e.g. "
            f"hidden_size // num_mixing_heads = {self.hidden_size // self.num_mixing_heads}).",
        )
        self._require(
            self.mixing_kernel_size == 1 or not (self.mixing_softmax or self.mixing_expanded),
            "mixing_kernel_size > 1 cannot be combined with mixing_softmax or mixing_expanded: no research model "
            "used both; set mixing_kernel_size=1.",
        )
        self._require(
            not (self.mixing_softmax and self.mixing_expanded),
            "mixing_softmax and mixing_expanded cannot be combined: no research model used both; set one to False.",
        )

    @property
    def mixing_width(self) -> int:
        """Number of features each mixing head mixes."""
        return self.mixing_head_dim if self.mixing_head_dim is not None else self.hidden_size


__all__ = ["MaskedMixerConfig"]
