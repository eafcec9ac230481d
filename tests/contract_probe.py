"""Run in a fresh process where memory_zoo cannot be imported: load a saved causal LM as remote code, as a user would.

Usage: python contract_probe.py MODEL_DIR RESAVE_DIR. Prints one JSON line: what loaded, the logits and generations it produced
(compared by the caller with the saving process), and every warning or log record of level WARNING and above that
transformers or the model code emitted along the way.
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


warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    for name in ("transformers", "transformers_modules"):
        logger = logging.getLogger(name)
        logger.addHandler(Collect(level=logging.WARNING))
    hf_logging.set_verbosity_warning()

    model_dir, resave_dir = sys.argv[1], sys.argv[2]
    try:
        import memory_zoo  # noqa: F401

        blocked = False
    except ImportError:
        blocked = True

    probe = load_file(f"{model_dir}/probe.safetensors")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    base = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    prompt, settings = probe["prompt"], {"max_new_tokens": int(probe["max_new_tokens"]), "do_sample": False}
    settings["min_new_tokens"] = settings["max_new_tokens"]
    with torch.no_grad():
        logits = model(probe["input_ids"]).logits
        cached = model.generate(prompt, **settings)
        uncached = model.generate(prompt, use_cache=False, **settings)
    generator = pipeline("text-generation", model=model_dir, trust_remote_code=True)
    text = generator("The quick", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    model.save_pretrained(resave_dir)  # the remote-code model saves itself again, code included
    with torch.no_grad():
        again = AutoModelForCausalLM.from_pretrained(resave_dir, trust_remote_code=True).eval()(probe["input_ids"])

print(json.dumps({
    "blocked": blocked,
    "config_class": type(config).__name__,
    "base_class": type(base).__name__,
    "model_module": type(model).__module__,
    "logits_max_diff": (logits - probe["logits"]).abs().max().item(),
    "cached_equals_saved": bool(torch.equal(cached, probe["generated"])),
    "cached_equals_uncached": bool(torch.equal(cached, uncached)),
    "pipeline_text": text,
    "resaved_max_diff": (again.logits - probe["logits"]).abs().max().item(),
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught] + records,
}))
