"""Retrieval embeddings: query/document pairs from plain text, the InfoNCE loss, top-1 accuracy and a Trainer.

The Masked Mixer research (Badger, *Masked Mixers for Language Generation and Retrieval*; blbadger/maskedmixers,
`mixer_lm/infonce_retrieval.py`) fine-tunes a causal-LM-trained model into a retrieval embedder: a text's embedding
is the hidden state of its second-to-last real token ([`MaskedMixerModel.embed`]), and the loss is InfoNCE on cosine
similarities at temperature 0.02. Its evaluation is top-1 accuracy of the matching document among `n` candidates
(L2-normalised embeddings, dot product), reported for `n = 32 ... 8192`.

* [`make_retrieval_pairs`]: query -> document pairs from any plain text (an inverse cloze task, see there), for
  texts that come without the research's LLM-written summaries. [`RetrievalPairsDataset`] adds freshly drawn random
  negative documents to every item, as the research dataset does.
* [`info_nce_loss`]: InfoNCE with in-batch negatives and/or given negatives; the research form is one query, its
  document and given negatives (`in_batch_negatives=False`).
* [`retrieval_accuracy`]: top-1 accuracy among `n` candidates, for several `n` at once.
* [`embed_texts`]: embeddings of a list of texts in batches, for evaluation.
* [`InfoNCECollator`] and [`InfoNCETrainer`]: InfoNCE fine-tuning on the Hugging Face `Trainer`. Any model with an
  `embed(input_ids, attention_mask)` method (every Masked Mixer) works as is; any other transformers model (a Llama
  baseline) through `embed_fn=hidden_state_embeddings`, which pools its last hidden states the same way. The trained
  model stays a plain model: `trainer.save_model()` writes a normal model folder (for a Masked Mixer, one that also
  loads with `SentenceTransformer(folder, trust_remote_code=True)`).

Texts are right-padded everywhere here: in a causal model, real tokens never see the pads that follow them, so
right padding is exact for every architecture (left padding shifts a Llama's positions).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from .evaluation import model_context
from .metrics import _eval_mode, _model_device
from .modeling.zoo_embedding import EmbeddingPooling, pool_hidden_states

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_CANDIDATES = (32, 64, 128, 256, 512, 1024)  # the research plot continues to 8192
RESEARCH_TEMPERATURE = 0.02  # infonce_retrieval.py keeps 0.02 (the blog says the temperature was removed)

EmbedFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "DEFAULT_CANDIDATES",
    "RESEARCH_TEMPERATURE",
    "EmbedFn",
    "InfoNCECollator",
    "InfoNCETrainer",
    "RetrievalPairsDataset",
    "embed_texts",
    "hidden_state_embeddings",
    "info_nce_loss",
    "make_retrieval_pairs",
    "model_embeddings",
    "retrieval_accuracy",
]


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def make_retrieval_pairs(
    text: str,
    *,
    passage_words: int = 48,
    query_words: int = 8,
    remove_query: bool = False,
    seed: int = 0,
    max_pairs: int | None = None,
) -> list[dict[str, str]]:
    """Query -> document pairs from plain text: one pair per passage of `passage_words` consecutive words.

    The query is a span of `query_words` consecutive words at a random place in the passage; the document is the
    passage. Two tasks, by `remove_query`:

    * `False` (default): the document contains the query, as a text contains the words of its summary. Retrieval
      is lexical matching, but not a trivial one for an embedding: one vector per text must keep enough of every
      word of a passage to be matched by a few of them, among thousands of passages of the same style. This is the
      task of `examples/infonce_retrieval.py` and `benchmarks/retrieval.py`.
    * `True`: the span is cut out of the document, the inverse cloze task of Lee et al. (2019, ORQA), a standard
      way to pre-train retrievers on unlabelled text. The query is never a substring of its document and must be
      matched by what surrounds it (scene, speaker, the sentence it completes). Much harder: in CPU-scale runs on
      tinyshakespeare (width 128, 4 blocks, 300 InfoNCE steps) a masked mixer and a transformer both stayed at
      chance on it.

    Passages are consecutive and do not overlap (a final passage shorter than `passage_words` is dropped); words are
    runs of non-whitespace and passages keep the text's own line breaks. Pairs come in text order, so splitting the
    list at an index splits the text. The result depends only on the arguments.

    Args:
        text: any plain text.
        passage_words: words per passage.
        query_words: words per query span, fewer than `passage_words`.
        remove_query: cut the query span out of the document (the inverse cloze task, see above).
        seed: seed of the span positions and of the choice of `max_pairs` passages.
        max_pairs: keep this many pairs, drawn at random over the whole text (in text order); all when None.

    Returns:
        A list of `{"query": str, "document": str}`; a list of dicts is a dataset the `Trainer` accepts as is.
    """
    for name, value in (("passage_words", passage_words), ("query_words", query_words)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if query_words >= passage_words:
        raise ValueError(f"query_words ({query_words}) must be smaller than passage_words ({passage_words}): the "
                         "query is a span of the passage. Lower query_words or raise passage_words.")
    if max_pairs is not None and (not isinstance(max_pairs, int) or max_pairs < 1):
        raise ValueError(f"max_pairs must be a positive integer or None, got {max_pairs!r}.")

    words = [match.span() for match in re.finditer(r"\S+", text)]
    available = len(words) // passage_words
    wanted = available if max_pairs is None else max_pairs
    if available == 0 or wanted > available:
        raise ValueError(
            f"The text has {len(words)} words, which make {available} passages of {passage_words} words, but "
            f"{wanted or 1} pair(s) were requested. Give a longer text, a smaller passage_words, or fewer max_pairs."
        )
    rng = random.Random(seed)
    chosen = range(available) if wanted == available else sorted(rng.sample(range(available), wanted))
    pairs = []
    for index in chosen:
        passage = words[index * passage_words : (index + 1) * passage_words]
        first = rng.randrange(passage_words - query_words + 1)
        span_start, span_end = passage[first][0], passage[first + query_words - 1][1]
        start, end = passage[0][0], passage[-1][1]
        if remove_query:
            document = " ".join(part for part in (text[start:span_start].rstrip(), text[span_end:end].lstrip()) if part)
        else:
            document = text[start:end]
        pairs.append({"query": text[span_start:span_end], "document": document})
    return pairs


class RetrievalPairsDataset(torch.utils.data.Dataset):
    """Query/document pairs, each item with `num_negatives` random other documents drawn afresh at every access.

    This is the research `RetrievalDataset`'s sampling (distinct random non-matching texts for every item, every
    epoch) in the `{"query", "document", "negatives"}` layout [`InfoNCECollator`] reads. Draws come from the
    dataset's own seeded generator, so a single-process run is reproducible.
    """

    def __init__(self, pairs: Sequence[Mapping[str, str]], num_negatives: int = 0, *, seed: int = 0) -> None:
        if not isinstance(num_negatives, int) or num_negatives < 0:
            raise ValueError(f"num_negatives must be a non-negative integer, got {num_negatives!r}.")
        if num_negatives > len(pairs) - 1:
            raise ValueError(f"num_negatives={num_negatives} but there are only {len(pairs)} pairs, so at most "
                             f"{max(len(pairs) - 1, 0)} other documents; lower num_negatives or give more pairs.")
        self.pairs = list(pairs)
        self.num_negatives = num_negatives
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"query": self.pairs[index]["query"], "document": self.pairs[index]["document"]}
        if self.num_negatives:
            # Drawing from the others directly: rejection sampling would loop forever on a 2-pair dataset.
            others = self._rng.sample(range(len(self.pairs) - 1), self.num_negatives)
            item["negatives"] = [self.pairs[i + (i >= index)]["document"] for i in others]
        return item


# ---------------------------------------------------------------------------------------------------------------------
# Loss and accuracy
# ---------------------------------------------------------------------------------------------------------------------


def info_nce_loss(
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor,
    negative_embeddings: torch.Tensor | None = None,
    *,
    temperature: float = RESEARCH_TEMPERATURE,
    in_batch_negatives: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""InfoNCE on cosine similarities: `-log(e^{s+/t} / (e^{s+/t} + sum_neg e^{s-/t}))`, one term per query.

    `s+ = cos(q_i, d_i)` and the negatives of query `i` are:

    * with `in_batch_negatives=True` (default): every other row's document, and its own given negatives;
    * with `in_batch_negatives=False`: its own given negatives only. One query with its document and `k` random
      texts is the research `infoNCEloss` exactly (up to its `sum` over its one query).

    Other rows' given negatives are not used: random negatives are other pairs' documents, and another row's
    negative can be this query's own document, which would then count against it.

    Computed as a cross-entropy over the scaled similarities (log-sum-exp), so a small temperature cannot overflow.
    A batch of one query with no given negatives has no negative: its loss is `-log 1 = 0`.

    Args:
        query_embeddings: `[batch, dim]`.
        document_embeddings: `[batch, dim]`, row `i` the document of query `i`.
        negative_embeddings: `[batch, k, dim]`, `k` non-matching documents per query, or None.
        temperature: divides the cosine similarities (research: 0.02).
        in_batch_negatives: use the other rows' documents as negatives too.
        reduction: `"mean"` or `"sum"` over queries, or `"none"` for the `[batch]` losses.
    """
    if query_embeddings.dim() != 2 or query_embeddings.shape != document_embeddings.shape:
        raise ValueError(f"query_embeddings and document_embeddings must both be [batch, dim] with the same shape; "
                         f"got {tuple(query_embeddings.shape)} and {tuple(document_embeddings.shape)}.")
    batch, dim = query_embeddings.shape
    if negative_embeddings is not None and (
        negative_embeddings.dim() != 3 or negative_embeddings.shape[0] != batch or negative_embeddings.shape[2] != dim
    ):
        raise ValueError(f"negative_embeddings must be [batch, k, dim] = [{batch}, k, {dim}], "
                         f"got {tuple(negative_embeddings.shape)}.")
    if not in_batch_negatives and (negative_embeddings is None or negative_embeddings.shape[1] == 0):
        raise ValueError("in_batch_negatives=False and no negative_embeddings: every query would be compared with "
                         "its own document only. Pass negative_embeddings [batch, k, dim] or in_batch_negatives=True.")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r} (research: 0.02).")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")

    queries = F.normalize(query_embeddings, dim=-1)
    documents = F.normalize(document_embeddings, dim=-1)
    negatives = None if negative_embeddings is None else F.normalize(negative_embeddings, dim=-1)
    if in_batch_negatives:
        # Column i is query i's positive; every other column is a negative for it.
        scores = queries @ documents.T
        targets = torch.arange(batch, device=scores.device)
    else:
        scores = (queries * documents).sum(-1, keepdim=True)
        targets = torch.zeros(batch, dtype=torch.long, device=scores.device)
    if negatives is not None:
        scores = torch.cat([scores, torch.einsum("bd,bkd->bk", queries, negatives)], dim=1)
    return F.cross_entropy(scores / temperature, targets, reduction=reduction)


