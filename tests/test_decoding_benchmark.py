"""benchmarks/decoding.py at its smoke scale: every causal LM and the Llama yardstick get a row, exact tokens, a plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from memory_zoo import ARCHITECTURES

ROOT = Path(__file__).parent.parent


def test_decoding_benchmark_quick_run_times_every_causal_lm_against_llama(tmp_path: Path) -> None:
    output = tmp_path / "tmp" / "decoding.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decoding.py"), "--quick", "--output",
                             str(output)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(output.read_text())
    causal = {config.model_type for config, _, model in ARCHITECTURES if model is not None}
    expected = set(report["settings"]["models"])
    assert causal | {"llama"} <= expected  # plus any other yardstick of scoreboard_models (Mamba)
    contexts = report["settings"]["contexts"]
    cells = {(cell["model"], cell["context"]): cell for cell in report["cells"]}
    assert set(cells) == {(model, context) for model in expected for context in contexts}
    for (model, context), cell in cells.items():
        assert cell["status"] == "ok", (model, context, cell["status"])
        assert cell["decode_tokens_per_s"] > 0 and cell["prefill_s"] > 0
        assert cell["ratio_to_llama"] > 0 and cell["cache_bytes"] > 0
        assert isinstance(cell["smaller_cache"], bool)
        # Greedy tokens with the cache equal those of re-running the whole sequence each step.
        assert cell["tokens_exact"] is True and cell["deterministic"] is True, (model, context)
    assert all(cells[("llama", c)]["ratio_to_llama"] == 1.0 for c in contexts)
    assert report["ratios"]["llama"] == {str(c): 1.0 for c in contexts}
    assert "decode tokens/s relative to Llama" in result.stdout
    assert output.with_suffix(".png").stat().st_size > 0
