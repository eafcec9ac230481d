"""memory_zoo.retrieval: pairs from text, the InfoNCE loss, top-1 accuracy, the collator and the InfoNCE Trainer."""

from __future__ import annotations

import ast
import copy
import math
import re
from pathlib import Path

import pytest
import torch

from memory_zoo.modeling.zoo_embedding import pool_hidden_states
from memory_zoo.retrieval import (
    InfoNCECollator,
    InfoNCETrainer,
    RetrievalPairsDataset,
    embed_texts,
    hidden_state_embeddings,
    info_nce_loss,
    make_retrieval_pairs,
    retrieval_accuracy,
)

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread, and far slower on two when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sonnets() -> str:
    """The quickstart's embedded sonnets: ~1300 words of text that does not repeat itself."""
    tree = ast.parse((ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8"))
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "SONNETS")


@pytest.fixture(scope="module")
def sonnet_tokenizer(sonnets):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator([sonnets], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_mixer(tokenizer, seed: int = 0, context: int = 32):
    from memory_zoo import MaskedMixerConfig, MaskedMixerForCausalLM

    torch.manual_seed(seed)
    config = MaskedMixerConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                               max_position_embeddings=context, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return MaskedMixerForCausalLM(config)


# ----------------------------------------------------------------------------------------------------- InfoNCE loss


def formula_loss(query, positive, negatives, temperature):
    """-log(e^{cos(q,d+)/t} / (e^{cos(q,d+)/t} + sum_neg e^{cos(q,d-)/t})), written out in float64."""
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm()))  # noqa: E731
    numerator = math.exp(cos(query, positive) / temperature)
    return -math.log(numerator / (numerator + sum(math.exp(cos(query, n) / temperature) for n in negatives)))


def research_info_nce(output: torch.Tensor, matching_index: int) -> torch.Tensor:
    """The research `infoNCEloss` (mixer_lm/infonce_retrieval.py) on pooled embeddings `[n, dim]`: row 0 is the
    query, row `matching_index` its document, every other row a negative."""
    summary_embedding = output[0].unsqueeze(0)
    match_embedding = output[matching_index]
    nonmatch_embeddings = torch.cat((output[1:matching_index], output[matching_index + 1:]), dim=0)
    cosine_sim = torch.nn.CosineSimilarity(dim=1)
    temp = 0.02
    codists = torch.exp((1 / temp) * cosine_sim(summary_embedding, match_embedding))
    nondists = torch.sum(torch.exp((1 / temp) * cosine_sim(summary_embedding, nonmatch_embeddings)))
    return -torch.sum(torch.log(codists / (codists + nondists)))


