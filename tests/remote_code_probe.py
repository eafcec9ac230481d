"""Run in a fresh process where memory_zoo cannot be imported: load a saved model folder as remote code.

Usage: python remote_code_probe.py MODEL_DIR RESAVE_DIR. Prints one JSON line with what it observed.
"""

import json
import sys

import block_memory_zoo  # noqa: F401  (blocks memory_zoo before anything imports it)
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline

model_dir, resave_dir = sys.argv[1], sys.argv[2]
try:
    import memory_zoo  # noqa: F401

    blocked = False
except ImportError:
    blocked = True

config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
probe = load_file(f"{model_dir}/probe.safetensors")
with torch.no_grad():
    logits = model(probe["input_ids"]).logits
    hidden = base(probe["input_ids"]).last_hidden_state
    cached = model.generate(probe["input_ids"][:, :4], max_new_tokens=6, min_new_tokens=6, do_sample=False)
    uncached = model.generate(probe["input_ids"][:, :4], max_new_tokens=6, min_new_tokens=6, do_sample=False,
                              use_cache=False)
generator = pipeline("text-generation", model=model_dir, trust_remote_code=True)
text = generator("The quick", max_new_tokens=4, do_sample=False)[0]["generated_text"]

model.save_pretrained(resave_dir)
tokenizer.save_pretrained(resave_dir)
again = AutoModelForCausalLM.from_pretrained(resave_dir, trust_remote_code=True).eval()
with torch.no_grad():
    again_logits = again(probe["input_ids"]).logits

print(json.dumps({
    "blocked": blocked,
    "config_class": type(config).__name__,
    "model_module": type(model).__module__,
    "base_class": type(base).__name__,
    "logits_max_diff": (logits - probe["logits"]).abs().max().item(),
    "hidden_max_diff": (hidden - probe["hidden"]).abs().max().item(),
    "cached_equals_uncached": bool(torch.equal(cached, uncached)),
    "pipeline_text": text,
    "resaved_max_diff": (again_logits - probe["logits"]).abs().max().item(),
}))
