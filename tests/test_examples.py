"""The README's main job and the project's style gate, run the way a newcomer runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_quickstart_trains_saves_reloads_and_generates(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--steps", "30", "--output-dir",
         str(tmp_path / "model")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "cached and uncached greedy generation give the same 48 tokens: True" in result.stdout
    summary = [line for line in result.stdout.splitlines() if line.startswith("loss:")]
    assert summary and "in 30 steps" in summary[0]
    before, after = (float(x) for x in summary[0].split()[1:4:2])
    assert after < before
    assert {"config.json", "modeling_masked_mixer.py", "tokenizer.json"} <= {p.name for p in (tmp_path / "model").iterdir()}


def test_quickstart_rejects_missing_text_file(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--text", "/no/such/file.txt"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode != 0 and "no such file" in result.stderr + result.stdout


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install -e '.[test]')")
def test_ruff_clean():
    result = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("architecture", ["masked-mixer", "memory-mosaics", "memory-layers", "lswt",
                                          "variable-memory-mixer"])
def test_generation_benchmark_quick_run_writes_figures(architecture, tmp_path):
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--quick", "--architecture", architecture,
         "--output", str(output)], capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    import json

    report = json.loads(output.read_text())
    assert report["settings"]["architecture"] == architecture
    assert [r["context"] for r in report["results"]] == [32, 64]
    assert all(r["tokens_identical"] and r["cached_tokens_per_s"] > 0 for r in report["results"])
    assert output.with_suffix(".png").stat().st_size > 0


def test_leaky_average_benchmark_quick_run_writes_figures(tmp_path):
    import json

    output, figure = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory_mosaics_leaky_average.py"), "--quick", "--output",
         str(output), "--plot", str(figure)], capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert figure.stat().st_size > 0
    report = json.loads(output.read_text())
    assert report["settings"]["lengths"] == [64, 128] and "load_average_before" in report["machine"]
    rows = {(r["level"], r["path"], r["T"]): r for r in report["rows"]}
    for level in ("layer", "model"):
        for length in (64, 128):
            fallback, naive = rows[(level, "fallback", length)], rows[(level, "naive", length)]
            assert fallback["status"] == naive["status"] == "ok"
            assert fallback["seconds"] > 0 and naive["seconds"] > 0
            assert fallback["peak_bytes"] is not None and naive["peak_bytes"] is not None
            # Same weights and inputs in separate worker processes: the two formulations give the same loss.
            assert abs(naive["loss"] - fallback["loss"]) <= 1e-5 * max(1.0, abs(fallback["loss"]))
            kernel = rows[(level, "kernel", length)]
            if report["settings"]["device"] == "cpu":
                assert kernel["status"].startswith("skipped") and kernel["seconds"] is None
        check = report["agreement"][level]
        assert check["naive_max_abs_loss_diff"] <= 1e-5 * max(1.0, abs(check["loss"]["fallback"]))
        assert check["naive_max_grad_diff_relative_to_largest_grad"] < 1e-3


def test_quickstart_trains_a_memory_mosaic(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--architecture", "memory-mosaics", "--steps", "20",
         "--max-new-tokens", "80", "--output-dir", str(tmp_path / "model")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "model: MemoryMosaicsForCausalLM" in result.stdout
    # no fixed context: 80 new tokens go beyond the 64-token training window, cached = uncached all the way
    assert "cached and uncached greedy generation give the same 80 tokens: True" in result.stdout
    assert {"config.json", "modeling_memory_mosaics.py", "tokenizer.json"} <= {p.name for p in (tmp_path / "model").iterdir()}


def test_slopes_benchmark_quick_run_fits_every_architecture(tmp_path):
    import json

    import memory_zoo

    output = tmp_path / "slopes.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "slopes.py"), "--quick", "--output", str(output)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert output.with_suffix(".png").stat().st_size > 0 and "log-log slopes" in result.stdout
    report = json.loads(output.read_text())
    causal_lms = {config.model_type for config, _, causal in memory_zoo.ARCHITECTURES if causal is not None}
    assert set(report["architectures"]) == causal_lms | {"llama", "mamba"}  # every causal LM, and the yardsticks
    for architecture, row in report["architectures"].items():
        assert [cell["status"] for cell in row["cells"]] == ["ok", "ok"], architecture
        assert row["slopes"]["time"] is not None
        # saved activations are counted exactly: they grow with the length (twice as many tokens, more bytes)
        short, long = (cell["saved_bytes"] for cell in row["cells"])
        assert 0 < short < long, architecture
        assert row["slopes"]["saved"] is not None


def test_memory_layers_benchmark_quick_run_writes_figures(tmp_path):
    import json

    output, figure = tmp_path / "bench.json", tmp_path / "bench.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory_layers_memory.py"), "--quick", "--output", str(output),
         "--plot", str(figure)], capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert figure.stat().st_size > 0
    report = json.loads(output.read_text())
    settings = report["settings"]
    assert settings["slots"] == [4096, 16384] and settings["cells"] == "in-process"  # --quick: no worker processes
    assert "load_average_before" in report["machine"]
    rows = {(r["path"], r["slots"]): r for r in report["rows"]}
    hidden = settings["hidden"]
    for slots in (4096, 16384):
        size = report["sizes"][str(slots)]
        macs = size["memory_macs_per_token"]
        assert macs["total"] == macs["query"] + macs["scoring"] + macs["read"] + macs["projections"]
        # equal FLOPs: the dense SwiGLU's 3 * d * I multiply-adds are the memory layer's, up to rounding I
        intermediate = size["dense_intermediate_size"]
        assert abs(3 * hidden * intermediate - macs["total"]) <= 3 * hidden / 2
        memory, dense = rows[("memory_fallback", slots)], rows[("dense_ffn", slots)]
        assert memory["status"] == dense["status"] == "ok"
        assert dense["intermediate_size"] == intermediate and dense["parameters"] == 3 * hidden * intermediate
        assert memory["parameters"] > slots * hidden  # the value table dominates
        for row in (memory, dense):
            assert row["seconds"] > 0 and row["peak_bytes"] is not None and row["loss"] > 0
        assert report["ratios_to_dense"]["memory_fallback"][str(slots)]["seconds"] > 0
        kernel = rows[("memory_kernel", slots)]
        if settings["device"] == "cpu":
            assert kernel["status"].startswith("skipped") and kernel["seconds"] is None
    # the sub-key scoring is the term that grows with the memory: twice the sub-keys, twice the scoring work
    scoring = [report["sizes"][str(s)]["memory_macs_per_token"]["scoring"] for s in (4096, 16384)]
    assert scoring[1] == 2 * scoring[0]


def test_quickstart_trains_memory_layers_with_value_table_groups(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--architecture", "memory-layers", "--steps", "20",
         "--output-dir", str(tmp_path / "model")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "model: MemoryLayersForCausalLM" in result.stdout
    assert "cached and uncached greedy generation give the same 48 tokens: True" in result.stdout
    assert {"modeling_memory_layers.py", "zoo_layers.py", "tokenizer.json"} <= {p.name for p in (tmp_path / "model").iterdir()}


@pytest.mark.parametrize("recompute", [False, True], ids=["kv_memory", "recompute_kv"])
def test_lswt_segment_training_carries_a_detached_memory(recompute, tmp_path):
    command = [sys.executable, str(ROOT / "examples" / "lswt_segment_training.py"), "--steps", "30",
               "--output-dir", str(tmp_path / "model")] + (["--recompute-kv"] if recompute else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"recompute_kv={recompute}" in result.stdout and "memory 32 positions" in result.stdout
    summary = [line for line in result.stdout.splitlines() if line.startswith("train loss:")]
    before, after = (float(x) for x in summary[0].split()[2:5:2])
    assert after < before
    assert (tmp_path / "model" / "modeling_lswt.py").is_file()


def test_mixer_autoencoder_example_reports_compression_metrics(tmp_path):
    import json
    import math

    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "mixer_autoencoder.py"), "--steps", "60", "--output-dir",
         str(tmp_path / "model"), "--json", str(tmp_path / "metrics.json")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for text in ("held-out before training: loss", "held-out after training", "bits/token", "token accuracy",
                 "compression ratio", "encode_texts:", "original:", "reconstruction:"):
        assert text in result.stdout, text
    assert "encoding" in result.stderr  # encode_texts' progress bar
    summary = [line for line in result.stdout.splitlines() if line.startswith("loss:")]
    assert summary and "in 60 steps" in summary[0]
    before, after = (float(x) for x in summary[0].split()[1:4:2])
    assert after < before
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["after"]["loss_nats"] == pytest.approx(after, abs=5e-4)
    for metrics in (report["before"], report["after"]):
        assert metrics["bits_per_token"] == pytest.approx(metrics["loss_nats"] / math.log(2))
        assert metrics["window_length"] == 32 and metrics["compression_ratio"] == 32 / metrics["memory_size"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "model").iterdir()}


@pytest.mark.parametrize("architecture", ["mixer_autoencoder", "variable_memory_transformer"])
def test_train_example_single_process(architecture, tmp_path):
    """examples/train.py, one process, seconds: an autoencoder (reconstruction loss, bits per token; its config
    through --config) and a memory model (perplexity, with gradient checkpointing through the Trainer)."""
    import json

    out = tmp_path / "model"
    command = [sys.executable, str(ROOT / "examples" / "train.py"), "--architecture", architecture.replace("_", "-"),
               "--max-steps", "8", "--eval-steps", "4", "--save-steps", "4", "--logging-steps", "1", "--batch-size",
               "4", "--max-eval-blocks", "4", "--lr", "1e-2", "--output-dir", str(out)]
    autoencoder = architecture == "mixer_autoencoder"
    if autoencoder:
        (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32, "compression": 2}))
        command += ["--config", str(tmp_path / "config.json")]
    else:
        command += ["--hidden-size", "32", "--gradient-checkpointing"]
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{architecture}, 1 process(es)" in result.stdout
    summary = [line for line in result.stdout.splitlines() if line.startswith("eval ")][-1]
    assert ("bits/token" in summary) == autoencoder and ("perplexity" in summary) != autoencoder
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and (out / "checkpoint-8").is_dir()
    evals = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert evals[0]["step"] == 0 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]  # before training vs after
    assert ("eval_bits_per_token" in evals[-1]) == autoencoder and ("eval_perplexity" in evals[-1]) != autoencoder
    config = json.loads((out / "config.json").read_text())
    width = config["hidden_size"] if autoencoder else config["decoder_config"]["hidden_size"]  # Llama sub-configs
    assert config["model_type"] == architecture and width == 32
    if autoencoder:
        assert config["compression"] == 2
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}


def test_train_example_explains_a_missing_datasets_package(capsys):
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed")
    spec = importlib.util.spec_from_file_location("memory_zoo_example_train", ROOT / "examples" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)  # `datasets` stays optional: the script imports it only for --dataset
    with pytest.raises(SystemExit):
        train.parse_args(["--dataset", "roneneldan/TinyStories"])
    assert "pip install datasets" in capsys.readouterr().err


def test_scoreboard_efficiency_quick_run_writes_json_table_and_plots(tmp_path):
    import json

    output_dir = tmp_path / "scoreboard"
    architectures = ["masked_mixer", "mixer_autoencoder", "llama", "mamba"]  # two of ours, the two yardsticks
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scoreboard.py"), "--quick", "--only", "efficiency",
         "--architectures", *architectures, "--output-dir", str(output_dir)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((output_dir / "scoreboard.json").read_text())
    assert report["tasks"] is None and report["settings"]["architectures"] == architectures
    assert {"processor", "torch", "load_average_before"} <= set(report["machine"])
    efficiency = report["efficiency"]
    assert efficiency["settings"]["scale"] == "quick" and efficiency["settings"]["in_process"]
    cells = {(c["architecture"], c["kind"], c["context"]): c for c in efficiency["cells"]}
    expected = {(a, k, c) for a in architectures for c in (64, 128)
                for k in ("train", "autoencode" if a == "mixer_autoencoder" else "generate")}
    assert set(cells) == expected
    for cell in cells.values():
        assert cell["status"] == "ok", cell["status"]
        assert cell["tokens_per_s"] > 0 and cell["peak_bytes"] is not None
        assert cell["parameters"]["total"] > cell["parameters"]["non_embedding"] > 0
    # the mixer's L x L mixing matrices: more parameters at the longer context
    assert (cells[("masked_mixer", "train", 128)]["parameters"]["non_embedding"]
            > cells[("masked_mixer", "train", 64)]["parameters"]["non_embedding"])
    assert cells[("masked_mixer", "generate", 128)]["cache_bytes_per_sequence"] > 0
    slopes = efficiency["slopes"]["0.2M"]
    assert slopes["masked_mixer"]["cache_bytes_per_sequence"] is not None
    assert "autoencode_time_per_token" in slopes["mixer_autoencoder"]
    # every figure also as a ratio to the matched Llama, in the JSON and the printed table
    ratios = efficiency["ratios"]["0.2M"]
    assert "llama" not in ratios and set(ratios) == {"masked_mixer", "mixer_autoencoder", "mamba"}
    for context in ("64", "128"):
        ours, llama = (cells[(a, "generate", int(context))]["decode_tokens_per_s"] for a in ("masked_mixer", "llama"))
        decode = ratios["masked_mixer"].get("decode_tokens_per_s", {})
        if ours and llama:
            assert decode[context] == pytest.approx(ours / llama)
        else:  # 4 new tokens on a busy machine: the 1-token call can take as long, and the decode rate is unknown
            assert context not in decode
        train = (cells[(a, "train", int(context))]["tokens_per_s"] for a in ("mamba", "llama"))
        assert ratios["mamba"]["train_tokens_per_s"][context] == pytest.approx(next(train) / next(train))
    assert "ratios to the matched llama" in result.stdout
    assert "budget 0.2M non-embedding parameters" in result.stdout and "log-log slopes" in result.stdout
    assert all(architecture in result.stdout for architecture in architectures)
    figures = sorted(p.name for p in output_dir.glob("*.png"))
    assert figures == ["efficiency_0.2M_memory.png", "efficiency_0.2M_throughput.png"]
    assert all((output_dir / name).stat().st_size > 0 for name in figures)



def test_readme_and_docs_show_the_committed_scoreboard():
    """The scoreboard blocks of README.md and docs/benchmarks.md are the table of the committed scoreboard.json, and
    that run has the matched Llama beside every architecture."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scoreboard_summary
        from scoreboard_models import DEFAULT_ARCHITECTURES, YARDSTICK
    finally:
        sys.path.pop(0)
    report = json.loads(scoreboard_summary.RESULTS.read_text())
    assert report["settings"]["architectures"] == DEFAULT_ARCHITECTURES and YARDSTICK == scoreboard_summary.YARDSTICK
    table = scoreboard_summary.summary_table(report)
    for document in scoreboard_summary.DOCUMENTS:
        text = document.read_text()
        block = text.split(scoreboard_summary.BEGIN, 1)[1].split(scoreboard_summary.END, 1)[0]
        assert block == table, f"{document}: run python benchmarks/scoreboard_summary.py --write"
    assert all(f"| {a} |" in table or f"**{a}**" in table for a in DEFAULT_ARCHITECTURES)
    ratios = report["efficiency"]["ratios"]
    assert all(set(per_arch) == set(DEFAULT_ARCHITECTURES) - {YARDSTICK} for per_arch in ratios.values())
