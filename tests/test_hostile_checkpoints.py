"""Checkpoints from strangers: no pickle trick runs code, and every refusal names the file and says what to do.

Each payload, if it ran, would create a marker file. They reach the two pickle readers of the converters: the
`.metadata` of a torch.distributed.checkpoint folder (our own restricted unpickler) and a `ckpt.pt` / `.pth` file
(torch's weights-only loader), through `convert(...)` and through the `memory-zoo convert` command line.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_memory_layers_conversion import write_checkpoint

from memory_zoo.conversion import CheckpointRefused, ConversionError, convert


def _text(value: str) -> bytes:
    """BINUNICODE (protocol >= 1): 4-byte length, UTF-8."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _short_text(value: str) -> bytes:
    """SHORT_BINUNICODE (protocol >= 4)."""
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data


def payloads(marker: Path) -> dict[str, bytes]:
    """Raw pickles that call a function with `marker` (or a shell command touching it) when unpickled."""
    command = f"touch {marker}"
    path = str(marker)
    return {
        # protocol 0: GLOBAL + REDUCE, the classic os.system
        "p0_global_os_system": f"cos\nsystem\n(V{command}\ntR.".encode(),
        # protocol 0: INST builds an "instance" by calling the global
        "p0_inst": f"(V{command}\nios\nsystem\n.".encode(),
        # protocol 1: OBJ
        "p1_obj": f"(cos\nsystem\nV{command}\no.".encode(),
        # a builtins lookup: builtins.exec of Python source
        "p2_builtins_exec": b"\x80\x02c__builtin__\nexec\n" + _text(f"open({path!r}, 'w').close()") + b"\x85R.",
        "p2_builtins_getattr": (b"\x80\x02cbuiltins\ngetattr\n" + b"cos\nsystem\n" + _text("__call__") + b"\x86R"
                                + _text(command) + b"\x85R."),
        # protocol 4: a dotted name walks attributes from an innocent-looking module (filesystem imports os)
        "p4_dotted_through_allowed_module": (b"\x80\x04" + _short_text("torch.distributed.checkpoint.filesystem")
                                             + _short_text("os.system") + b"\x93" + _short_text(command)
                                             + b"\x85R."),
        "p4_dotted_class_method": (b"\x80\x04" + _short_text("pathlib") + _short_text("Path.touch") + b"\x93"
                                   + _short_text("pathlib") + _short_text("PosixPath") + b"\x93"
                                   + _short_text(path) + b"\x85R\x85R."),
        "p5_stack_global_os_system": (b"\x80\x05" + _short_text("os") + _short_text("system") + b"\x93"
                                      + _short_text(command) + b"\x85R."),
        # persistent ids hand an object reference to the loader
        "p0_persistent_id": f"P{command}\n.".encode(),
        "p2_binpersid": b"\x80\x02" + _text(command) + b"Q.",
    }


class SetstateTrick:
    """An object whose __setstate__ would run when unpickled (BUILD)."""

    marker: Path | None = None

    def __setstate__(self, state):
        Path(state["marker"]).touch()


class ReduceTrick:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def dumped_objects(marker: Path) -> dict[str, bytes]:
    """What `pickle.dumps` writes for code-running objects, at every protocol."""
    trick = SetstateTrick.__new__(SetstateTrick)
    trick.__dict__["marker"] = str(marker)
    SetstateTrick.__reduce_ex__ = lambda self, protocol: (SetstateTrick, (), {"marker": self.marker})
    found = {}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        found[f"reduce_p{protocol}"] = pickle.dumps(ReduceTrick(marker), protocol=protocol)
        found[f"setstate_p{protocol}"] = pickle.dumps(trick, protocol=protocol)
    return found


def all_payloads(marker: Path) -> dict[str, bytes]:
    return {**payloads(marker), **dumped_objects(marker)}


PAYLOAD_NAMES = sorted(all_payloads(Path("/nonexistent")))


