"""Run in a fresh process where memory_zoo cannot be imported: load saved sequence classifiers as remote code.

Usage: python remote_code_probe_classification.py FOLDER... Each FOLDER holds `classifier/` (a saved classifier with
its tokenizer and `probe.safetensors`: input_ids, attention_mask, logits) and `causal_lm/` (the causal LM it was made
from). Prints one JSON line: per folder, what loaded and how its outputs compare with the saving process's, and every
warning or log record of level WARNING and above emitted while loading the classifier.
"""

import json
import logging
import sys
import warnings

import block_memory_zoo  # noqa: F401  (blocks memory_zoo before anything imports it)

records: list[str] = []


class Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        records.append(f"{record.name}: {record.getMessage()}")


import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoConfig, AutoModelForSequenceClassification, pipeline  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

try:
    import memory_zoo  # noqa: F401

    blocked = False
except ImportError:
    blocked = True

hf_logging.set_verbosity_warning()
handler = Collect(level=logging.WARNING)
report = {"blocked": blocked, "folders": {}}
for folder in sys.argv[1:]:
    classifier_dir, causal_dir = f"{folder}/classifier", f"{folder}/causal_lm"
    records.clear()
    for name in ("transformers", "transformers_modules"):
        logging.getLogger(name).addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = AutoConfig.from_pretrained(classifier_dir, trust_remote_code=True)
        model = AutoModelForSequenceClassification.from_pretrained(classifier_dir, trust_remote_code=True).eval()
    for name in ("transformers", "transformers_modules"):
        logging.getLogger(name).removeHandler(handler)
    quiet = [f"{w.category.__name__}: {w.message}" for w in caught] + list(records)
    probe = load_file(f"{classifier_dir}/probe.safetensors")
    with torch.no_grad():
        logits = model(probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    classify = pipeline("text-classification", model=classifier_dir, trust_remote_code=True)
    predicted = classify("The quick brown fox")[0]["label"]
    # a causal LM folder fine-tunes into a classifier through its own auto_map (the head starts random)
    fresh = AutoModelForSequenceClassification.from_pretrained(causal_dir, trust_remote_code=True, num_labels=5).eval()
    with torch.no_grad():
        fresh_logits = fresh(probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    report["folders"][folder] = {
        "config_class": type(config).__name__,
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "labels": [config.id2label[i] for i in range(config.num_labels)],
        "logits_max_diff": (logits - probe["logits"]).abs().max().item(),
        "pipeline_label": predicted,
        "from_causal_lm_class": type(fresh).__name__,
        "from_causal_lm_shape": list(fresh_logits.shape),
        "warnings": quiet,
    }
print(json.dumps(report))
