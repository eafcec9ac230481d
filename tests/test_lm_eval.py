"""lm-evaluation-harness runs every causal LM of the zoo, as its users run it, on every kind of task.

A tiny model of each architecture with role "causal_lm" in memory_zoo/architectures.py (tests/test_contract.py's
`build`, with the probe tokenizer) is saved, then evaluated by `lm_eval.simple_evaluate(model="hf",
model_args="pretrained=DIR,trust_remote_code=True")` in a process where memory_zoo cannot be imported (the model loads
as the remote code saved with it, as it does for `lm_eval --model hf`), offline, on the local tasks of
tests/lm_eval_tasks/: one per output type (loglikelihood, multiple_choice, loglikelihood_rolling, generate_until),
with batches of 2.

Every number lm-eval reports is checked against this process's own computation with the same weights: the
log-likelihoods of the continuations (of each choice; of each rolling window lm-eval makes) from one uncached forward
pass, and each generated text against greedy decoding of its prompt alone without a cache. Batched generation pads
prompts on the left; the architectures whose left padding is "refused" by the model contract (memory mixers: their
chunks sit at fixed positions and the research reads padding as tokens) must stop it with an error that names the
fix, and generate one prompt at a time (`--batch_size 1`) exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import train_tokenizer
from lm_eval.models.utils import resolve_max_length
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from test_contract import build, case_of
from transformers import AutoModelForCausalLM, AutoTokenizer

from memory_zoo.architectures import ARCHITECTURES

HERE = Path(__file__).parent
TASKS = HERE / "lm_eval_tasks"
PROBE = HERE / "lm_eval_probe.py"
CAUSAL_LMS = [record.model_type for record in ARCHITECTURES if record.role == "causal_lm"]
SCORING_TASKS = ["zoo_loglikelihood", "zoo_multiple_choice", "zoo_rolling"]
STOP = "\n"  # zoo_generate.yaml: until
MAX_GEN_TOKS = 6  # zoo_generate.yaml: max_gen_toks
TOLERANCE = 1e-4  # nats: lm-eval's batches (right-padded) against one unpadded forward pass

# What must still change on the model side before an architecture passes a check (test id -> why); each such check is
# marked xfail(strict=True), so that it fails loudly once the change lands and the entry must go.
MODEL_SIDE: dict[str, str] = {}


def needs_max_length(architecture: str, config) -> bool:
    """lm-eval reads a model's context from `max_position_embeddings` (or n_positions, n_ctx); a fixed context of
    another name (num_chunks * chunk_length) is passed as `max_length=N` (docs/evaluation.md)."""
    context = case_of(architecture).context
    return context is not None and getattr(config, "max_position_embeddings", None) != context


def model_args(folder: Path, architecture: str, config) -> str:
    args = f"pretrained={folder},trust_remote_code=True"
    if needs_max_length(architecture, config):
        args += f",max_length={case_of(architecture).context}"
    return args


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(folders, report): every architecture saved with the probe tokenizer, and what lm-eval made of them."""
    root = tmp_path_factory.mktemp("lm_eval")
    tokenizer = train_tokenizer(vocab_size=90)
    folders, runs = {}, []
    for architecture in CAUSAL_LMS:
        model = build(architecture)
        folders[architecture] = folder = root / architecture
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        args = model_args(folder, architecture, model.config)
        runs += [{"id": f"{architecture}/scoring", "model_args": args, "tasks": SCORING_TASKS, "batch_size": 2},
                 {"id": f"{architecture}/generate-2", "model_args": args, "tasks": ["zoo_generate"], "batch_size": 2}]
        if case_of(architecture).left_padding != "exact":
            runs.append({"id": f"{architecture}/generate-1", "model_args": args, "tasks": ["zoo_generate"],
                         "batch_size": 1})
    (root / "spec.json").write_text(json.dumps(runs), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, str(PROBE), str(root / "spec.json"), str(root / "report.json")],
                            capture_output=True, text=True, cwd=TASKS, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return folders, json.loads((root / "report.json").read_text(encoding="utf-8"))


def load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def max_length(folder: Path, architecture: str, model, tokenizer) -> int:
    """The context lm-eval reads windows of, as HFLM resolves it."""
    if needs_max_length(architecture, model.config):
        return case_of(architecture).context
    return resolve_max_length(model.config, tokenizer)


@torch.no_grad()
def loglikelihood(model, context: list[int], continuation: list[int], limit: int) -> tuple[float, bool]:
    """log p(continuation | context) and whether greedy decoding gives it, read as lm-eval reads them: at most
    `limit` + 1 tokens (the oldest dropped), one uncached forward pass."""
    sequence = (context + continuation)[-(limit + 1):]
    logits = model(torch.tensor([sequence[:-1]]), use_cache=False).logits[0, -len(continuation):]
    target = torch.tensor(continuation)
    logp = logits.float().log_softmax(-1)
    return logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a (context, continuation) request into tokens (HFLM._encode_pair)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    return context_ids, whole[len(context_ids):]


def run_of(report: dict, run_id: str) -> dict:
    run = report["runs"][run_id]
    assert "error" not in run, f"lm-eval stopped: {run.get('error')}: {run.get('message')}"
    return run


