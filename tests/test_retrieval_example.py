"""The InfoNCE retrieval example and the retrieval benchmark, run the way a newcomer runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def run(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # One thread: these models are tiny, and two threads crawl when another process holds a core.
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=timeout)


def test_infonce_example_fine_tunes_saves_and_loads_with_sentence_transformers(tmp_path):
    output = tmp_path / "model"
    result = run([str(ROOT / "examples" / "infonce_retrieval.py"), "--clm-steps", "20", "--infonce-steps", "25",
                  "--output-dir", str(output)], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    stdout = result.stdout
    # the embedded sonnets are too short to hold pairs out: the example says it evaluates on the training pairs
    assert "accuracy on 75 training pairs (too little text to hold pairs out: memorisation)" in stdout
    rows = {int(n): (float(before), float(after)) for n, before, after in
            re.findall(r"among\s+(\d+) candidates: ([\d.]+) -> ([\d.]+)", stdout)}
    assert sorted(rows) == [8, 16, 32, 64]
    assert rows[32][1] > rows[32][0] + 0.2  # InfoNCE learns the training pairs
    losses = re.search(r"InfoNCE loss: ([\d.]+) -> ([\d.]+) .* in 25 steps", stdout)
    assert losses and float(losses[2]) < float(losses[1])
    assert {"config.json", "model.safetensors", "modeling_masked_mixer.py", "tokenizer.json",
            "modules.json"} <= {p.name for p in output.iterdir()}
    if importlib.util.find_spec("sentence_transformers") is None:
        assert "skipping the SentenceTransformer check" in stdout
    else:
        assert "trust_remote_code=True).encode matches model.embed: True" in stdout


def test_infonce_example_rejects_missing_text_file(tmp_path):
    result = run([str(ROOT / "examples" / "infonce_retrieval.py"), "--text", "/no/such/file.txt"], tmp_path)
    assert result.returncode != 0 and "no such file" in result.stderr


def test_retrieval_benchmark_quick_run_writes_figures(tmp_path):
    result = run([str(ROOT / "benchmarks" / "retrieval.py"), "--quick", "--output-dir", str(tmp_path / "out")],
                 tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    if not (ROOT.parent / "shared" / "data" / "tinyshakespeare.txt").is_file():  # a fresh machine: embedded text
        assert "WARNING" in result.stdout and "embedded" in result.stdout
    report = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert [row["model"] for row in report["results"]] == ["masked_mixer", "llama"]
    mixer, llama = (row["non_embedding_parameters"] for row in report["results"])
    assert abs(llama - mixer) / mixer < 0.02  # matched sizes
    candidates = [int(n) for n in report["candidates"]]
    assert candidates and all(n <= report["pairs"]["held_out"] for n in candidates)
    assert all(n > report["pairs"]["held_out"] for n in report["candidates_omitted"])
    for row in report["results"]:
        assert set(row["accuracy"]) == set(row["accuracy_after_clm"]) == {str(n) for n in candidates}
        assert all(0.0 <= value <= 1.0 for value in row["accuracy"].values())
        assert row["infonce_losses"] and row["clm_held_out_loss"] < row["clm_held_out_loss_before"]
    assert (tmp_path / "out" / "retrieval.png").stat().st_size > 0
    assert "| masked_mixer |" in result.stdout and "| llama |" in result.stdout
