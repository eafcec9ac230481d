"""Configurations of the memory-augmented masked mixers (Badger, "Language Model Memory and Memory Models for
Language", 2026; research code blbadger/memorymodels): the variable-memory mixer and the memory-token mixer, whose
models live in modeling_memory_mixer.py. Fields and checks shared with the autoencoder come from
configuration_mixer_autoencoder.py.
"""

from typing import Literal, get_args

from huggingface_hub.dataclasses import strict

from .configuration_masked_mixer import MaskedMixerConfig
from .configuration_mixer_autoencoder import COMMON_ARGS_DOC, CompressionConfig, mixer_stack_config
from .zoo_config import non_negative, positive

Combination = Literal["token", "embedding"]
MemorySource = Literal["window", "previous_chunk"]
COMBINATIONS = get_args(Combination)
MEMORY_SOURCES = get_args(MemorySource)


@strict
class VariableMemoryMixerConfig(CompressionConfig):
    r"""
    Configuration of a [`VariableMemoryMixerForCausalLM`] (research `VariableMemoryMixer`).

    The sequence is cut into chunks of `chunk_length` tokens (at most `num_chunks`). Every finished chunk is
    encoded to one vector (the encoder's output at `memory_position`, through the optional bottleneck and
    `decoder_proj`). Chunk `c` is predicted by a causal mixer decoder over
    `[m_0, ..., m_{c-1}, zeros x (num_chunks - c), tokens of chunk c]` (memories always in the first slots), so the
    model is causal over the whole sequence and its context is `num_chunks * chunk_length` tokens.

    Args:
        vocab_size (`int`, defaults to 8000): size of the token vocabulary (research `n_vocab`).
        encoder_hidden_size (`int`, defaults to 512): encoder width (research `encoder_dim`).
        hidden_size (`int`, defaults to 1024): decoder width (research `dim`).
        encoder_layers (`int`, defaults to 16): encoder blocks (research `depth`, or a frozen encoder's depth).
        decoder_layers (`int`, defaults to 16): decoder blocks (research `depth`).
        chunk_length (`int`, defaults to 256): tokens per chunk (research `length`).
        num_chunks (`int`, defaults to 4): number of chunks, and of memory slots (research `n_chunks`).
        encoder_mixing_kernel_size (`int`, defaults to 1): research `kernel` (encoder only; the research decoder
            always uses kernel 1 and flat mixing).
        encoder_num_mixing_heads (`int`, defaults to 0): research `n_heads` (encoder only).
        encoder_intermediate_size (`int`, *optional*): encoder MLP width; defaults to `4 * encoder_hidden_size`.
        encoder_mixing_out_proj (`bool`, defaults to `False`): a `Linear(D, D)` after the encoder's flat mixing: a
            frozen research `LanguageMixer` encoder with heads (`mixer_clm.py` `MixerHead`, whose heads all compute
            the last head's mixing) is folded into this exactly at conversion.
        compression (`int`, defaults to 1): bottleneck factor on the encoder width (`down`/`up`).
        no_memory (`bool`, defaults to `False`): research ablation: no encoder, every slot stays zero.
        encoder_context (`int`, *optional*): research `encoder_ctx`: each chunk is right-padded with
            `encoder_pad_token_id` to this length before encoding (a frozen encoder built for longer windows).
        encoder_pad_token_id (`int`, defaults to 1): the id used for that padding (the research hard-codes 1).
        memory_position (`int`, defaults to -1): encoder position read as a chunk's memory (with
            `encoder_context`, -1 is the last *padding* position, as in the research).
        use_cache (`bool`, defaults to `True`): keep memories and the decoder state between calls (generation).
        tie_word_embeddings (`bool`, defaults to `False`): share the decoder embedding with `lm_head`.{common}
    """

    model_type = "variable_memory_mixer"
    encoder_hidden_size: int = positive(default=512)
    hidden_size: int = positive(default=1024)
    encoder_layers: int = positive(default=16)
    decoder_layers: int = positive(default=16)
    chunk_length: int = positive(default=256)
    num_chunks: int = positive(default=4)
    encoder_mixing_kernel_size: int = positive(default=1)
    encoder_num_mixing_heads: int = non_negative(default=0)
    encoder_mixing_out_proj: bool = False
    encoder_intermediate_size: int | None = positive(default=None)
    no_memory: bool = False
    encoder_context: int | None = positive(default=None)
    encoder_pad_token_id: int = non_negative(default=1)

    _head_fields = (("encoder_num_mixing_heads", "encoder_hidden_size"),)

    def _fill_defaults(self) -> None:
        self.encoder_intermediate_size = self.encoder_intermediate_size or 4 * self.encoder_hidden_size
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size

    def validate_encoder_window(self) -> None:
        """The encoder window holds a chunk, and the memory is read inside it."""
        self._require(
            self.encoder_context is None or self.encoder_context >= self.chunk_length,
            f"encoder_context = {self.encoder_context} is shorter than chunk_length = {self.chunk_length}; it must "
            "hold a whole chunk (or be None).",
        )
        self._require(-self.encoder_length <= self.memory_position < 0,
                      f"memory_position must be a negative encoder position (-1 = last), got {self.memory_position!r}.")

    @property
    def encoder_length(self) -> int:
        """Positions the encoder is built for: `encoder_context` or `chunk_length`."""
        return self.encoder_context or self.chunk_length

    @property
    def context_length(self) -> int:
        """Longest sequence the model can read: `num_chunks * chunk_length`."""
        return self.num_chunks * self.chunk_length

    def encoder_stack_config(self) -> MaskedMixerConfig:
        return mixer_stack_config(self, self.encoder_hidden_size, self.encoder_layers, self.encoder_length,
                                  self.encoder_mixing_kernel_size, self.encoder_num_mixing_heads,
                                  self.encoder_intermediate_size, self.encoder_mixing_out_proj)

    def decoder_stack_config(self) -> MaskedMixerConfig:
        return mixer_stack_config(self, self.hidden_size, self.decoder_layers, self.num_chunks + self.chunk_length,
                                  intermediate_size=self.intermediate_size)


