"""The `memory-zoo` command line: `--help` without torch or transformers, the same arguments through `python -m
memory_zoo.cli`, and the progress line every command reports (what step it is in; tokens scored or generated)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FIXTURES, TEXT, tiny_model, train_tokenizer

import memory_zoo_cli
from memory_zoo_cli.arguments import build_parser, parse_args
from memory_zoo_cli.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
# What `memory-zoo --help` must not wait for: the heavy libraries, and memory_zoo itself (its import loads them all).
HEAVY = {"torch", "transformers", "huggingface_hub", "memory_zoo", "datasets", "lm_eval", "safetensors", "tokenizers"}
SUBCOMMANDS = sorted(build_parser().commands)

# Runs the `memory-zoo` console script the way its generated wrapper does (entry point from the installed metadata),
# then reports what the process had imported.
SCRIPT_PROBE = r"""
import json, sys
from importlib.metadata import entry_points

script = next(e for e in entry_points(group="console_scripts") if e.name == "memory-zoo")
try:
    code = script.load()(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "entry_point": script.value, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def run_script(argv: list[str]) -> tuple[dict, subprocess.CompletedProcess]:
    result = subprocess.run([sys.executable, "-c", SCRIPT_PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result


@pytest.mark.parametrize("argv", [["--help"], *([command, "--help"] for command in SUBCOMMANDS)],
                         ids=["memory-zoo", *SUBCOMMANDS])
def test_help_imports_neither_torch_nor_transformers(argv):
    report, result = run_script(argv)
    assert report["entry_point"] == "memory_zoo_cli:main", "an older install of the command: pip install -e ."
    assert report["code"] == 0
    assert not HEAVY & set(report["modules"]), f"`memory-zoo {' '.join(argv)}` imported {HEAVY & set(report['modules'])}"
    assert result.stdout.startswith(f"usage: memory-zoo {argv[0] if len(argv) > 1 else ''}".rstrip())


@pytest.mark.parametrize("argv", [["convert", "no-such-source", "a", "b"], ["eval", "my-mixer"], ["generate"]],
                         ids=["bad choice", "eval without text", "missing arguments"])
def test_usage_errors_are_answered_before_the_imports_too(argv):
    report, result = run_script(argv)
    assert report["code"] == 2 and not HEAVY & set(report["modules"])
    assert result.stderr.startswith(f"memory-zoo {argv[0]}: error: ") and len(result.stderr.splitlines()) == 1


def test_python_m_memory_zoo_cli_takes_the_same_arguments(capsys):
    from memory_zoo import cli

    cases = [["--help"], ["eval", "--help"], ["convert", "no-such-source", "a", "b"], ["eval", "m", "t", "--split", "x"]]
    answers = {}
    for name, main in (("launcher", memory_zoo_cli.main), ("memory_zoo.cli", cli.main)):
        for argv in cases:
            with pytest.raises(SystemExit) as exit:
                main(argv)
            captured = capsys.readouterr()
            answers.setdefault(name, []).append((exit.value.code, captured.out, captured.err))
    assert answers["launcher"] == answers["memory_zoo.cli"]
    result = subprocess.run([sys.executable, "-m", "memory_zoo.cli", "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout == answers["launcher"][0][1]


def test_setup_cfg_installs_the_launcher():
    text = (ROOT / "setup.cfg").read_text(encoding="utf-8")
    assert "memory-zoo = memory_zoo_cli:main" in text and "include = memory_zoo*" in text  # memory_zoo_cli included


# --- the progress line ------------------------------------------------------------------------------------------------

def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_in_a_log_only_slow_work_is_written_as_plain_lines():
    stream = io.StringIO()
    with Progress("memory-zoo test", stream=stream, terminal=False, delay=0.2, interval=3600, refresh=0.01) as progress:
        progress.step("a quick step")
        progress.step("a step the log must not show", logged=False)
        time.sleep(0.4)
        progress.step("a slow step")
        wait_for(lambda: "a slow step" in stream.getvalue())
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("memory-zoo test: a slow step (") and "\r" not in stream.getvalue()
    assert lines[-1].startswith("memory-zoo test: done in ") and len(lines) == 2


def test_in_a_log_a_count_is_written_every_interval_and_a_quick_command_writes_nothing():
    stream = io.StringIO()
    with Progress("memory-zoo eval", stream=stream, terminal=False, interval=0.1, refresh=0.01) as progress:
        progress.count(1000, "tokens", "scored")
        progress.advance(250)
        wait_for(lambda: "250/1,000 tokens scored" in stream.getvalue())
        progress.advance(750)
    first, last = stream.getvalue().splitlines()[0], stream.getvalue().splitlines()[-1]
    assert first.startswith("memory-zoo eval: 250/1,000 tokens scored, ") and "tokens/s, " in first and " left" in first
    assert last.startswith("memory-zoo eval: done in ") and "1,000 tokens scored" in last

    quiet = io.StringIO()
    with Progress("memory-zoo eval", stream=quiet, terminal=False) as progress:
        progress.step("loading the model")
        progress.count(10, "tokens", "scored")
        progress.advance(10)
    assert quiet.getvalue() == ""


def test_a_failed_command_leaves_no_closing_line():
    stream = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress("memory-zoo test", stream=stream, terminal=False, delay=0.0, refresh=0.01) as progress:
            progress.step("working")
            wait_for(lambda: "working" in stream.getvalue())
            raise RuntimeError("a bug")
    assert stream.getvalue().splitlines() == [line for line in stream.getvalue().splitlines() if "working" in line]


def test_on_a_terminal_the_line_is_redrawn_in_place_and_erased_at_the_end():
    stream = io.StringIO()
    with Progress("memory-zoo eval", stream=stream, terminal=True, delay=0.0, refresh=0.01) as progress:
        progress.step("loading the model")
        wait_for(lambda: "loading the model (" in stream.getvalue())
        progress.count(100, "tokens", "scored")
        progress.advance(40)
        wait_for(lambda: "40/100 tokens scored" in stream.getvalue())
    text = stream.getvalue()
    assert "\n" not in text and text.startswith("\rmemory-zoo eval: loading the model (")
    assert "tokens/s, " in text and text.endswith("\r\033[K")  # the last write erases the line


class Recorder(Progress):
    """A progress line that writes nothing and records what the command reported."""

    def __init__(self, command: str) -> None:
        super().__init__(f"memory-zoo {command}", stream=io.StringIO(), terminal=False, delay=3600, interval=3600)
        self.calls: list[tuple] = []

    def step(self, text: str, logged: bool = True) -> None:
        self.calls.append(("step", text))
        super().step(text, logged)

    def count(self, total: int, unit: str, what: str) -> None:
        self.calls.append(("count", total, unit, what))
        super().count(total, unit, what)

    def advance(self, amount: int = 1) -> None:
        self.calls.append(("advance", amount))
        super().advance(amount)

    def steps(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "step"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny Masked Mixer (context 24) with its tokenizer, and a text."""
    root = tmp_path_factory.mktemp("cli")
    tokenizer = train_tokenizer()
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "text.txt").write_text(TEXT[:600], encoding="utf-8")
    return root


def test_eval_reports_its_steps_then_the_tokens_it_scores(model_folder, capsys):
    from memory_zoo.cli import run

    recorder = Recorder("eval")
    out = model_folder / "out.json"
    argv = ["eval", str(model_folder / "model"), str(model_folder / "text.txt"), "--stride", "12", "--json", str(out)]
    assert run(parse_args(argv), recorder) == 0
    assert "perplexity" in capsys.readouterr().out
    steps = recorder.steps()
    assert steps[0].startswith("reading ") and any(s.startswith("loading the model from ") for s in steps)
    counts = [call for call in recorder.calls if call[0] == "count"]
    assert counts == [("count", json.loads(out.read_text())["tokens"], "tokens", "scored")]
    assert sum(call[1] for call in recorder.calls if call[0] == "advance") == counts[0][1]


def test_generate_reports_its_steps_then_the_tokens_it_generates(model_folder, capsys):
    from memory_zoo.cli import run

    recorder = Recorder("generate")
    assert run(parse_args(["generate", str(model_folder / "model"), "The quick", "--max-new-tokens", "6"]),
               recorder) == 0
    assert capsys.readouterr().out.startswith("The quick")
    assert [s.split(" from ")[0] for s in recorder.steps()] == ["loading the tokenizer", "loading the model",
                                                               "generating 6 tokens"]
    assert ("count", 6, "tokens", "generated") in recorder.calls
    assert 1 <= sum(call[1] for call in recorder.calls if call[0] == "advance") <= 6
    # Beam search takes no streamer: the step is reported, without a count.
    beams = Recorder("generate")
    assert run(parse_args(["generate", str(model_folder / "model"), "The quick", "--max-new-tokens", "4",
                           "--num-beams", "2"]), beams) == 0
    assert beams.steps()[-1] == "generating 4 tokens with 2 beams" and not any(c[0] == "count" for c in beams.calls)


def test_convert_reports_each_step(tmp_path, capsys):
    from memory_zoo.cli import run

    fixture = FIXTURES / "masked_mixer" / "plain"
    recorder = Recorder("convert")
    argv = ["convert", "masked-mixer", str(fixture), str(tmp_path / "out"), "--config",
            str(fixture / "research_config.json"), "--reference", str(fixture / "expected.safetensors")]
    assert run(parse_args(argv), recorder) == 0
    assert capsys.readouterr().out.startswith("Converted masked-mixer checkpoint")
    assert [step.split(" ")[0] for step in recorder.steps()] == ["reading", "loading", "comparing", "saving"]


def test_a_user_error_ends_the_progress_line_without_its_closing_line(model_folder, capsys):
    """The error comes last, after what progress was written, and no "done in" line claims success."""
    from memory_zoo.cli import run

    progress = Progress("memory-zoo eval", terminal=False, delay=0.0, refresh=0.01)
    argv = ["eval", str(model_folder / "model"), str(model_folder / "text.txt"), "--context", "1"]
    assert run(parse_args(argv), progress) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("memory-zoo eval: error: ") and "at least 2 tokens" in err[-1]
    assert all(line.startswith("memory-zoo eval: ") and "done in" not in line for line in err)
