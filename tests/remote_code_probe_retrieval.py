"""Run in a fresh process where memory_zoo cannot be imported: the retrieval models as remote code.

Usage: python remote_code_probe_retrieval.py EMBEDDER_DIR RETRIEVAL_DIR. EMBEDDER_DIR is a saved masked mixer with a
tokenizer and `probe.safetensors` (`embeddings` our API gave for PROBE_TEXTS); RETRIEVAL_DIR a saved retrieval mixer
with `probe.safetensors` (`inputs_embeds`, `logits`). Prints one JSON line with what it observed.
"""

import json
import sys

import block_memory_zoo  # noqa: F401  (blocks memory_zoo before anything imports it)
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

PROBE_TEXTS = ["The quick brown fox", "A stitch in time saves nine.", "All that glitters is not gold, they say."]

embedder_dir, retrieval_dir = sys.argv[1], sys.argv[2]
try:
    import memory_zoo  # noqa: F401

    blocked = False
except ImportError:
    blocked = True

expected = load_file(f"{embedder_dir}/probe.safetensors")["embeddings"]
sentence_model = SentenceTransformer(embedder_dir, trust_remote_code=True, device="cpu")
encoded = sentence_model.encode(PROBE_TEXTS, convert_to_tensor=True, batch_size=2)
base = AutoModel.from_pretrained(embedder_dir, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(embedder_dir, trust_remote_code=True)
tokenizer.padding_side = "left"
with torch.no_grad():
    left_padded = base.embed(**tokenizer(PROBE_TEXTS, padding=True, return_tensors="pt"))

retrieval = AutoModel.from_pretrained(retrieval_dir, trust_remote_code=True).eval()
probe = load_file(f"{retrieval_dir}/probe.safetensors")
with torch.no_grad():
    scores = retrieval(inputs_embeds=probe["inputs_embeds"]).logits

print(json.dumps({
    "blocked": blocked,
    "embedder_module": type(base).__module__,
    "retrieval_module": type(retrieval).__module__,
    "sentence_transformers_max_diff": (encoded.cpu() - expected).abs().max().item(),
    "left_padded_max_diff": (left_padded - expected).abs().max().item(),
    "scores_max_diff": (scores - probe["logits"]).abs().max().item(),
}))
