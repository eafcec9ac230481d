"""Every code block of README.md and docs/*.md runs here, offline, on the CPU, or is marked skipped with a reason.

How a block is treated is written in an HTML comment on the line right above its opening fence:

* no comment: the block runs. A ```python block runs in this process, in a fresh namespace, in an empty temporary
  folder. A ```bash (or ```shell, ```sh) block runs its `memory-zoo ...` commands one after another (comments and
  `\\` line continuations allowed); any other command in it fails the test: mark the block skipped instead.
* `<!-- docs-test: setup=NAME -->`: the block runs after setup NAME (see SETUPS below) prepared the folder, e.g.
  `tiny_mixer` writes a small trained-tokenizer Masked Mixer to `my-mixer/`.
* `<!-- docs-test: skip (reason) -->`: the block does not run; the reason is required and shows in the test report.

```text blocks are not code and are left alone; a block in any other language fails `test_every_block_runs_or_is_
skipped_with_a_reason` until it is given one of these treatments. Nothing is downloaded: HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, TEXT, tiny_model, train_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = {"python", "bash", "shell", "sh"}
TEXT_LANGUAGES = {"text"}

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARK = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip \((.+)\)$")
SETUP = re.compile(r"^setup=(\w+)$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    index: int  # among the page's code blocks (python, bash, shell, sh), from 0
    line: int  # of the opening fence, from 1
    language: str
    source: str
    mark: str | None  # the text of the docs-test comment above the fence, if any

    @property
    def id(self) -> str:
        return f"{self.page}#{self.index}"


def read_blocks(page: Path) -> tuple[list[Block], list[tuple[int, str]]]:
    """The code blocks of one Markdown page, and (line, language) of its fenced blocks in other languages."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, others, index, number = [], [], 0, 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        indent, language = opening.groups()
        end = number + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{page.name}:{number + 1}: a code block is not closed")
        previous = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        mark = MARK.match(previous)
        if language in RUN_LANGUAGES:
            body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[number + 1:end]]
            blocks.append(Block(str(page.relative_to(ROOT)), index, number + 1, language, "\n".join(body) + "\n",
                                mark.group(1) if mark else None))
            index += 1
        else:
            others.append((number + 1, language))
        number = end + 1
    return blocks, others


BLOCKS = [block for page in PAGES for block in read_blocks(page)[0]]


# --- setups: what a block needs in its folder (cwd) before it runs ---------------------------------------------------

def tiny_mixer(folder: Path) -> None:
    """`my-mixer/`: a small random Masked Mixer (context 64) with a BPE tokenizer trained on the spot, as a trained
    or converted model folder would be; `sample.txt`: a text to evaluate or embed."""
    tokenizer = train_tokenizer()
    tiny_model(vocab_size=len(tokenizer), max_position_embeddings=64).save_pretrained(folder / "my-mixer")
    tokenizer.save_pretrained(folder / "my-mixer")
    (folder / "sample.txt").write_text(TEXT, encoding="utf-8")


