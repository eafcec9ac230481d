"""Like remote_code_probe.py, for the compression models: load a saved folder as remote code with memory_zoo blocked.

Usage: python remote_code_probe_compression.py MODEL_DIR. Autoencoders are checked through AutoModel (logits and
encode/decode); memory models through AutoModelForCausalLM (logits, cached == uncached generation).
"""

import json
import sys

import block_memory_zoo  # noqa: F401  (blocks memory_zoo before anything imports it)
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

model_dir = sys.argv[1]
try:
    import memory_zoo  # noqa: F401

    blocked = False
except ImportError:
    blocked = True

config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
probe = load_file(f"{model_dir}/probe.safetensors")
report = {"blocked": blocked, "config_class": type(config).__name__}
causal = "AutoModelForCausalLM" in (config.auto_map or {})
model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(model_dir, trust_remote_code=True).eval()
report["model_module"] = type(model).__module__
report["model_class"] = type(model).__name__
with torch.no_grad():
    logits = model(probe["input_ids"]).logits
    report["logits_max_diff"] = (logits - probe["logits"]).abs().max().item()
    if causal:
        prompt = probe["input_ids"][:, :3]
        cached = model.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
        uncached = model.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                                  use_cache=False)
        report["cached_equals_uncached"] = bool(torch.equal(cached, uncached))
    else:
        memory = model.encode(probe["input_ids"])
        report["memory_max_diff"] = (memory - probe["memory"]).abs().max().item()
        report["round_trip_max_diff"] = (model.decode(memory) - logits).abs().max().item()
print(json.dumps(report))
