"""`convert` never loses or mixes files: a non-empty output folder needs --overwrite, the write is staged and moved
into place at the end, and a failed or interrupted conversion leaves the folder as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from memory_zoo.conversion import ConversionError, convert

MIXER = FIXTURES / "masked_mixer" / "plain"


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def mosaics_folder(tmp_path) -> Path:
    """A folder that already holds another architecture's converted model."""
    from test_memory_mosaics_conversion import fixture, write_checkpoint

    state_dict, model_args, _ = fixture("default")
    convert("memory-mosaics", write_checkpoint(tmp_path / "run" / "ckpt.pt", state_dict, model_args),
            tmp_path / "model")
    return tmp_path / "model"


def test_a_folder_holding_another_model_is_refused_and_left_alone(mosaics_folder):
    before = listing(mosaics_folder)
    with pytest.raises(ConversionError, match=r"is not empty \(.*config\.json.*\).*--overwrite"):
        convert("masked-mixer", MIXER, mosaics_folder)
    assert listing(mosaics_folder) == before
    assert leftovers(mosaics_folder.parent) == []


def test_overwrite_replaces_the_whole_folder(mosaics_folder):
    convert("masked-mixer", MIXER, mosaics_folder, overwrite=True)
    names = {p.name for p in mosaics_folder.iterdir()}
    assert "modeling_masked_mixer.py" in names
    assert not any("mosaics" in name for name in names), names  # no code file of the old architecture stays behind
    assert leftovers(mosaics_folder.parent) == []


def test_a_failed_write_loses_nothing_and_leaves_nothing(mosaics_folder, monkeypatch):
    from memory_zoo import MaskedMixerForCausalLM

    before = listing(mosaics_folder)
    original = MaskedMixerForCausalLM.save_pretrained

    def save_then_fail(self, directory, *args, **kwargs):
        original(self, directory, *args, **kwargs)  # the files are written ...
        raise KeyboardInterrupt  # ... and the user interrupts before the end

    monkeypatch.setattr(MaskedMixerForCausalLM, "save_pretrained", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        convert("masked-mixer", MIXER, mosaics_folder, overwrite=True)
    assert listing(mosaics_folder) == before
    assert leftovers(mosaics_folder.parent) == []
    new = mosaics_folder.parent / "new"
    with pytest.raises(KeyboardInterrupt):
        convert("masked-mixer", MIXER, new)
    assert not new.exists() and leftovers(mosaics_folder.parent) == []


def test_the_output_may_not_hold_an_input_or_be_a_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes((MIXER / "model.safetensors").read_bytes())
    with pytest.raises(ConversionError, match="holds the input.*delete it"):
        convert("masked-mixer", run, tmp_path, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match="is a file"):
        convert("masked-mixer", MIXER, tmp_path / "file")
    convert("masked-mixer", MIXER, tmp_path / "empty")  # an existing empty folder is fine
    assert (tmp_path / "empty" / "config.json").exists()


def test_cli_refuses_a_non_empty_folder_in_one_line_and_overwrites_on_request(mosaics_folder):
    command = [sys.executable, "-m", "memory_zoo.cli", "convert", "masked-mixer", str(MIXER), str(mosaics_folder)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not empty" in lines[0] and "--overwrite" in lines[0], refused.stderr
    done = subprocess.run([*command, "--overwrite"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (mosaics_folder / "modeling_masked_mixer.py").exists()