def retrieval_accuracy(
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor,
    candidates: int | Sequence[int] = DEFAULT_CANDIDATES,
    *,
    seed: int = 0,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Top-1 retrieval accuracy among `n` candidates, for every `n` in `candidates`: `{n: accuracy}`.

    Query `i` is scored (cosine similarity, i.e. the dot product of L2-normalised embeddings, as in the research
    evaluation) against its own document `i` and `n - 1` distinct other documents drawn at random; it counts as
    retrieved when its own document scores strictly higher than all of them (a tie counts as a miss, so a collapsed
    embedding that maps everything to one vector scores 0, not 1). Each query's candidates for a larger `n` include
    those for a smaller one, so accuracy never rises with `n` and the curve is not noisier than the data. Chance level
    is `1 / n`.

    Args:
        query_embeddings: `[N, dim]`.
        document_embeddings: `[N, dim]`, row `i` the document of query `i`.
        candidates: one `n` or several; each at most `N`.
        seed: seed of the random candidate sets.
        chunk_size: queries scored at once (memory is `chunk_size x N`).
    """
    if query_embeddings.dim() != 2 or query_embeddings.shape != document_embeddings.shape:
        raise ValueError(f"query_embeddings and document_embeddings must both be [N, dim] with the same shape (row i "
                         f"of each is pair i); got {tuple(query_embeddings.shape)} and "
                         f"{tuple(document_embeddings.shape)}.")
    total = len(query_embeddings)
    sizes = sorted(set([candidates] if isinstance(candidates, int) else candidates))
    if not sizes or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"candidates must be positive integers, got {candidates!r}.")
    if sizes[-1] > total:
        raise ValueError(f"{sizes[-1]} candidates per query were asked for but there are only {total} documents; "
                         f"use candidate counts of at most {total}, or evaluate on more pairs.")
    queries = F.normalize(query_embeddings.detach().float(), dim=-1)
    documents = F.normalize(document_embeddings.detach().float(), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    hits = dict.fromkeys(sizes, 0)
    for start in range(0, total, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, total))
        local = torch.arange(len(rows))
        scores = queries[rows] @ documents.T
        positive = scores[local, rows]
        if sizes[-1] == 1:
            hits[1] += len(rows)
            continue
        # A random order of the other documents per query: sort uniform keys, with the query's own document's key
        # above every other so it sorts last and is never drawn as a negative.
        keys = torch.rand(len(rows), total, generator=generator)
        keys[local, rows] = 2.0
        order = keys.argsort(dim=1)[:, : sizes[-1] - 1].to(scores.device)
        best_negative = scores.gather(1, order).cummax(dim=1).values  # column j: best of the first j + 1 negatives
        for n in sizes:
            hits[n] += len(rows) if n == 1 else int((positive > best_negative[:, n - 2]).sum())
    return {n: hits[n] / total for n in sizes}


# ---------------------------------------------------------------------------------------------------------------------
# Embedding functions
# ---------------------------------------------------------------------------------------------------------------------


def _embed_method(model: nn.Module) -> Callable[..., torch.Tensor]:
    embed = getattr(model, "embed", None)
    if embed is None:
        raise TypeError(
            f"{type(model).__name__} has no embed(input_ids, attention_mask) method. For any transformers model, pass "
            "embed_fn=memory_zoo.retrieval.hidden_state_embeddings (its last hidden state at the research position), "
            "or a function (model, input_ids, attention_mask) -> [batch, dim] of your own."
        )
    return embed


def model_embeddings(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`model.embed(input_ids, attention_mask)`: the default `embed_fn` (every Masked Mixer has `embed`)."""
    return _embed_method(model)(input_ids, attention_mask)


def hidden_state_embeddings(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    pooling: EmbeddingPooling = "second_to_last",
) -> torch.Tensor:
    """Embeddings of any transformers model: its base model's `last_hidden_state`, pooled by `pool_hidden_states`.

    For a `LlamaForCausalLM` this is the research `RetrievalTransformer` (the `LlamaModel` output, final norm
    included, read at the second-to-last real token). Use `functools.partial(hidden_state_embeddings,
    pooling="last")` for the last real token.
    """
    base = getattr(model, "base_model", model)
    outputs = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return pool_hidden_states(outputs.last_hidden_state, attention_mask, pooling=pooling)


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token, so texts of different lengths cannot be batched. Set one, "
                         "e.g. tokenizer.pad_token = tokenizer.eos_token (the research convention).")


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, add_special_tokens: bool
) -> dict[str, torch.Tensor]:
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, padding_side="right",
                     add_special_tokens=add_special_tokens, return_tensors="pt")


