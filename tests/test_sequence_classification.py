"""`...ForSequenceClassification` of every causal LM, checked as a transformers user relies on it.

The architectures come from the records (every record with role "causal_lm"), so a new one is covered by
construction, and its tiny model from `tests/test_contract.py` (`build`). The checks: each row is classified at its last
non-pad token (the batch against each row run alone, right and left padding; the same logits and loss as transformers'
own `GenericForSequenceClassification` code on the installed release), the three problem types, save and reload
through `AutoModelForSequenceClassification`, a causal-LM folder fine-tuned into a classifier, remote code where
memory-zoo cannot be imported, a short `Trainer` run on a `datasets` dataset, and LoRA with `task_type="SEQ_CLS"`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TEXT, train_tokenizer
from safetensors.torch import save_file
from test_contract import CASES, VOCAB, build
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.loss.loss_utils import LOSS_MAPPING
from transformers.modeling_layers import GenericForSequenceClassification

import memory_zoo
from memory_zoo.architectures import ARCHITECTURES, BY_MODEL_TYPE
from memory_zoo.modeling.zoo_classification import ZooForSequenceClassification

CAUSAL_LMS = [record.model_type for record in ARCHITECTURES if record.role == "causal_lm"]
PROBE = Path(__file__).parent / "remote_code_probe_classification.py"
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
LENGTHS = (10, 6, 3)  # real tokens per row of the padded batches below


def classifier_from(lm: torch.nn.Module, **config_changes) -> torch.nn.Module:
    """The architecture's classifier made from the causal LM's config and weights (the head starts random)."""
    config = copy.deepcopy(lm.config)
    config.id2label, config.label2id = dict(LABELS), {name: i for i, name in LABELS.items()}
    for key, value in config_changes.items():
        setattr(config, key, value)
    cls = BY_MODEL_TYPE[config.model_type].model_class("AutoModelForSequenceClassification")
    torch.manual_seed(0)
    model = cls(config)
    missing, unexpected = model.load_state_dict(lm.state_dict(), strict=False)
    assert missing == ["score.weight"] and set(unexpected) <= {"lm_head.weight", "head_proj.weight"}, (missing,
                                                                                                        unexpected)
    return model.eval()


def padded(side: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A batch of three rows of `LENGTHS` real tokens padded with id 0 on `side`, its mask, and the rows alone."""
    rows = [torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(n)) for n in LENGTHS]
    width = max(LENGTHS)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        if side == "right":
            input_ids[i, : row.shape[1]] = row[0]
        else:
            input_ids[i, width - row.shape[1]:] = row[0]
    return input_ids, (input_ids != 0).long(), rows


@pytest.fixture(scope="module", params=CAUSAL_LMS)
def pair(request):
    """(architecture, causal LM, classifier made from it)."""
    lm = build(request.param)
    return request.param, lm, classifier_from(lm)


def test_every_causal_lm_has_a_registered_exported_classifier():
    for record in ARCHITECTURES:
        if record.role != "causal_lm":
            assert record.sequence_classification_class_name is None
            continue
        name = record.sequence_classification_class_name
        assert name == record.causal_lm_class_name.replace("ForCausalLM", "ForSequenceClassification"), record
        cls = record.model_class("AutoModelForSequenceClassification")
        assert cls.__module__ == f"memory_zoo.modeling.{record.modeling_module}" and issubclass(
            cls, ZooForSequenceClassification)
        assert getattr(memory_zoo, name) is cls and name in memory_zoo.__all__
        assert AutoModelForSequenceClassification._model_mapping[record.config_class] is cls
        assert not cls.can_generate() and cls.__doc__


def test_pooling_picks_each_rows_last_non_pad_token(pair):
    architecture, _, model = pair
    input_ids, mask, rows = padded("right")
    with torch.no_grad():
        alone = torch.cat([model(row).logits for row in rows])
        batched = model(input_ids, attention_mask=mask)
    assert batched.logits.shape == (3, 3) and batched.loss is None
    torch.testing.assert_close(batched.logits, alone, atol=1e-5, rtol=1e-5)

    left_ids, left_mask, _ = padded("left")
    if CASES[architecture].left_padding == "refused":  # chunks at fixed positions: the model says to pad right
        with pytest.raises(ValueError, match="(?i)left padding(.|\n)*padding_side = 'right'"):
            model(left_ids, attention_mask=left_mask)
    else:  # the last position is each row's last real token, computed as if alone
        with torch.no_grad():
            torch.testing.assert_close(model(left_ids, attention_mask=left_mask).logits, alone, atol=1e-5, rtol=1e-5)


class TransformersReference(torch.nn.Module):
    """transformers' own `GenericForSequenceClassification.forward` (the code of `LlamaForSequenceClassification`) over
    a memory-zoo classifier's final hidden states and `score` head."""

    base_model_prefix = "model"
    forward = GenericForSequenceClassification.forward

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.config, self.score, self.classifier = classifier.config, classifier.score, classifier
        self.loss_function = LOSS_MAPPING["ForSequenceClassification"]

    def model(self, input_ids=None, attention_mask=None, **kwargs):
        states = self.classifier._token_states(input_ids, attention_mask, None, None, False, None)
        return SimpleNamespace(last_hidden_state=states.last_hidden_state, cache=None, past_key_values=None,
                               hidden_states=None, attentions=None)