def research_mixer_checkpoint(folder: Path) -> None:
    """What a Masked Mixer research run leaves behind: `runs/tinystories/checkpoint-4000/model.safetensors` (the
    research `LanguageMixer` state dict the HF Trainer saves), `research.json` (its constructor arguments), `tok/` (a
    tokenizer) and `expected.safetensors` (the research model's `input_ids` and `logits`).

    The weights are the research fixture `tests/fixtures/masked_mixer/plain` (context 16) widened to context 64: each
    16 x 16 mixing matrix becomes the top-left corner of a 64 x 64 one whose other entries are random. Outputs at
    positions below 16 read only that corner, so the fixture's research logits (16 positions) stay the reference, and
    there is room to generate 40 tokens after a prompt."""
    from safetensors.torch import load_file, save_file

    fixture = FIXTURES / "masked_mixer" / "plain"
    weights, research_config = load_file(str(fixture / "model.safetensors")), (fixture / "research_config.json")
    generator, length = torch.Generator().manual_seed(0), 64
    for name, tensor in list(weights.items()):
        if name.endswith("conv.weight"):  # [L, L, 1]
            wide = torch.randn(length, length, 1, generator=generator) * tensor.std()
            wide[:tensor.shape[0], :tensor.shape[1]] = tensor
            weights[name] = wide
        elif name.endswith("conv.bias"):  # [L]
            weights[name] = torch.cat([tensor, torch.randn(length - len(tensor), generator=generator) * tensor.std()])
    checkpoint = folder / "runs" / "tinystories" / "checkpoint-4000"
    checkpoint.mkdir(parents=True)
    save_file(weights, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads(research_config.read_text())
    config = {key: config[key] for key in ("n_vocab", "dim", "depth", "expand_conv", "tie_weights")}
    config["tokenized_length"] = length
    (folder / "research.json").write_text(json.dumps(config, indent=2))
    expected = load_file(str(fixture / "expected.safetensors"))
    save_file({key: expected[key].contiguous() for key in ("input_ids", "logits")}, str(folder / "expected.safetensors"))
    train_tokenizer().save_pretrained(folder / "tok")


SETUPS: dict[str, Callable[[Path], None]] = {
    "tiny_mixer": tiny_mixer,
    "research_mixer_checkpoint": research_mixer_checkpoint,
    "meta_device": lambda folder: None,  # the block runs under `with torch.device("meta")`: shapes, no memory
}


def treatment(block: Block) -> tuple[str, str | None]:
    """("skip", reason), ("setup", name) or ("run", None); a malformed docs-test comment fails."""
    if block.mark is None:
        return "run", None
    if skip := SKIP.match(block.mark):
        return "skip", skip.group(1).strip()
    if (setup := SETUP.match(block.mark)) and setup.group(1) in SETUPS:
        return "setup", setup.group(1)
    raise AssertionError(f"{block.page}:{block.line}: unknown docs-test comment {block.mark!r}; write "
                         f"`skip (reason)` or `setup=NAME` with NAME one of {sorted(SETUPS)}")


# --- running blocks --------------------------------------------------------------------------------------------------

def memory_zoo_command() -> Callable[[list[str]], int]:
    """The function the `memory-zoo` console script calls, found the way the script finds it."""
    from importlib.metadata import entry_points

    scripts = [e for e in entry_points(group="console_scripts") if e.name == "memory-zoo"]
    assert scripts, "the `memory-zoo` command is not installed: pip install -e ."
    return scripts[0].load()


@contextmanager
def logging_restored() -> Iterator[None]:
    """The CLI configures logging for a process of its own; undo that for the tests that run after it here."""
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        hf_logging.set_verbosity(verbosity)
        (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()


def shell_commands(source: str) -> list[list[str]]:
    """The commands of a shell block, one per logical line (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", source)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def run_shell_block(block: Block) -> None:
    commands = shell_commands(block.source)
    assert commands, f"{block.id}: an empty block"
    for words in commands:
        if words[0] != "memory-zoo":
            pytest.fail(f"{block.id} (line {block.line}): only `memory-zoo` commands run in this test, not "
                        f"{shlex.join(words)!r}; mark the block `<!-- docs-test: skip (reason) -->` if it cannot run "
                        "offline in seconds")
        print(f"$ {shlex.join(words)}")
        with logging_restored():
            status = memory_zoo_command()(words[1:])
        assert status == 0, f"{block.id}: `{shlex.join(words)}` exited with {status} (its error is printed above)"


def run_python_block(block: Block, setup: str | None) -> None:
    code = compile(block.source, f"{block.page} (block {block.index}, line {block.line})", "exec")
    with torch.device("meta") if setup == "meta_device" else nullcontext():
        exec(code, {"__name__": "__docs__"})


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_block(block: Block, tmp_path, monkeypatch):
    kind, detail = treatment(block)
    if kind == "skip":
        pytest.skip(f"{block.id}: {detail}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    if kind == "setup":
        SETUPS[detail](tmp_path)
    torch.manual_seed(0)
    if block.language == "python":
        run_python_block(block, detail)
    else:
        run_shell_block(block)


# --- the census: every block has a treatment, the pages link up ------------------------------------------------------

def test_every_block_runs_or_is_skipped_with_a_reason():
    counts = {"run": 0, "setup": 0, "skip": 0}
    for page in PAGES:
        blocks, others = read_blocks(page)
        marks = sum(bool(MARK.match(line)) for line in page.read_text(encoding="utf-8").splitlines())
        assert marks == sum(block.mark is not None for block in blocks), (
            f"{page.name}: a docs-test comment that is not right above a code block")
        for line, language in others:
            assert language in TEXT_LANGUAGES, (
                f"{page.name}:{line}: a ```{language or '(no language)'} block: write ```python or ```bash (tested "
                f"here) or ```text (not code)")
        for block in blocks:
            kind, detail = treatment(block)
            assert kind != "skip" or len(detail) >= 10, f"{block.id}: give the reason the block cannot run"
            counts[kind] += 1
    assert counts["run"] + counts["setup"] >= counts["skip"] > 0, counts
    print(f"{len(BLOCKS)} code blocks: {counts['run'] + counts['setup']} run ({counts['setup']} with a setup), "
          f"{counts['skip']} skipped with a reason")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The `#anchor` of every heading of a Markdown page, as GitHub makes them."""
    headings = [line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines()
                if re.match(r"#{1,6} ", line)]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_relative_links_lead_to_files_and_headings(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        assert not anchor or path.suffix != ".md" or anchor in anchors(path), (
            f"{page.relative_to(ROOT)} links to {target}: {path.name} has no heading #{anchor}")


def test_readme_is_a_short_front_door_to_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link to docs/{page.name}"
        assert page.name == "index.md" or f"({page.name}" in index, f"docs/index.md does not link to {page.name}"
