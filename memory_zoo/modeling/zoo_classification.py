"""Sequence classification on every memory-zoo language model, exactly as transformers classifies with a decoder.

``ZooForSequenceClassification`` is memory-zoo's ``transformers.modeling_layers.GenericForSequenceClassification``
(the class behind ``LlamaForSequenceClassification``, the same on every supported release but for the cache's name):
a bias-free linear ``score`` head reads every position's final hidden state, and each row's logits are those of its
last token that is not ``config.pad_token_id`` (found in ``input_ids``; with ``inputs_embeds``, the last position).
So right padding pools each row's last real token, and left padding pools the last position, which is the row's last
real token computed as if alone wherever the model supports left padding; the memory mixers refuse left padding with
an ``attention_mask`` (their chunks sit at fixed positions) and say so. Without a pad token only a batch of one row can
be classified, as in transformers. The loss is transformers' ``ForSequenceClassificationLoss``: regression (MSE),
single-label (cross-entropy) or multi-label (BCE with logits) by ``config.problem_type``, set from ``num_labels`` and
the labels' dtype on first use.

Each architecture's classifier is the last class of its modeling file and only says where the final hidden states
come from (``_token_states``). This file travels with every saved model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.utils import can_return_tuple, logging

from .zoo_common import ZooPreTrainedModel
from .zoo_compat import ZooModelOutput, answers_to_every_cache_name

logger = logging.get_logger(__name__)


@answers_to_every_cache_name
@dataclass
class ZooSequenceClassifierOutput(SequenceClassifierOutputWithPast):
    """``SequenceClassifierOutputWithPast`` whose cache is ``.cache`` and ``.past_key_values`` on every transformers
    release: ``logits [batch, num_labels]`` (pooled), ``loss`` when labels were given."""


def last_non_pad_token(
    input_ids: torch.Tensor | None, pad_token_id: int | None, batch_size: int, device: torch.device, owner: str
) -> torch.Tensor | int:
    """The position each row is classified at: transformers' rule (``GenericForSequenceClassification``), verbatim.

    The rightmost token that is not ``pad_token_id``, so left and right padding both work (a row of nothing but
    padding gives position 0); -1 without a pad token (one row only) or without ``input_ids``.
    """
    if pad_token_id is None and batch_size != 1:
        raise ValueError(
            "Cannot handle batch sizes > 1 if no padding token is defined. Set config.pad_token_id (e.g. "
            "model.config.pad_token_id = tokenizer.pad_token_id): each row is classified at its last token that is "
            "not padding."
        )
    if pad_token_id is None:
        return -1
    if input_ids is None:
        logger.warning_once(
            f"{owner} will not detect padding tokens in `inputs_embeds`. Results may be unexpected if using padding "
            "tokens in conjunction with `inputs_embeds.`"
        )
        return -1
    non_pad_mask = (input_ids != pad_token_id).to(device, torch.int32)
    token_indices = torch.arange(input_ids.shape[-1], device=device, dtype=torch.int32)
    return (token_indices * non_pad_mask).argmax(-1)


class ZooForSequenceClassification(ZooPreTrainedModel):
    """Base of the ``<Architecture>ForSequenceClassification`` classes (see the module docstring).

    A subclass lists this class first, then its architecture's model class, builds its language model and calls
    ``_add_score(width)`` in ``__init__``; it overrides ``_token_states`` where the final hidden states do not come from
    a bare model under ``base_model_prefix``. ``forward`` takes ``input_ids``, ``attention_mask``, ``labels``
    (``[batch]`` or ``[batch, num_labels]``) and the cache under either of its names, and returns
    ``ZooSequenceClassifierOutput``.
    """

    # Labels are one per row, not one per token (zoo_inputs checks them so).
    labels_per_sequence = True
    # The loss is a mean over the rows that ignores the Trainer's `num_items_in_batch` (transformers' classification
    # loss): the Trainer must then scale it for gradient accumulation itself.
    accepts_loss_kwargs = False

    @classmethod
    def can_generate(cls) -> bool:
        # A classifier built on a causal LM class would inherit its generation ability; it predicts labels, not text.
        return False

    def _add_score(self, width: int) -> None:
        """The classification head: `width` features to `config.num_labels` logits, no bias (as transformers)."""
        self.num_labels = self.config.num_labels
        self.score = nn.Linear(width, self.config.num_labels, bias=False)

    def _token_states(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        cache,
        inputs_embeds: torch.Tensor | None,
        use_cache: bool,
        output_hidden_states: bool | None,
    ) -> ZooModelOutput:
        """The final hidden state of every position (`last_hidden_state [batch, seq_len, width]`), and the cache and
        per-layer hidden states where the language model gives them.

        As in transformers, from the bare model under `base_model_prefix`; models without a bare model override it.
        """
        return getattr(self, self.base_model_prefix)(
            input_ids=input_ids, attention_mask=attention_mask, cache=cache, inputs_embeds=inputs_embeds,
            use_cache=use_cache, output_hidden_states=output_hidden_states, return_dict=True,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ZooSequenceClassifierOutput:
        r"""
        attention_mask (`torch.Tensor`, *optional*): the model's own padding mask (what it supports: see its page);
            the classified position is found from `config.pad_token_id` in `input_ids`, as transformers does.
        labels (`torch.Tensor` of shape `[batch]` or `[batch, num_labels]`, *optional*): class ids (single-label,
            -100 ignored), floats (regression) or 0/1 floats (multi-label), read by `config.problem_type`.
        use_cache (`bool`, *optional*): return the language model's cache (default False: a classifier reads one
            position per row, and the cache would only hold memory).
        """
        outputs = self._token_states(input_ids, attention_mask, cache, inputs_embeds, bool(use_cache),
                                     output_hidden_states)
        hidden_states = outputs.last_hidden_state
        # Every position is scored, then pooled, as transformers does (so the numbers are the same to the last bit).
        logits = self.score(hidden_states)
        batch_size = input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0]
        position = last_non_pad_token(input_ids, self.config.get_text_config().pad_token_id, batch_size,
                                      logits.device, type(self).__name__)
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), position]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return ZooSequenceClassifierOutput(
            loss=loss, logits=pooled_logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )


class ZooCausalLMForSequenceClassification(ZooForSequenceClassification):
    """Base of the classifiers of architectures whose causal LM has no bare model (the memory mixers and the
    variable-memory transformer): the subclass lists this class first and the causal-LM class second.

    The classifier is that causal LM with its `lm_head` made an identity and a `score` head added: its weights are the
    causal LM's less `lm_head` (so a causal-LM checkpoint loads into it and leaves the head behind), and the causal LM's
    own forward, every check and path included (chunking, padding rules, length limits, cache), returns the final
    hidden states as its logits.
    """

    # The language-model head is gone: nothing to tie, and a checkpoint's `lm_head` is left behind.
    _tied_weights_keys = None
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)  # the causal LM, built and initialised as it is
        width = self.lm_head.in_features
        self.lm_head = nn.Identity()
        self._add_score(width)
        self.post_init()  # initialises the new head only: the rest is marked initialised already

    def get_output_embeddings(self) -> None:
        return None  # no language-model head (resizing the vocabulary resizes the input embedding alone)

    def _token_states(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        cache,
        inputs_embeds: torch.Tensor | None,
        use_cache: bool,
        output_hidden_states: bool | None,
    ) -> ZooModelOutput:
        # The causal-LM class is the next one after this family in the method resolution order.
        outputs = super(ZooForSequenceClassification, self).forward(
            input_ids=input_ids, attention_mask=attention_mask, cache=cache, inputs_embeds=inputs_embeds,
            use_cache=use_cache, output_hidden_states=output_hidden_states, return_dict=True,
        )
        return ZooModelOutput(last_hidden_state=outputs.logits, cache=outputs.cache,
                              hidden_states=getattr(outputs, "hidden_states", None))


__all__ = ["ZooCausalLMForSequenceClassification", "ZooForSequenceClassification", "ZooSequenceClassifierOutput",
           "last_non_pad_token"]