@strict
class MemoryMixerConfig(CompressionConfig):
    r"""
    Configuration of a [`MemoryMixerForCausalLM`], the memory-token mixer (research `MemoryMixer`).

    One memory vector conditions a causal mixer decoder over a chunk of `chunk_length` tokens, either as an extra
    first token (`combination="token"`) or concatenated to every token embedding (`combination="embedding"`).
    Where the memory comes from is `memory_source`:

    * `"window"` (research): the encoder reads the same window the decoder predicts. This is the research's
      "oracle" memory model (it measures how much a memory vector can carry); it is not a causal LM, so
      inputs are limited to one window and `generate` is refused.
    * `"previous_chunk"`: chunk `c` is decoded from the memory of chunk `c - 1` (the first chunk from an empty,
      all-zero memory). This is causal, has no length limit, and generates across chunks with cached memories.

    Args:
        vocab_size (`int`, defaults to 8000): size of the token vocabulary (research `n_vocab`).
        encoder_hidden_size (`int`, defaults to 512): encoder width (research `encoder_dim`).
        hidden_size (`int`, defaults to 512): width of the decoder's token embeddings (research `dim`); with
            `combination="embedding"` the decoder blocks are `hidden_size + memory_size` wide.
        encoder_layers / decoder_layers (`int`, defaults to 8): blocks of each stack (research `depth`).
        chunk_length (`int`, defaults to 512): tokens per chunk (research `length`).
        mixing_kernel_size (`int`, defaults to 1): research `kernel`, used by encoder and decoder.
        encoder_num_mixing_heads (`int`, defaults to 0): research `n_heads` (encoder only).
        encoder_intermediate_size (`int`, *optional*): encoder MLP width; defaults to `4 * encoder_hidden_size`.
        intermediate_size (`int`, *optional*): decoder MLP width; defaults to 4 x the decoder block width.
        compression (`int`, defaults to 4): bottleneck factor (research default 4); `memory_size =
            encoder_hidden_size // compression`.
        combination (`str`, defaults to `"token"`): `"token"` (the memory, re-expanded by `up` and projected by
            `decoder_proj` when the widths differ, is a first extra position) or `"embedding"` (the code is
            concatenated, first, to every token embedding).
        memory_source (`str`, defaults to `"window"`): see above.
        use_cache (`bool`, defaults to `True`): keep memories and the decoder state between calls (generation).
        tie_word_embeddings (`bool`, defaults to `False`): share the decoder embedding with `lm_head` (only
            possible with `combination="token"`).{common}
    """

    model_type = "memory_mixer"
    encoder_hidden_size: int = positive(default=512)
    hidden_size: int = positive(default=512)
    encoder_layers: int = positive(default=8)
    decoder_layers: int = positive(default=8)
    chunk_length: int = positive(default=512)
    mixing_kernel_size: int = positive(default=1)
    encoder_num_mixing_heads: int = non_negative(default=0)
    encoder_intermediate_size: int | None = positive(default=None)
    compression: int = positive(default=4)
    combination: Combination = "token"
    memory_source: MemorySource = "window"

    _head_fields = (("encoder_num_mixing_heads", "encoder_hidden_size"),)

    def _fill_defaults(self) -> None:
        self.encoder_intermediate_size = self.encoder_intermediate_size or 4 * self.encoder_hidden_size
        self.intermediate_size = self.intermediate_size or 4 * self.decoder_width

    def validate_tying(self) -> None:
        """A tied head needs an embedding of its width."""
        self._require(not self.tie_word_embeddings or self.combination == "token",
                      "tie_word_embeddings needs combination='token': with 'embedding' the head is hidden_size + "
                      "memory_size wide and the embedding hidden_size.")

    @property
    def memory_size(self) -> int:
        """Number of floats a chunk is compressed to."""
        return self.encoder_hidden_size // self.compression

    @property
    def decoder_width(self) -> int:
        """Width of the decoder blocks: `hidden_size`, plus `memory_size` when the memory is concatenated."""
        return self.hidden_size + (self.memory_size if self.combination == "embedding" else 0)

    def encoder_stack_config(self) -> MaskedMixerConfig:
        return mixer_stack_config(self, self.encoder_hidden_size, self.encoder_layers, self.chunk_length,
                                  self.mixing_kernel_size, self.encoder_num_mixing_heads,
                                  self.encoder_intermediate_size)

    def decoder_stack_config(self) -> MaskedMixerConfig:
        length = self.chunk_length + (1 if self.combination == "token" else 0)
        return mixer_stack_config(self, self.decoder_width, self.decoder_layers, length, self.mixing_kernel_size,
                                  intermediate_size=self.intermediate_size)


VariableMemoryMixerConfig.__doc__ = VariableMemoryMixerConfig.__doc__.replace("{common}", COMMON_ARGS_DOC)
MemoryMixerConfig.__doc__ = MemoryMixerConfig.__doc__.replace("{common}", COMMON_ARGS_DOC)

__all__ = ["MemoryMixerConfig", "VariableMemoryMixerConfig"]
