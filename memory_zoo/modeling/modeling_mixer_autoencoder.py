"""PyTorch masked-mixer autoencoder: a window of text compressed to one vector and reconstructed from it.

Research code: blbadger/memorymodels, `AutoencodingMixer` (`memorymodels/mixer_autoencoder.py`). Encoder and
decoder are stacks of the Masked Mixer's own blocks ([`MaskedMixerBlock`]). Differences from the research code,
all deliberate:

* the causal mask of the token mixing is applied functionally (research checkpoints hold unmasked weights);
* logits are `[batch, seq_len, vocab]` (the research returned `[batch, vocab, seq_len]`);
* `encode` / `decode` are public, so text can be compressed to vectors and regenerated from them;
* inputs shorter than the window use the leading positions of every mixing matrix (exactly what a causal mixer
  computes for the first `T` positions); longer inputs raise a clear error.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configuration.configuration_mixer_autoencoder import MixerAutoencoderConfig
from .modeling_masked_mixer import MaskedMixerBlock, MaskedMixerPreTrainedModel, MixingPositions
from .zoo_compression import AutoencoderOutput, unroll_memory


class MixerAutoencoderPreTrainedModel(MaskedMixerPreTrainedModel):
    """Weight initialisation, checkpoint loading and remote-code export of the mixer autoencoder."""

    config_class = MixerAutoencoderConfig
    base_model_prefix = "autoencoder"
    _auto_map_classes = {"AutoModel": "MixerAutoencoderModel"}

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False


class MixerAutoencoderModel(MixerAutoencoderPreTrainedModel):
    """Masked-mixer autoencoder: `encode(input_ids)` gives one memory vector per window, `decode(memory)` the logits
    of the reconstructed window, and `forward` does both (with the reconstruction loss when `labels` are given)."""

    # The loss is a mean of the model's own (research) form and ignores the Trainer's `num_items_in_batch`: the Trainer
    # must then scale it for gradient accumulation and devices itself (else it is multiplied by the world size).
    accepts_loss_kwargs = False

    def __init__(self, config: MixerAutoencoderConfig):
        super().__init__(config)
        encoder, decoder = config.encoder_stack_config(), config.decoder_stack_config()
        width = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, width, config.pad_token_id)
        self.encoder_layers = nn.ModuleList([MaskedMixerBlock(encoder, i) for i in range(config.encoder_layers)])
        self.down = nn.Linear(width, config.memory_size) if config.compression > 1 else None
        self.up = nn.Linear(config.memory_size, width) if config.compression > 1 else None
        self.projection = nn.Linear(width // 2, width) if config.decoder_input == "unroll" else None
        self.decoder_layers = nn.ModuleList([MaskedMixerBlock(decoder, i) for i in range(config.decoder_layers)])
        self.lm_head = nn.Linear(width, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def _check_length(self, length: int) -> None:
        window = self.config.window_length
        if length > window:
            raise ValueError(
                f"This autoencoder compresses windows of at most {window} tokens (config.window_length) but got "
                f"{length}: its mixing matrices have no weights beyond position {window - 1}. Split the text into "
                f"windows of {window} tokens (tokenizer(..., truncation=True, max_length={window}), or "
                "memory_zoo.metrics.encode_texts which batches and windows for you)."
            )
        if length < -self.config.memory_position:
            raise ValueError(f"The memory is read at position {self.config.memory_position}, so inputs need at least "
                             f"{-self.config.memory_position} tokens; got {length}.")

    def encode(self, input_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Compress windows `input_ids [batch, T <= window_length]` to their codes `[batch, memory_size]`.

        The encoder is causal, so the last position is the only one that has read the whole window; its output
        (at `config.memory_position`), through the bottleneck when `compression > 1`, is the code.
        """
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if hidden.dim() != 3:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(hidden.shape[:-1])}.")
        self._check_length(hidden.shape[1])
        positions = MixingPositions(0)
        for layer in self.encoder_layers:
            hidden = layer(hidden, positions)
        memory = hidden[:, self.config.memory_position]
        return self.down(memory) if self.down is not None else memory

    def decode(self, memory: torch.Tensor, length: int | None = None,
               output_hidden_states: bool = False) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Reconstruction logits `[batch, length, vocab]` of windows from their codes `memory [batch, memory_size]`.

        `length` defaults to `window_length`; a shorter one gives exactly the first `length` positions.
        With `output_hidden_states=True`, also returns the decoder's hidden states (input and every block).
        """
        length = self.config.window_length if length is None else length
        if memory.dim() != 2 or memory.shape[-1] != self.config.memory_size:
            raise ValueError(f"memory must be [batch, memory_size = {self.config.memory_size}] (what encode returns), "
                             f"got shape {tuple(memory.shape)}.")
        self._check_length(length)
        memory = memory.to(self.lm_head.weight.dtype)
        memory = self.up(memory) if self.up is not None else memory
        if self.projection is not None:
            hidden = self.projection(unroll_memory(memory, length))
        else:
            hidden = memory[:, None, :].expand(-1, length, -1)
        positions = MixingPositions(0)
        states = (hidden,)
        for layer in self.decoder_layers:
            hidden = layer(hidden, positions)
            states += (hidden,)
        logits = self.lm_head(hidden)
        return (logits, states) if output_hidden_states else logits

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AutoencoderOutput | tuple:
        r"""
        attention_mask (`torch.Tensor`, *optional*): accepted for compatibility with tokenizers and collators, and
            not used: padding tokens are part of the window, as in the research training (which left-pads windows
            and sets the labels of padding to `-100`).
        labels (`torch.LongTensor` of shape `[batch, seq_len]`, *optional*): the tokens to reconstruct, usually
            `input_ids`; the loss is the mean cross-entropy over all positions without shift, `-100` ignored.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        memory = self.encode(input_ids, inputs_embeds)
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        logits, states = self.decode(memory, length, output_hidden_states=True)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels must have the shape of input_ids {tuple(logits.shape[:2])}, got "
                                 f"{tuple(labels.shape)}.")
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten().to(logits.device),
                                               ignore_index=-100)
        output = AutoencoderOutput(loss=loss, logits=logits, memory=memory,
                                   hidden_states=states if output_hidden_states else None)
        return output if return_dict is not False else output.to_tuple()


__all__ = ["MixerAutoencoderModel", "MixerAutoencoderPreTrainedModel"]