PROBLEMS = {  # problem type -> (num_labels, labels for the 3 rows)
    "single_label_classification": (3, torch.tensor([2, 0, 1])),
    "regression": (1, torch.tensor([0.5, -1.0, 2.0])),
    "multi_label_classification": (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])),
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_logits_and_loss_are_transformers_own(pair, problem):
    """Pooling and loss equal transformers' implementation on this release, the problem type inferred as it infers."""
    _, lm, _ = pair
    num_labels, labels = PROBLEMS[problem]
    model = classifier_from(lm, num_labels=num_labels, id2label={i: f"L{i}" for i in range(num_labels)})
    input_ids, mask, _ = padded("right")
    outputs = []
    for runner in (model, TransformersReference(model)):
        runner.config.problem_type = None
        with torch.no_grad():
            outputs.append(runner(input_ids, attention_mask=mask, labels=labels))
        assert runner.config.problem_type == problem
    assert torch.equal(outputs[0].logits, outputs[1].logits)
    assert torch.equal(outputs[0].loss, outputs[1].loss)


def test_inputs_embeds_are_classified_at_the_last_position(pair):
    """As transformers: padding cannot be seen in embeddings, so the last position is read (models that embed tokens
    themselves, the memory models, refuse embeddings)."""
    architecture, _, model = pair
    _, _, rows = padded("right")
    try:
        embeds = model.get_input_embeddings()(rows[0])
        with torch.no_grad():
            from_embeds = model(inputs_embeds=embeds).logits
    except ValueError as error:
        assert "input_ids" in str(error) and architecture in {"variable_memory_mixer", "memory_mixer",
                                                             "variable_memory_transformer"}
        return
    with torch.no_grad():
        torch.testing.assert_close(from_embeds, model(rows[0]).logits, atol=1e-6, rtol=0)


def test_without_a_pad_token_only_one_row(pair):
    _, lm, _ = pair
    model = classifier_from(lm, pad_token_id=None)
    input_ids, mask, rows = padded("right")
    with torch.no_grad():
        one = model(rows[0]).logits  # the last position
        with pytest.raises(ValueError, match="batch sizes > 1 if no padding token(.|\n)*config.pad_token_id"):
            model(input_ids, attention_mask=mask)
    assert one.shape == (1, 3)


def test_labels_are_checked(pair):
    _, _, model = pair
    input_ids, mask, _ = padded("right")
    with pytest.raises(ValueError, match="one label per row"):
        model(input_ids, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_labels=3"):
        model(input_ids, labels=torch.tensor([0, 1, 3]))
    assert model(input_ids, labels=torch.tensor([0, -100, 2])).loss.isfinite()


def test_save_reload_and_fine_tune_from_the_causal_lm(pair, tmp_path):
    architecture, lm, model = pair
    input_ids, mask, _ = padded("right")
    model.save_pretrained(tmp_path / "classifier")
    saved = json.loads((tmp_path / "classifier" / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForSequenceClassification"].endswith("." + type(model).__name__)
    assert saved["architectures"] == [type(model).__name__]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier").eval()
    assert type(reloaded) is type(model) and reloaded.config.id2label == LABELS
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids, attention_mask=mask).logits, model(input_ids, attention_mask=mask).logits)

    # A causal-LM folder (which names the classifier in its auto_map too) loads into a classifier: the language model
    # is kept, the head is new, and nothing else is reported missing or unexpected.
    lm.save_pretrained(tmp_path / "causal_lm")
    assert json.loads((tmp_path / "causal_lm" / "config.json").read_text())["auto_map"][
        "AutoModelForSequenceClassification"].endswith("." + type(model).__name__)
    fresh, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "causal_lm", num_labels=5, output_loading_info=True)
    assert type(fresh) is type(model) and fresh.score.out_features == 5
    assert sorted(info["missing_keys"]) == ["score.weight"] and not info["mismatched_keys"]
    shared = {k: v for k, v in fresh.state_dict().items() if not k.startswith("score.")}
    assert shared.keys() == {k for k in model.state_dict() if not k.startswith("score.")}
    for key, value in shared.items():
        assert torch.equal(value, lm.state_dict()[key]), key


def test_model_card_says_text_classification(pair):
    from memory_zoo.model_card import model_card

    _, _, model = pair
    card = model_card(model, "org/classifier")
    assert "pipeline_tag: text-classification" in card
    assert 'AutoModelForSequenceClassification.from_pretrained("org/classifier", trust_remote_code=True)' in card


