"""Configuration of the masked-mixer autoencoder (Badger, "Language Model Memory and Memory Models for Language",
2026; research code blbadger/memorymodels), and what it shares with the memory mixers (configuration_memory_mixer.py).

Every stack of these models is a stack of Masked Mixer blocks; `mixer_stack_config` turns the fields below into
the [`MaskedMixerConfig`] of one stack, so the blocks (and their kernels and caches) are the Masked Mixer's own.
"""

from typing import Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from .configuration_masked_mixer import MaskedMixerConfig
from .zoo_config import (
    KERNEL_REVISION,
    ZooConfig,
    activation,
    default_kernel_repo,
    non_negative,
    positive,
    positive_number,
    std,
)

DecoderInput = Literal["unroll", "repeat"]
DECODER_INPUTS = get_args(DecoderInput)


def mixer_stack_config(
    config: PretrainedConfig, hidden_size: int, layers: int, length: int, kernel_size: int = 1,
    heads: int = 0, intermediate_size: int | None = None, out_proj: bool = False,
) -> MaskedMixerConfig:
    """The [`MaskedMixerConfig`] of one mixer stack of a compression model.

    `heads = 0` is the research flat mixing; `heads > 0` the research `MixerHead`: `heads` projections to
    `hidden_size // heads` features, one masked mixing each, and an output projection. `out_proj` adds an
    output projection to the flat mixing (the folded form of the research `mixer_clm.py` multi-head block).
    """
    return MaskedMixerConfig(
        vocab_size=config.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        max_position_embeddings=length,
        intermediate_size=intermediate_size,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        num_mixing_heads=max(heads, 1),
        mixing_head_dim=hidden_size // heads if heads else None,
        mixing_kernel_size=kernel_size,
        mixing_out_proj=out_proj,
        use_kernels=config.use_kernels,
        kernel_repo_id=config.kernel_repo_id,
        kernel_revision=config.kernel_revision,
        initializer_range=config.initializer_range,
    )


class CompressionConfig(ZooConfig):
    """Fields and checks common to the compression models (not registered on its own)."""

    vocab_size: int = positive(default=8000)
    intermediate_size: int | None = positive(default=None)
    compression: int = positive(default=1)
    memory_position: int = -1
    hidden_act: str = activation(default="gelu")
    layer_norm_eps: int | float = positive_number(default=1e-5)
    use_kernels: bool = True
    kernel_repo_id: str | None = default_kernel_repo("masked_mixing")
    kernel_revision: str | None = KERNEL_REVISION
    initializer_range: int | float = std(default=0.02)
    use_cache: bool = True
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    # (heads field, width field) pairs: every mixing head gets width // heads features.
    _head_fields = ()
    # The width the bottleneck divides.
    _compressed_width = "encoder_hidden_size"

    def validate_widths(self) -> None:
        """Mixing heads and the bottleneck split their widths evenly."""
        for heads, width in type(self)._head_fields:
            self._require(
                not getattr(self, heads) or getattr(self, width) % getattr(self, heads) == 0,
                f"{width} = {getattr(self, width)} is not divisible by {heads} = {getattr(self, heads)}: every mixing "
                "head gets width // heads features.",
            )
        width_field = type(self)._compressed_width
        width = getattr(self, width_field)
        self._require(
            width % self.compression == 0,
            f"compression = {self.compression} must divide {width_field} = {width} (the code has {width_field} // "
            "compression features).",
        )


COMMON_ARGS_DOC = """
        intermediate_size (`int`, *optional*): MLP width of the decoder blocks; defaults to `4 * hidden_size`.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation (exact erf GELU in the research code).
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.
        use_kernels / kernel_repo_id / kernel_revision: as in [`MaskedMixerConfig`] (the `masked_mixing` Hub
            kernel for kernel-size-1 mixing on GPUs, pure torch elsewhere).
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear and embedding weights.
        pad_token_id / bos_token_id / eos_token_id (`int`, *optional*): special token ids (research: pad = eos)."""