def test_the_models_load_as_remote_code_and_print_no_warning(evaluated):
    _, report = evaluated
    assert report["blocked"], "memory_zoo was importable in the lm-eval process: the package classes were evaluated"
    assert report["printed"] == []


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_loglikelihood(evaluated, architecture):
    folders, report = evaluated
    model, tokenizer = load(folders[architecture])
    limit = max_length(folders[architecture], architecture, model, tokenizer)
    task = run_of(report, f"{architecture}/scoring")["zoo_loglikelihood"]
    assert len(task["samples"]) == 4 and "perplexity" in " ".join(task["metrics"])
    for sample in task["samples"]:
        (context, continuation), = sample["arguments"]
        (ll, greedy), = sample["resps"][0]
        expected = loglikelihood(model, *encode_pair(tokenizer, context, continuation), limit)
        assert ll == pytest.approx(expected[0], abs=TOLERANCE) and bool(greedy) == expected[1], (context, continuation)


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_multiple_choice(evaluated, architecture):
    folders, report = evaluated
    model, tokenizer = load(folders[architecture])
    limit = max_length(folders[architecture], architecture, model, tokenizer)
    task = run_of(report, f"{architecture}/scoring")["zoo_multiple_choice"]
    assert len(task["samples"]) == 4 and {"acc,none", "acc_norm,none"} <= set(task["metrics"])
    for sample in task["samples"]:
        assert len(sample["arguments"]) == len(sample["resps"]) >= 2  # one request per choice
        for (context, choice), ((ll, _),) in zip(sample["arguments"], sample["resps"], strict=True):
            expected, _ = loglikelihood(model, *encode_pair(tokenizer, context, choice), limit)
            assert ll == pytest.approx(expected, abs=TOLERANCE), (context, choice)


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_loglikelihood_rolling(evaluated, architecture):
    folders, report = evaluated
    model, tokenizer = load(folders[architecture])
    limit = max_length(folders[architecture], architecture, model, tokenizer)
    task = run_of(report, f"{architecture}/scoring")["zoo_rolling"]
    assert len(task["samples"]) == 3 and {"word_perplexity,none", "bits_per_byte,none"} <= set(task["metrics"])
    windows_seen = 0
    for sample in task["samples"]:
        (text,), = sample["arguments"]
        (ll,), = sample["resps"]
        tokens = tokenizer.encode(text, add_special_tokens=False)
        windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
            token_list=tokens, prefix_token=tokenizer.bos_token_id, max_seq_len=limit, context_len=1)]
        windows_seen += len(windows)
        expected = sum(loglikelihood(model, context, continuation, limit)[0] for context, continuation in windows)
        assert ll == pytest.approx(expected, abs=TOLERANCE * len(windows)), text
    if case_of(architecture).context is not None:  # a fixed context: the longest document needs several windows
        assert windows_seen > len(task["samples"])


@torch.no_grad()
def greedy_text(model, tokenizer, prompt: str) -> str:
    """What greedy decoding of `prompt` alone, without a cache, gives, cut as lm-eval cuts (EOS, stop sequence)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    new: list[int] = []
    for _ in range(MAX_GEN_TOKS):
        token = int(model(torch.tensor([ids + new]), use_cache=False).logits[0, -1].argmax())
        new.append(token)
        if token == tokenizer.eos_token_id:
            break
    return tokenizer.decode(new, skip_special_tokens=True).split(STOP)[0]


def check_generations(folder: Path, task: dict) -> None:
    model, tokenizer = load(folder)
    assert len(task["samples"]) == 4
    lengths = {len(tokenizer.encode(s["arguments"][0][0], add_special_tokens=False)) for s in task["samples"]}
    assert len(lengths) > 1, "prompts of one length would not be padded"
    for sample in task["samples"]:
        prompt = sample["arguments"][0][0]
        assert sample["resps"][0][0] == greedy_text(model, tokenizer, prompt), prompt


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_generate_until_batched(evaluated, architecture, request):
    if f"{architecture}-batched" in MODEL_SIDE:
        request.applymarker(pytest.mark.xfail(strict=True, reason=MODEL_SIDE[f"{architecture}-batched"]))
    folders, report = evaluated
    run = report["runs"][f"{architecture}/generate-2"]
    if case_of(architecture).left_padding == "refused":
        # The model cannot read a left-padded row as if alone: it says so and names the fix, one prompt at a time.
        assert run.get("error") == "ValueError", run
        assert "left padding" in run["message"] and "one at a time" in run["message"], run["message"]
        return
    check_generations(folders[architecture], run_of(report, f"{architecture}/generate-2")["zoo_generate"])


@pytest.mark.parametrize("architecture", [a for a in CAUSAL_LMS if case_of(a).left_padding != "exact"])
def test_generate_until_one_prompt_at_a_time(evaluated, architecture):
    folders, report = evaluated
    check_generations(folders[architecture], run_of(report, f"{architecture}/generate-1")["zoo_generate"])


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_lm_eval_reads_the_context_it_must_respect(architecture):
    """Without max_length in model_args, lm-eval finds the context of every architecture that names it
    max_position_embeddings; the others are the ones docs/evaluation.md tells to pass max_length."""
    model = build(architecture)
    context = case_of(architecture).context
    found = resolve_max_length(model.config, train_tokenizer(vocab_size=90))
    if context is None:
        return  # no fixed context: lm-eval's default window (2048) is only a window
    assert found == context or needs_max_length(architecture, model.config)
    documented = {"variable_memory_mixer", "variable_memory_transformer"}  # docs/evaluation.md, "The context"
    assert needs_max_length(architecture, model.config) == (architecture in documented), (
        "docs/evaluation.md names the architectures whose context lm-eval cannot read: update it and `documented`")