@pytest.fixture(scope="module")
def distributed_step(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("run"), "pk_plain", "distributed")


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_distributed_metadata_payloads_are_refused_unrun(name, distributed_step, tmp_path):
    marker = tmp_path / "pwned"
    original = (distributed_step / ".metadata").read_bytes()
    try:
        (distributed_step / ".metadata").write_bytes(all_payloads(marker)[name])
        with pytest.raises(ConversionError) as refusal:
            convert("memory-layers", distributed_step, tmp_path / "out")
    finally:
        (distributed_step / ".metadata").write_bytes(original)
    assert not marker.exists(), f"{name} ran code"
    message = str(refusal.value)
    assert str(distributed_step / ".metadata") in message
    assert isinstance(refusal.value, CheckpointRefused), message
    assert message.startswith("Refused to read") and "nothing from it was run" in message
    assert "Re-save it where it was trained" in message and "plain tensors" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_pickled_checkpoint_file_payloads_are_refused_unrun(name, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "run" / "ckpt.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(all_payloads(marker)[name])
    with pytest.raises(ConversionError) as refusal:
        convert("memory-mosaics", checkpoint, tmp_path / "out")
    assert not marker.exists(), f"{name} ran code"
    message = str(refusal.value)
    assert str(checkpoint) in message
    assert isinstance(refusal.value, CheckpointRefused), message  # torch's weights-only loader refused it
    assert message.startswith("Refused to read") and "nothing from it was run" in message


def test_bytes_that_are_no_pickle_are_called_damaged_not_refused(tmp_path):
    checkpoint = tmp_path / "run" / "ckpt.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="damaged or not a checkpoint") as error:
        convert("memory-mosaics", checkpoint, tmp_path / "out")
    assert not isinstance(error.value, CheckpointRefused) and str(checkpoint) in str(error.value)


def test_the_real_metadata_still_loads_and_a_legitimate_pickle_of_another_kind_is_damaged(distributed_step, tmp_path):
    model = convert("memory-layers", distributed_step, tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) > 0
    original = (distributed_step / ".metadata").read_bytes()
    try:
        (distributed_step / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
        with pytest.raises(ConversionError, match=r"holds a dict, not checkpoint metadata.*damaged or incomplete"):
            convert("memory-layers", distributed_step, tmp_path / "out2")
    finally:
        (distributed_step / ".metadata").write_bytes(original)


def test_torch_constants_are_admitted_by_exact_name_only(tmp_path):
    from memory_zoo.conversion.common import _MetadataUnpickler

    def load(data: bytes):
        import io

        return _MetadataUnpickler(io.BytesIO(data), tmp_path / ".metadata").load()

    assert load(b"\x80\x04" + _short_text("torch") + _short_text("bfloat16") + b"\x93.") is torch.bfloat16
    for name in ("float32.to", "serialization.os", "load", "_C"):
        with pytest.raises(CheckpointRefused, match=f"references torch.{name}"):
            load(b"\x80\x04" + _short_text("torch") + _short_text(name) + b"\x93.")


def test_cli_refusal_is_one_line_with_status_2_and_runs_nothing(distributed_step, tmp_path):
    marker = tmp_path / "pwned"
    original = (distributed_step / ".metadata").read_bytes()
    try:
        (distributed_step / ".metadata").write_bytes(payloads(marker)["p4_dotted_through_allowed_module"])
        result = subprocess.run([sys.executable, "-m", "memory_zoo.cli", "convert", "memory-layers",
                                 str(distributed_step), str(tmp_path / "out")], capture_output=True, text=True,
                                timeout=300)
    finally:
        (distributed_step / ".metadata").write_bytes(original)
    assert not marker.exists()
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("memory-zoo convert: error: Refused to read"), result.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_saved_weights_name_the_file_at_load(damage, tmp_path):
    from conftest import tiny_model, train_tokenizer
    from transformers import AutoModelForCausalLM

    tiny_model(vocab_size=128).save_pretrained(tmp_path)
    train_tokenizer(vocab_size=90).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"garbage" * 10)
    with pytest.raises(OSError, match=rf"Could not read {weights}: .*damaged or incomplete.*copy or download it again"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    result = subprocess.run([sys.executable, "-m", "memory_zoo.cli", "generate", str(tmp_path), "The quick"],
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and str(weights) in lines[0], result.stderr