@strict
class MixerAutoencoderConfig(CompressionConfig):
    r"""
    Configuration of a [`MixerAutoencoderModel`] (research `AutoencodingMixer`).

    A causal masked-mixer encoder reads a window of `window_length` tokens; its output at `memory_position`
    (the last position, the only one that has seen the whole window) is the window's memory. An optional
    bottleneck (`down`, `compression > 1`) makes the code `hidden_size // compression` floats. The decoder
    rebuilds a `[window_length, hidden_size]` input from the (re-expanded, `up`) memory and reconstructs every
    token in parallel:

    ```
    e    = encoder(embed(ids))[:, memory_position]          # [B, D]
    code = down(e) if compression > 1 else e                 # [B, D // compression]  <- encode()
    e    = up(code)  if compression > 1 else code
    x    = projection(unroll(e))  or  e repeated             # [B, L, D]              <- decode()
    logits = lm_head(decoder(x))                             # [B, L, V]
    ```

    Args:
        vocab_size (`int`, defaults to 8000): size of the token vocabulary (research `n_vocab`).
        hidden_size (`int`, defaults to 512): width `D` of encoder and decoder (research `dim`).
        encoder_layers (`int`, defaults to 8): encoder blocks (research `depth`, or the depth of a frozen encoder).
        decoder_layers (`int`, defaults to 8): decoder blocks (research `depth`).
        window_length (`int`, defaults to 512): the fixed window `L` (research `length`); shorter inputs use the
            leading positions of every mixing matrix, longer inputs are refused.
        encoder_mixing_kernel_size / decoder_mixing_kernel_size (`int`, defaults to 1): research `kernel`, the
            feature-axis kernel of the token mixing (see [`MaskedMixerConfig.mixing_kernel_size`]).
        encoder_num_mixing_heads / decoder_num_mixing_heads (`int`, defaults to 0): research `n_heads`; 0 is the
            flat mixing, `h > 0` the multi-head mixing with `h` projections of `hidden_size // h` features.
        encoder_intermediate_size (`int`, *optional*): MLP width of the encoder blocks; defaults to
            `4 * hidden_size`.
        encoder_mixing_out_proj (`bool`, defaults to `False`): a `Linear(D, D)` after the encoder's flat mixing: a
            frozen research `LanguageMixer` encoder with heads (`mixer_clm.py` `MixerHead`, whose heads all compute
            the last head's mixing) is folded into this exactly at conversion.
        compression (`int`, defaults to 1): bottleneck factor; `> 1` adds `down`/`up` and the code has
            `hidden_size // compression` features.
        decoder_input (`str`, defaults to `"unroll"`): `"unroll"` gives row `i` the `D // 2` memory features
            starting at `i mod D` (cyclically), mapped to `D` by `projection`; `"repeat"` copies the memory to every
            row (research `unroll=False`; `projection` is then unused and absent).
        memory_position (`int`, defaults to -1): encoder position read as the memory; research `clm_encoder=True`
            (a frozen causal-LM encoder) reads -2.{common}
    """

    model_type = "mixer_autoencoder"

    hidden_size: int = positive(default=512)
    encoder_layers: int = positive(default=8)
    decoder_layers: int = positive(default=8)
    window_length: int = positive(default=512)
    encoder_mixing_kernel_size: int = positive(default=1)
    decoder_mixing_kernel_size: int = positive(default=1)
    encoder_num_mixing_heads: int = non_negative(default=0)
    decoder_num_mixing_heads: int = non_negative(default=0)
    encoder_mixing_out_proj: bool = False
    encoder_intermediate_size: int | None = positive(default=None)
    decoder_input: DecoderInput = "unroll"

    _head_fields = (("encoder_num_mixing_heads", "hidden_size"), ("decoder_num_mixing_heads", "hidden_size"))
    _compressed_width = "hidden_size"

    def _fill_defaults(self) -> None:
        self.encoder_intermediate_size = self.encoder_intermediate_size or 4 * self.hidden_size
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size
        # The decoder's head and the encoder's embedding are different matrices in the research model.
        self.tie_word_embeddings = False

    def validate_window(self) -> None:
        """Where the memory is read, and how it is unrolled."""
        self._require(self.decoder_input != "unroll" or self.hidden_size >= 2,
                      "decoder_input='unroll' needs hidden_size >= 2 (rows of hidden_size // 2 features).")
        self._require(-self.window_length <= self.memory_position < 0,
                      f"memory_position must be a negative position in the window (-1 = last token, -2 for a "
                      f"causal-LM encoder), got {self.memory_position!r}.")

    @property
    def memory_size(self) -> int:
        """Number of floats a window is compressed to."""
        return self.hidden_size // self.compression

    def encoder_stack_config(self) -> MaskedMixerConfig:
        return mixer_stack_config(self, self.hidden_size, self.encoder_layers, self.window_length,
                                  self.encoder_mixing_kernel_size, self.encoder_num_mixing_heads,
                                  self.encoder_intermediate_size, self.encoder_mixing_out_proj)

    def decoder_stack_config(self) -> MaskedMixerConfig:
        return mixer_stack_config(self, self.hidden_size, self.decoder_layers, self.window_length,
                                  self.decoder_mixing_kernel_size, self.decoder_num_mixing_heads,
                                  self.intermediate_size)


MixerAutoencoderConfig.__doc__ = MixerAutoencoderConfig.__doc__.replace("{common}", COMMON_ARGS_DOC)

__all__ = ["COMMON_ARGS_DOC", "CompressionConfig", "MixerAutoencoderConfig", "mixer_stack_config"]