@pytest.fixture(scope="module")
def remote_reports(tmp_path_factory):
    """Every architecture's classifier (and its causal LM) saved, then loaded in one process without memory-zoo."""
    root = tmp_path_factory.mktemp("remote")
    tokenizer = train_tokenizer(vocab_size=90)
    folders, expected = [], {}
    for architecture in CAUSAL_LMS:
        lm = build(architecture)
        model = classifier_from(lm)
        folder = root / architecture
        model.save_pretrained(folder / "classifier")
        tokenizer.save_pretrained(folder / "classifier")
        lm.save_pretrained(folder / "causal_lm")
        input_ids, mask, _ = padded("right")
        with torch.no_grad():
            logits = model(input_ids, attention_mask=mask).logits
        save_file({"input_ids": input_ids, "attention_mask": mask, "logits": logits},
                  str(folder / "classifier" / "probe.safetensors"))
        folders.append(str(folder))
        expected[architecture] = type(model).__name__
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, str(PROBE), *folders], capture_output=True, text=True,
                            cwd=Path(__file__).parent, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocked"]
    return {Path(folder).name: entry for folder, entry in report["folders"].items()}, expected


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_remote_code_without_memory_zoo(remote_reports, architecture):
    reports, expected = remote_reports
    report = reports[architecture]
    assert report["model_class"] == expected[architecture]
    assert report["model_module"].startswith("transformers_modules.")
    assert report["model_module"].endswith("." + BY_MODEL_TYPE[architecture].modeling_module)
    assert report["config_class"] == BY_MODEL_TYPE[architecture].config_class.__name__
    assert report["labels"] == list(LABELS.values()) and report["pipeline_label"] in LABELS.values()
    assert report["logits_max_diff"] <= 1e-5
    assert report["warnings"] == []
    assert report["from_causal_lm_class"] == expected[architecture] and report["from_causal_lm_shape"] == [3, 5]


SENTENCES = [line.strip() + "." for line in TEXT.split(".")[:4]]  # four proverbs; the label: which half


@pytest.fixture(scope="module")
def dataset():
    """A tiny local `datasets` dataset: prefixes of four proverbs (so rows have different lengths), labelled 0 for the
    first two proverbs and 1 for the others, tokenized to at most 16 tokens (within every tiny model's context)."""
    from datasets import Dataset

    tokenizer = train_tokenizer()  # 120 tokens, <pad> = 0 as the tiny models' pad_token_id
    texts, labels = [], []
    for index, sentence in enumerate(SENTENCES):
        words = sentence.split()
        for length in range(3, len(words) + 1):
            texts.append(" ".join(words[:length]))
            labels.append(index // 2)
    data = Dataset.from_dict({"text": texts, "label": labels})
    data = data.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=16), batched=True)
    return tokenizer, data


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_trainer_trains_saves_and_reloads(architecture, dataset, tmp_path):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tokenizer, data = dataset
    model = classifier_from(build(architecture), num_labels=2, id2label={0: "first", 1: "second"}).train()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, per_device_eval_batch_size=32, max_steps=8,
        learning_rate=5e-3, warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before, (before, after)

    trainer.save_model(str(tmp_path / "trained"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "trained").eval()
    assert AutoConfig.from_pretrained(tmp_path / "trained").problem_type == "single_label_classification"
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**batch).logits
        assert torch.equal(reloaded(**batch).logits, expected)


@pytest.mark.parametrize("architecture", ["masked_mixer", "variable_memory_transformer"])
def test_lora_seq_cls_trains_the_head_in_full(architecture, tmp_path):
    """PEFT's SEQ_CLS: LoRA on the documented targets, `score` trained in full (modules_to_save), saved with the
    adapter and restored onto a classifier freshly made from the causal-LM folder, then merged."""
    peft = pytest.importorskip("peft")
    from memory_zoo.lora import LORA_TARGET_MODULES, lora_config

    lm = build(architecture)
    lm.save_pretrained(tmp_path / "causal_lm")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "causal_lm", num_labels=2)
    config = lora_config(base, r=4, alpha=8)
    assert config.task_type == "SEQ_CLS" and config.target_modules == set(LORA_TARGET_MODULES[architecture])
    model = peft.get_peft_model(base, config)
    assert type(model).__name__ == "PeftModelForSequenceClassification"
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("score.modules_to_save" in name for name in trainable)
    assert all(".lora_" in name or "score.modules_to_save" in name for name in trainable), trainable

    input_ids, mask, _ = padded("right")
    labels = torch.tensor([0, 1, 1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=input_ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = peft.utils.load_peft_weights(str(tmp_path / "adapter"))
    assert any("score" in key for key in saved) and all("lora_" in key or "score" in key for key in saved)

    fresh = AutoModelForSequenceClassification.from_pretrained(tmp_path / "causal_lm", num_labels=2)
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids, attention_mask=mask).logits, adapted,
                                   atol=1e-6, rtol=0)
        merged = reloaded.merge_and_unload()
        assert type(merged) is type(base)
        torch.testing.assert_close(merged(input_ids=input_ids, attention_mask=mask).logits, adapted,
                                   atol=1e-5, rtol=1e-5)