def _resolve_max_length(model: nn.Module | None, max_length: int | None) -> int:
    if max_length is None and model is not None and getattr(model, "config", None) is not None:
        max_length = model_context(model.config)
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2 (the tokens a text is truncated to; a Masked Mixer's "
                         f"fixed context, config.max_position_embeddings), got {max_length!r}.")
    return max_length


def embed_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 64,
    embed_fn: EmbedFn | None = None,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """Embed `texts` in batches, in eval mode without gradients: `[len(texts), dim]`, float32, on the CPU.

    Texts are right-padded and truncated to `max_length` tokens (default: the model's context, e.g. a Masked Mixer's
    `max_position_embeddings`), exactly as [`InfoNCECollator`] prepares them for training.
    """
    _check_tokenizer(tokenizer)
    max_length = _resolve_max_length(model, max_length)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    embed_fn = embed_fn or model_embeddings
    device = _model_device(model)
    vectors = []
    with _eval_mode(model):
        for start in range(0, len(texts), batch_size):
            batch = _tokenize(tokenizer, texts[start : start + batch_size], max_length, add_special_tokens)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            vectors.append(embed_fn(model, ids, mask).float().cpu())
    if not vectors:
        raise ValueError("texts is empty: there is nothing to embed.")
    return torch.cat(vectors)