def test_info_nce_loss_matches_the_formula_with_in_batch_and_given_negatives():
    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    negatives = torch.randn(5, 3, 8, generator=generator)
    for temperature in (0.02, 0.5):
        # in-batch: the other rows' documents plus the row's own given negatives
        expected = [formula_loss(queries[i], documents[i], [*documents[torch.arange(5) != i], *negatives[i]],
                                 temperature) for i in range(5)]
        loss = info_nce_loss(queries, documents, negatives, temperature=temperature, reduction="none")
        torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-4)
        mean = info_nce_loss(queries, documents, negatives, temperature=temperature)
        assert mean.item() == pytest.approx(sum(expected) / 5, rel=1e-4, abs=1e-4)
        # in-batch only
        expected = [formula_loss(queries[i], documents[i], documents[torch.arange(5) != i], temperature)
                    for i in range(5)]
        loss = info_nce_loss(queries, documents, temperature=temperature, reduction="sum")
        assert loss.item() == pytest.approx(sum(expected), rel=1e-4, abs=1e-4)
        # given negatives only
        expected = [formula_loss(queries[i], documents[i], negatives[i], temperature) for i in range(5)]
        loss = info_nce_loss(queries, documents, negatives, temperature=temperature, in_batch_negatives=False,
                             reduction="none")
        torch.testing.assert_close(loss.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_info_nce_loss_single_item_is_the_research_loss():
    """One query, its document and 6 random texts, no in-batch negatives: the research loss at any match row."""
    generator = torch.Generator().manual_seed(1)
    # near-parallel vectors keep the research exp() finite and the comparison meaningful
    output = torch.randn(1, 16, generator=generator) + 0.3 * torch.randn(8, 16, generator=generator)
    for matching_index in (1, 4, 7):
        others = [i for i in range(1, 8) if i != matching_index]
        ours = info_nce_loss(output[:1], output[matching_index][None], output[others][None], in_batch_negatives=False)
        torch.testing.assert_close(ours, research_info_nce(output, matching_index), rtol=1e-5, atol=1e-5)


def test_info_nce_loss_is_stable_and_trains():
    queries = torch.randn(4, 8, requires_grad=True)
    documents = queries.detach() * 3.0  # same directions: every positive is a perfect match
    loss = info_nce_loss(queries, documents, temperature=1e-4)  # e^{1/t} would overflow: log-sum-exp does not
    assert torch.isfinite(loss) and loss.item() < 1e-6
    loss = info_nce_loss(queries, torch.randn(4, 8))
    loss.backward()
    assert torch.isfinite(queries.grad).all() and queries.grad.abs().sum() > 0
    # a batch of one without given negatives has no negative: -log 1
    assert info_nce_loss(torch.randn(1, 8), torch.randn(1, 8)).item() == 0.0


def test_info_nce_loss_errors_name_the_problem():
    q, d = torch.randn(3, 8), torch.randn(3, 8)
    with pytest.raises(ValueError, match="in_batch_negatives=False and no negative_embeddings"):
        info_nce_loss(q, d, in_batch_negatives=False)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 8\) and \(2, 8\)"):
        info_nce_loss(q, d[:2])
    with pytest.raises(ValueError, match=r"negative_embeddings must be \[batch, k, dim\] = \[3, k, 8\]"):
        info_nce_loss(q, d, torch.randn(3, 8))
    with pytest.raises(ValueError, match="temperature must be positive"):
        info_nce_loss(q, d, temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        info_nce_loss(q, d, reduction="max")


# ------------------------------------------------------------------------------------------------ top-1 accuracy


def test_retrieval_accuracy_on_embeddings_with_known_answers():
    documents = torch.eye(64)  # orthonormal: a query equal to its document scores 1, every other document 0
    candidates = (2, 8, 32, 64)
    assert retrieval_accuracy(documents * 5, documents, candidates) == dict.fromkeys(candidates, 1.0)
    # Half the queries point away from their document (-1 < 0): they are missed at every n >= 2.
    queries = documents.clone()
    queries[::2] *= -1
    assert retrieval_accuracy(queries, documents, candidates) == dict.fromkeys(candidates, 0.5)
    # Query i closer to document i + 1 than to its own (which still beats the rest): a miss exactly when document
    # i + 1 is drawn, with probability (n - 1) / 63; always when every document is a candidate, never for n = 1.
    leaning = 0.5 * documents + documents.roll(-1, dims=0)
    accuracy = retrieval_accuracy(leaning, documents, (1, 2, 32, 64))
    assert accuracy[1] == 1.0 and accuracy[64] == 0.0
    assert accuracy[2] > 0.9 and 0.25 < accuracy[32] < 0.75  # expected 62/63 and 32/63
    # A collapsed embedding (every vector equal) is a tie everywhere, and ties are misses.
    ones = torch.ones(64, 4)
    assert retrieval_accuracy(ones, ones, (2, 64)) == {2: 0.0, 64: 0.0}


def test_retrieval_accuracy_is_chance_for_random_embeddings_and_never_rises_with_n():
    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(3000, 32, generator=generator), torch.randn(3000, 32, generator=generator)
    accuracy = retrieval_accuracy(queries, documents, (4, 32), chunk_size=700)
    assert accuracy[4] == pytest.approx(1 / 4, abs=0.03) and accuracy[32] == pytest.approx(1 / 32, abs=0.012)
    noisy = documents + 1.5 * torch.randn(3000, 32, generator=generator)
    curve = retrieval_accuracy(noisy, documents, (2, 8, 32, 128, 512, 3000), chunk_size=1000)
    values = list(curve.values())
    assert values == sorted(values, reverse=True) and values[0] > values[-1]
    assert retrieval_accuracy(noisy, documents, (8, 32), seed=3) == retrieval_accuracy(noisy, documents, (8, 32),
                                                                                        seed=3)


def test_retrieval_accuracy_errors_name_the_problem():
    q = torch.randn(10, 4)
    with pytest.raises(ValueError, match="32 candidates per query were asked for but there are only 10 documents"):
        retrieval_accuracy(q, q, (8, 32))
    with pytest.raises(ValueError, match="row i of each is pair i"):
        retrieval_accuracy(q, q[:9], 4)
    with pytest.raises(ValueError, match="positive integers"):
        retrieval_accuracy(q, q, (0, 4))


# ---------------------------------------------------------------------------------------------------------- pairs


def test_pairs_are_deterministic_and_well_formed(sonnets):
    options = dict(passage_words=20, query_words=5, remove_query=True)
    pairs = make_retrieval_pairs(sonnets, **options, seed=0)
    words = sonnets.split()
    assert len(pairs) == len(words) // 20
    assert pairs == make_retrieval_pairs(sonnets, **options, seed=0)
    assert pairs != make_retrieval_pairs(sonnets, **options, seed=1)
    for index, pair in enumerate(pairs):
        passage = words[index * 20 : (index + 1) * 20]
        query, document = pair["query"].split(), pair["document"].split()
        assert len(query) == 5 and len(document) == 15
        # the query is a span of the passage, and the document is the passage with that span cut out
        starts = [s for s in range(16) if passage[s : s + 5] == query]
        assert any(passage[:s] + passage[s + 5:] == document for s in starts)
    assert any("\n" in pair["document"] for pair in pairs)  # the text's own line breaks are kept

    whole = make_retrieval_pairs(sonnets, passage_words=20, query_words=5, seed=0)  # default: the span is kept
    for index, (pair, cut) in enumerate(zip(whole, pairs, strict=True)):
        assert pair["document"].split() == words[index * 20 : (index + 1) * 20] and pair["query"] in pair["document"]
        assert pair["query"] == cut["query"]  # the same spans either way

    subset = make_retrieval_pairs(sonnets, passage_words=20, query_words=5, max_pairs=10, seed=0)
    documents = [pair["document"].split() for pair in whole]
    positions = [next(i for i, d in enumerate(documents) if set(p["query"].split()) <= set(d)) for p in subset]
    assert len(subset) == 10 and positions == sorted(positions)  # a random choice of passages, kept in text order


def test_pairs_errors_name_the_problem(sonnets):
    with pytest.raises(ValueError, match="make 0 passages of 50 words.*longer text"):
        make_retrieval_pairs("only a few words here", passage_words=50)
    available = len(sonnets.split()) // 20
    with pytest.raises(ValueError, match=f"make {available} passages of 20 words, but 5000 pair"):
        make_retrieval_pairs(sonnets, passage_words=20, query_words=5, max_pairs=5000)
    with pytest.raises(ValueError, match=r"query_words \(8\) must be smaller than passage_words \(8\)"):
        make_retrieval_pairs(sonnets, passage_words=8, query_words=8)
    with pytest.raises(ValueError, match="passage_words must be a positive integer"):
        make_retrieval_pairs(sonnets, passage_words=0)


def test_pairs_dataset_draws_distinct_other_documents(sonnets):
    pairs = make_retrieval_pairs(sonnets, passage_words=20, query_words=5, max_pairs=12)
    dataset = RetrievalPairsDataset(pairs, num_negatives=4, seed=0)
    draws = [dataset[i]["negatives"] for i in range(len(pairs)) for _ in range(5)]
    for i in range(len(pairs)):
        item = dataset[i]
        assert item["query"] == pairs[i]["query"] and item["document"] == pairs[i]["document"]
        assert len(set(item["negatives"])) == 4 and pairs[i]["document"] not in item["negatives"]
        assert set(item["negatives"]) <= {p["document"] for p in pairs}
    again = RetrievalPairsDataset(pairs, 4, seed=0)  # same seed, same accesses: same draws
    assert draws == [again[i]["negatives"] for i in range(len(pairs)) for _ in range(5)]
    assert draws[0] != draws[1]  # drawn afresh at every access
    assert "negatives" not in RetrievalPairsDataset(pairs)[0]
    assert len(RetrievalPairsDataset(pairs[:2], num_negatives=1)[0]["negatives"]) == 1
    with pytest.raises(ValueError, match="only 12 pairs, so at most 11 other documents"):
        RetrievalPairsDataset(pairs, num_negatives=12)


# ------------------------------------------------------------------------------------- collator and embeddings


def test_collator_right_pads_truncates_and_stacks_negatives(sonnet_tokenizer, sonnets):
    pairs = make_retrieval_pairs(sonnets, passage_words=60, query_words=3, max_pairs=4)
    items = [dict(pair, negatives=[pairs[(i + 1) % 4]["document"], "Shall I compare thee"])
             for i, pair in enumerate(pairs)]
    batch = InfoNCECollator(sonnet_tokenizer, max_length=16)(items)
    assert batch["query_input_ids"].shape[0] == 4 and batch["document_input_ids"].shape == (4, 16)  # truncated
    assert batch["negative_input_ids"].shape == (4, 2, 16) and batch["negative_attention_mask"].shape == (4, 2, 16)
    short = batch["negative_attention_mask"][:, 1]
    assert short[:, 0].all() and not short[:, -1].any()  # right padding
    expected = sonnet_tokenizer("Shall I compare thee")["input_ids"]
    assert batch["negative_input_ids"][0, 1, : len(expected)].tolist() == expected
    assert "negative_input_ids" not in InfoNCECollator(sonnet_tokenizer, 16)(pairs)

    with pytest.raises(ValueError, match="different numbers of negatives"):
        InfoNCECollator(sonnet_tokenizer, 16)([items[0], dict(items[1], negatives=["x y"])])
    with pytest.raises(ValueError, match="no 'document' text"):
        InfoNCECollator(sonnet_tokenizer, 16)([{"query": "a b"}])
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        InfoNCECollator(sonnet_tokenizer, None)
    no_pad = copy.deepcopy(sonnet_tokenizer)
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="no pad token.*tokenizer.pad_token = tokenizer.eos_token"):
        InfoNCECollator(no_pad, 16)


