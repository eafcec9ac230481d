"""PyTorch retrieval mixer: scores candidate documents for a query from their embeddings.

Research code: blbadger/maskedmixers `RetrievalMixer` (`mixer_lm/retrieval_mixer_tinystories.py`,
`fineweb_retrieval.py`, `optimized_train_retrieval.py`, which agree on the weights). It is the second stage of the
research "embedding + retrieval model" method: a Masked Mixer embeds the query and the texts (`embed(...)`), and
this model reads one row `[query, candidate_1, ..., candidate_{n-1}]` of those embeddings and returns one logit per
candidate. Differences from the research code, all deliberate:

* `forward` returns `logits [batch, n - 1]` (the research returned `[batch, n - 1, 1]` in two files and
  `[batch, n, 1]`, query slot included, in the third) and computes the loss only when `labels` are given;
* the slot-mixing `Conv1d(n, n, 1)` is stored as the `[n, n]` matrix it is, and the MLP reuses the Masked Mixer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, can_return_tuple

from ..configuration.configuration_retrieval_mixer import RetrievalMixerConfig
from .modeling_masked_mixer import MaskedMixerMLP
from .zoo_common import ZooPreTrainedModel


@dataclass
class RetrievalMixerOutput(ModelOutput):
    """Output of [`RetrievalMixerModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): cross-entropy of `logits` against `labels`.
        logits (`torch.FloatTensor` of shape `[batch, num_slots - 1]`): one score per candidate slot `1 ... n - 1`;
            `argmax` is the predicted match (candidate index = slot - 1).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the input and every block's output `[batch, n, D]`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class RetrievalMixerSlotMixing(nn.Module):
    """A full learned `n x n` matrix mixing the slots (every slot sees every slot), one bias per output slot."""

    def __init__(self, num_slots: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_slots, num_slots))
        self.bias = nn.Parameter(torch.empty(num_slots))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.weight, hidden_states) + self.bias[:, None]


class RetrievalMixerBlock(GradientCheckpointingLayer):
    """Pre-norm block: slot mixing then channel mixing, each with a residual connection (research
    `BidirectionalMixerBlock`)."""

    def __init__(self, config: RetrievalMixerConfig):
        super().__init__()
        self.slot_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.slot_mixing = RetrievalMixerSlotMixing(config.num_slots)
        self.channel_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MaskedMixerMLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.slot_mixing(self.slot_norm(hidden_states))
        return hidden_states + self.mlp(self.channel_norm(hidden_states))


class RetrievalMixerPreTrainedModel(ZooPreTrainedModel):
    """Weight initialisation, checkpoint loading and remote-code export of the retrieval mixer."""

    config_class = RetrievalMixerConfig
    base_model_prefix = "model"
    main_input_name = "inputs_embeds"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RetrievalMixerBlock"]
    _auto_map_classes = {"AutoModel": "RetrievalMixerModel"}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RetrievalMixerSlotMixing):
            # PyTorch's Conv1d default, as in the research code: U(-1/sqrt(n), 1/sqrt(n)).
            bound = 1.0 / math.sqrt(module.weight.shape[-1])
            init.uniform_(module.weight, -bound, bound)
            init.uniform_(module.bias, -bound, bound)


class RetrievalMixerModel(RetrievalMixerPreTrainedModel):
    """Bidirectional mixer over `[query, candidates...]` embeddings with a linear scoring head.

    `model(inputs_embeds=rows).logits` gives `[batch, num_slots - 1]` candidate scores; with `labels` (the index of
    the matching candidate, `0 ... num_slots - 2`) it also returns their cross-entropy, the research training loss.
    [`score`] takes the query and the candidates separately.
    """

    def __init__(self, config: RetrievalMixerConfig):
        super().__init__(config)
        self.layers = nn.ModuleList([RetrievalMixerBlock(config) for _ in range(config.num_hidden_layers)])
        self.score_head = nn.Linear(config.hidden_size, 1)
        self.gradient_checkpointing = False
        self.post_init()

    def _check_inputs(self, inputs_embeds: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        config = self.config
        if inputs_embeds is None:
            raise ValueError("RetrievalMixerModel reads embeddings, not token ids: pass inputs_embeds of shape "
                             f"[batch, {config.num_slots}, {config.hidden_size}] (slot 0 the query, then the candidates).")
        if inputs_embeds.dim() < 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape [batch, {config.num_slots}, {config.hidden_size}] (slot 0 the query, "
                f"then {config.num_candidates} candidates, each a {config.hidden_size}-dim embedding from the model "
                f"this retrieval mixer was trained with), got {tuple(inputs_embeds.shape)}."
            )
        if inputs_embeds.shape[-2] != config.num_slots:
            raise ValueError(
                f"This retrieval mixer scores exactly {config.num_candidates} candidates per query "
                f"(config.num_slots = {config.num_slots}: the query and its candidates; the slot-mixing matrices have "
                f"one row per slot), got {inputs_embeds.shape[-2]} slots. Rank longer lists in groups of "
                f"{config.num_candidates}."
            )
        # The research code also took [batch, 1, n, D] ("b p t f -> (b p) t f"): leading axes are rows.
        inputs_embeds = inputs_embeds.reshape(-1, config.num_slots, config.hidden_size)
        if labels is not None:
            if labels.numel() != inputs_embeds.shape[0]:
                raise ValueError(f"labels must hold one candidate index per row ({inputs_embeds.shape[0]}), "
                                 f"got shape {tuple(labels.shape)}.")
            if bool(((labels < 0) | (labels >= config.num_candidates)).any()):
                raise ValueError(
                    f"labels are candidate indices 0 ... {config.num_candidates - 1} (matching slot - 1; slot 0 is the "
                    f"query), got values from {int(labels.min())} to {int(labels.max())}."
                )
        return inputs_embeds

    @can_return_tuple
    def forward(
        self,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> RetrievalMixerOutput:
        r"""
        inputs_embeds (`torch.FloatTensor` of shape `[batch, num_slots, hidden_size]`): per row, the query embedding
            in slot 0 and the candidate embeddings in slots `1 ... num_slots - 1`.
        labels (`torch.LongTensor` of shape `[batch]`, *optional*): index of the matching candidate in
            `0 ... num_slots - 2` (its slot minus one).
        """
        hidden_states = self._check_inputs(inputs_embeds, labels)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        # The query slot gets a score too (the research computed it), but it is never a candidate.
        logits = self.score_head(hidden_states[:, 1:]).squeeze(-1)
        loss = F.cross_entropy(logits.float(), labels.reshape(-1).to(logits.device)) if labels is not None else None
        return RetrievalMixerOutput(loss=loss, logits=logits, hidden_states=all_hidden_states)

    def score(self, query_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor) -> torch.Tensor:
        """Candidate scores `[batch, num_slots - 1]` for `query_embeddings [batch, D]` and `candidate_embeddings
        [batch, num_slots - 1, D]`."""
        if query_embeddings.dim() != 2 or candidate_embeddings.dim() != 3:
            raise ValueError(f"score takes query_embeddings [batch, D] and candidate_embeddings [batch, n - 1, D], got "
                             f"{tuple(query_embeddings.shape)} and {tuple(candidate_embeddings.shape)}.")
        return self(inputs_embeds=torch.cat([query_embeddings[:, None], candidate_embeddings], dim=1)).logits


__all__ = ["RetrievalMixerModel", "RetrievalMixerOutput", "RetrievalMixerPreTrainedModel"]
