"""Configuration of the retrieval mixer (Badger, "Masked Mixers for Language Generation and Retrieval", 2024)."""

from huggingface_hub.dataclasses import strict

from .zoo_config import ZooConfig, activation, positive, positive_number, std


@strict
class RetrievalMixerConfig(ZooConfig):
    r"""
    Configuration of a [`RetrievalMixerModel`]: a small bidirectional mixer that scores candidate documents for a
    query, all given as embeddings (research `RetrievalMixer(dim, depth, n_samples)`).

    The input is one row of `num_slots` embeddings per query: slot 0 is the query, slots `1 ... num_slots - 1` are
    the candidates. Every block mixes the slots with a full (unmasked) learned `num_slots x num_slots` matrix, so
    the number of slots is part of the parameter shapes and fixed:

    ```
    x = x + M @ LayerNorm_slot(x) + m          # M [n, n], m [n]: every slot sees every slot
    x = x + down_proj(act(up_proj(LayerNorm_channel(x))))
    score_i = w . x_i + b                      # one logit per candidate slot i = 1 ... n - 1
    ```

    Args:
        hidden_size (`int`, defaults to 512): width of the embeddings it scores (research `dim`); must equal the
            embedding model's hidden size.
        num_hidden_layers (`int`, defaults to 8): number of bidirectional mixer blocks (research `depth`).
        num_slots (`int`, defaults to 32): query plus candidates per row (research `n_samples`), at least 2.
        intermediate_size (`int`, *optional*): width of the channel-mixing MLP; defaults to `4 * hidden_size`.
        hidden_act (`str`, defaults to `"gelu"`): activation of the MLP (exact erf GELU in the research code).
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of both LayerNorms of a block.
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear weights.
    """

    model_type = "retrieval_mixer"

    hidden_size: int = positive(default=512)
    num_hidden_layers: int = positive(default=8)
    num_slots: int = positive(default=32)
    intermediate_size: int | None = positive(default=None)
    hidden_act: str = activation(default="gelu")
    layer_norm_eps: int | float = positive_number(default=1e-5)
    initializer_range: int | float = std(default=0.02)

    def _fill_defaults(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size

    def validate_slots(self) -> None:
        """A query needs at least one candidate."""
        self._require(self.num_slots >= 2, f"num_slots counts the query and its candidates, so it must be at least 2, "
                      f"got {self.num_slots}.")

    @property
    def num_candidates(self) -> int:
        """Candidates scored per query: `num_slots - 1`."""
        return self.num_slots - 1


__all__ = ["RetrievalMixerConfig"]