# ---------------------------------------------------------------------------------------------------------------------
# Trainer integration
# ---------------------------------------------------------------------------------------------------------------------


class InfoNCECollator:
    """Tokenizes `{"query", "document"[, "negatives"]}` items into the batch [`InfoNCETrainer`] consumes.

    Output: `query_input_ids` / `query_attention_mask` `[batch, T_q]`, `document_input_ids` /
    `document_attention_mask` `[batch, T_d]` and, when the items carry `negatives` (a list of `k` texts each, the
    same `k` for every item), `negative_input_ids` / `negative_attention_mask` `[batch, k, T_n]`. Every text is
    right-padded to the longest in its group and truncated to `max_length` tokens: a Masked Mixer's context is fixed
    (`config.max_position_embeddings`) and longer inputs raise.

    Args:
        tokenizer: any tokenizer with a pad token.
        max_length: the most tokens per text (the model's context).
        add_special_tokens: passed to the tokenizer; the default (True) tokenizes as sentence-transformers' `encode`
            and a plain `tokenizer(texts)` do, so training and inference see the same tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, *, add_special_tokens: bool = True) -> None:
        _check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.max_length = _resolve_max_length(None, max_length)
        self.add_special_tokens = add_special_tokens

    def _encode(self, texts: Sequence[str], prefix: str) -> dict[str, torch.Tensor]:
        encoded = _tokenize(self.tokenizer, texts, self.max_length, self.add_special_tokens)
        return {f"{prefix}_input_ids": encoded["input_ids"], f"{prefix}_attention_mask": encoded["attention_mask"]}

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        for key in ("query", "document"):
            missing = [i for i, feature in enumerate(features) if not isinstance(feature.get(key), str)]
            if missing:
                raise ValueError(f"Items {missing[:5]} have no {key!r} text; InfoNCECollator reads items "
                                 "{'query': str, 'document': str[, 'negatives': list[str]]} (make_retrieval_pairs "
                                 "builds them).")
        batch = self._encode([f["query"] for f in features], "query")
        batch.update(self._encode([f["document"] for f in features], "document"))
        counts = {len(f["negatives"]) if f.get("negatives") is not None else 0 for f in features}
        if counts != {0}:
            if len(counts) > 1:
                raise ValueError(f"Items of one batch carry different numbers of negatives ({sorted(counts)}); give "
                                 "every item the same number (RetrievalPairsDataset(pairs, num_negatives=k) does).")
            (k,) = counts
            negatives = self._encode([text for f in features for text in f["negatives"]], "negative")
            batch.update({name: value.view(len(features), k, -1) for name, value in negatives.items()})
        return batch


class InfoNCETrainer(Trainer):
    """The Hugging Face `Trainer` with the InfoNCE loss of [`info_nce_loss`] on a model's text embeddings.

    The training data is any dataset of `{"query", "document"[, "negatives"]}` items (a list from
    [`make_retrieval_pairs`], a [`RetrievalPairsDataset`], a `datasets.Dataset`). Its columns are read by the
    collator, not by `model.forward`, so the Trainer's `remove_unused_columns` does not apply and is ignored.
    `trainer.evaluate()` reports the InfoNCE loss of the eval set as `eval_loss`; use [`embed_texts`] and
    [`retrieval_accuracy`] for accuracy.

    ```python
    trainer = InfoNCETrainer(model=mixer, args=TrainingArguments("out", learning_rate=1e-4), train_dataset=pairs,
                             processing_class=tokenizer)          # collator built with the mixer's context
    trainer.train()
    trainer.save_model()                                        # a normal Masked Mixer folder

    # A transformer baseline, pooled the same way:
    InfoNCETrainer(model=llama, args=..., train_dataset=pairs, processing_class=tokenizer,
                   embed_fn=hidden_state_embeddings)
    ```

    Args:
        temperature: InfoNCE temperature (research: 0.02).
        in_batch_negatives: use the documents of the other items of a batch as negatives, besides each item's own
            `negatives`; with False only the latter (the research form).
        embed_fn: `(model, input_ids, attention_mask) -> [batch, dim]`; default [`model_embeddings`] (the model's
            `embed` method). [`hidden_state_embeddings`] fits any transformers model.
        data_collator: default `InfoNCECollator(processing_class, max_length=<the model's context>)`.
        The other arguments are the `Trainer`'s.

    Embeddings are computed by calling `embed_fn` on the unwrapped model, outside its `forward`: this runs in one
    process (CPU or one GPU); DistributedDataParallel's gradient synchronisation, which hooks `forward`, is not used.
    """

    # Our loss is a mean over the queries of one batch: the Trainer divides it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        *,
        temperature: float = RESEARCH_TEMPERATURE,
        in_batch_negatives: bool = True,
        embed_fn: EmbedFn | None = None,
        **kwargs: Any,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r} (research: 0.02).")
        if data_collator is None:
            if processing_class is None:
                raise ValueError("InfoNCETrainer needs a tokenizer to turn texts into batches: pass "
                                 "processing_class=tokenizer, or data_collator=InfoNCECollator(tokenizer, max_length).")
            data_collator = InfoNCECollator(processing_class, _resolve_max_length(model, None))
        if embed_fn is None and model is not None:
            _embed_method(model)  # fail now, not at the first training step
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        if self.args.world_size > 1:
            raise ValueError(
                f"InfoNCETrainer runs in one process, but this run has {self.args.world_size} (torchrun / accelerate "
                "launch): its embeddings are computed outside the wrapped model's forward, so gradients would not be "
                "synchronised, and in-batch negatives would stay within each process. Launch it as a single process."
            )
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self.embed_fn = embed_fn or model_embeddings

    # The collator consumes text columns that model.forward knows nothing of: keep them all.
    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        return dataset

    def _get_collator_with_removed_columns(self, data_collator: Callable, description: str | None = None) -> Callable:
        return data_collator

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """InfoNCE of the batch; with `return_outputs`, also the query and document embeddings."""
        module = self.accelerator.unwrap_model(model)
        queries = self.embed_fn(module, inputs["query_input_ids"], inputs["query_attention_mask"])
        documents = self.embed_fn(module, inputs["document_input_ids"], inputs["document_attention_mask"])
        negatives = None
        if "negative_input_ids" in inputs:
            batch, k, length = inputs["negative_input_ids"].shape
            flat = self.embed_fn(module, inputs["negative_input_ids"].reshape(batch * k, length),
                                 inputs["negative_attention_mask"].reshape(batch * k, length))
            negatives = flat.view(batch, k, -1)
        loss = info_nce_loss(queries, documents, negatives, temperature=self.temperature,
                             in_batch_negatives=self.in_batch_negatives)
        if return_outputs:
            return loss, {"query_embeddings": queries, "document_embeddings": documents}
        return loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The eval batch's InfoNCE loss (the base class would call `model(**inputs)`, which takes no texts)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