def test_embed_texts_is_embed_and_does_not_depend_on_batching(sonnet_tokenizer):
    model = tiny_mixer(sonnet_tokenizer).eval()
    texts = ["Shall I compare thee to a summer's day?", "Thou art more lovely", "and more temperate: rough winds",
             "do shake the darling buds of May, and summer's lease hath all too short a date"]
    vectors = embed_texts(model, sonnet_tokenizer, texts, batch_size=3)
    alone = torch.cat([embed_texts(model, sonnet_tokenizer, [text]) for text in texts])
    torch.testing.assert_close(vectors, alone, rtol=1e-5, atol=1e-5)
    batch = sonnet_tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(vectors, model.embed(batch["input_ids"], batch["attention_mask"]))
    assert model.training is False and vectors.shape == (4, 32)


def test_hidden_state_embeddings_is_the_llama_research_convention(sonnet_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(sonnet_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                                         pad_token_id=sonnet_tokenizer.pad_token_id)).eval()
    batch = sonnet_tokenizer(["Shall I compare thee to a summer's day?", "Thou art"], padding=True,
                             return_tensors="pt")
    with torch.no_grad():
        ours = hidden_state_embeddings(llama, batch["input_ids"], batch["attention_mask"])
        hidden = llama.model(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(ours, pool_hidden_states(hidden, batch["attention_mask"]))
    last_real = batch["attention_mask"].sum(-1) - 2
    torch.testing.assert_close(ours, hidden[torch.arange(2), last_real])

    with pytest.raises(TypeError, match="has no embed.*embed_fn=memory_zoo.retrieval.hidden_state_embeddings"):
        InfoNCETrainer(model=llama, processing_class=sonnet_tokenizer)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        InfoNCETrainer(model=llama, embed_fn=hidden_state_embeddings)


# ---------------------------------------------------------------------------------------------------- the Trainer


def trainer_args(output_dir, steps: int, **overrides):
    from transformers import TrainingArguments

    settings = dict(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=16,
                    per_device_eval_batch_size=16, learning_rate=3e-3, lr_scheduler_type="constant",
                    logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


def test_infonce_trainer_fine_tunes_a_masked_mixer_and_saves_a_normal_folder(sonnet_tokenizer, sonnets, tmp_path):
    from transformers import AutoModel

    pairs = make_retrieval_pairs(sonnets, passage_words=20, query_words=5, max_pairs=48, seed=0)
    queries, documents = [p["query"] for p in pairs], [p["document"] for p in pairs]
    model = tiny_mixer(sonnet_tokenizer)
    # the default remove_unused_columns=True must not strip the text columns the collator reads
    trainer = InfoNCETrainer(model=model, args=trainer_args(tmp_path / "run", 40), processing_class=sonnet_tokenizer,
                             train_dataset=RetrievalPairsDataset(pairs, num_negatives=2), eval_dataset=pairs)
    assert trainer.data_collator.max_length == 32  # the mixer's fixed context

    def accuracy():
        return retrieval_accuracy(embed_texts(model, sonnet_tokenizer, queries),
                                  embed_texts(model, sonnet_tokenizer, documents), (8, 48))

    before, eval_before = accuracy(), trainer.evaluate()["eval_loss"]
    trainer.train()
    after, eval_after = accuracy(), trainer.evaluate()["eval_loss"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5
    assert eval_after < 0.2 * eval_before
    assert before[48] < 0.2 and after[48] > before[48] + 0.5 and after[8] >= after[48]

    trainer.save_model(tmp_path / "saved")
    sonnet_tokenizer.save_pretrained(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"config.json", "model.safetensors", "modeling_masked_mixer.py", "modules.json"} <= files
    reloaded = AutoModel.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert type(reloaded).__name__ == "MaskedMixerModel"
    torch.testing.assert_close(embed_texts(reloaded, sonnet_tokenizer, documents),
                               embed_texts(model, sonnet_tokenizer, documents))


def test_infonce_trainer_runs_a_llama_baseline_with_embed_fn(sonnet_tokenizer, sonnets, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(sonnet_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=32,
                                         pad_token_id=sonnet_tokenizer.pad_token_id))
    pairs = make_retrieval_pairs(sonnets, passage_words=20, query_words=5, max_pairs=16)
    trainer = InfoNCETrainer(model=llama, args=trainer_args(tmp_path, 3), train_dataset=pairs,
                             processing_class=sonnet_tokenizer, embed_fn=hidden_state_embeddings,
                             in_batch_negatives=True, temperature=0.05)
    before = [p.detach().clone() for p in llama.parameters()]
    trainer.train()
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)
    assert any(not torch.equal(a, b) for a, b in zip(before, llama.parameters(), strict=True))


def test_infonce_trainer_gradient_accumulation_matches_one_big_step(sonnet_tokenizer, sonnets, tmp_path):
    """The loss is a per-batch mean, scaled by the accumulation steps like the Trainer's own losses: two half
    batches of given-negative-only InfoNCE (no in-batch coupling) give the gradient of the whole batch."""
    pairs = make_retrieval_pairs(sonnets, passage_words=20, query_words=5, max_pairs=8)
    pairs = [dict(pair, negatives=[pairs[(i + 1) % 8]["document"], pairs[(i + 3) % 8]["document"]])
             for i, pair in enumerate(pairs)]
    results = []
    for batch, accumulation in ((8, 1), (4, 2)):
        model = tiny_mixer(sonnet_tokenizer)
        trainer = InfoNCETrainer(model=model, args=trainer_args(tmp_path, 1, per_device_train_batch_size=batch,
                                                                gradient_accumulation_steps=accumulation,
                                                                learning_rate=1e-3, optim="sgd"),
                                 train_dataset=pairs, processing_class=sonnet_tokenizer, in_batch_negatives=False)
        trainer.train()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_pairs_keep_words_intact():
    text = "alpha beta\ngamma  delta epsilon\n\nzeta eta theta iota kappa"
    pairs = make_retrieval_pairs(text, passage_words=5, query_words=2, remove_query=True, seed=4)
    assert len(pairs) == 2
    for pair in pairs:
        assert all(re.fullmatch(r"[a-z]+", word) for word in (pair["query"] + " " + pair["document"]).split())


def test_infonce_trainer_refuses_multi_process_runs(sonnet_tokenizer, sonnets, tmp_path, monkeypatch):
    """Its embeddings bypass the DDP-wrapped forward: a torchrun launch must fail up front, not train unsynchronised."""
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    pairs = make_retrieval_pairs(sonnets, passage_words=20, query_words=5, max_pairs=8, seed=0)
    with pytest.raises(ValueError, match="runs in one process, but this run has 2"):
        InfoNCETrainer(model=tiny_mixer(sonnet_tokenizer), args=trainer_args(tmp_path / "run", 1),
                       processing_class=sonnet_tokenizer, train_dataset=pairs)
