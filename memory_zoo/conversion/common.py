"""Helpers shared by the converters: reading research checkpoints and configs, reconciling hyperparameters."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..model_card import TOKENIZER_FILES

logger = logging.getLogger("memory_zoo.conversion")

# File names a research run may leave its weights under, in order of preference.
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "ckpt.pt")
# Folder the HF Trainer (accelerate) writes an FSDP SHARDED_STATE_DICT checkpoint to, inside checkpoint-<step>/.
FSDP_FOLDER = "pytorch_model_fsdp_0"
# Wrappers that prefix parameter names: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ConversionError(ValueError):
    """A research checkpoint or config that cannot be converted; the message says why and what to do."""


def find_checkpoint_file(path: str | os.PathLike) -> Path:
    """The weights of ``path``: the file itself, the first of ``CHECKPOINT_FILES`` inside a folder, or a
    torch.distributed.checkpoint folder (the folder itself, or the HF Trainer's FSDP ``pytorch_model_fsdp_0/``)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_FILES:
            if (path / name).is_file():
                return path / name
        for folder in (path, path / FSDP_FOLDER):
            if (folder / ".metadata").is_file():
                return folder
        raise ConversionError(
            f"{path} holds none of {', '.join(CHECKPOINT_FILES)} and no {FSDP_FOLDER}/ distributed checkpoint. Point "
            "CHECKPOINT at the research run's checkpoint folder (e.g. .../checkpoint-4000) or directly at its "
            "weights file."
        )
    if not path.is_file():
        raise ConversionError(f"Checkpoint {path} does not exist.")
    return path


def load_checkpoint(path: str | os.PathLike) -> object:
    """Read a research checkpoint file (safetensors, or a pickle through ``torch.load(weights_only=True)``) on the CPU.

    A pickle that needs anything beyond tensors and plain containers/numbers/strings is refused: unpickling it could
    run arbitrary code, and converting a checkpoint never needs that.
    """
    file = find_checkpoint_file(path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's weights-only loader refuses before anything runs; its message says what it met.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            raise _refusal(file, f"pickles {found[1]}, not only tensors and plain Python values") from None
        # An "unsupported operand" that is no pickle instruction at all means the bytes are not a pickle (damaged).
        operand = re.search(r"Unsupported operand (\d+)", str(error))
        a_pickle = operand is None or chr(int(operand[1])) in _PICKLE_OPCODES
        if a_pickle and "Weights only load failed" in str(error):
            reason = next((line.strip() for line in str(error).splitlines() if "Unsupported" in line
                           or "Trying to" in line or "Can only" in line), "it needs more than tensors")
            raise _refusal(file, f"needs more than tensors and plain values ({reason})") from None
        raise ConversionError(f"Could not read {file}: the file is damaged or not a checkpoint (torch could not "
                              "unpickle it); copy it again from the training run.") from None
    except Exception as error:  # safetensors and torch raise many types for damaged files
        raise ConversionError(
            f"Could not read {file}: {type(error).__name__}: {error}. The file is damaged or not a checkpoint; "
            "copy it again from the training run."
        ) from error


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (torch.compile) key prefixes."""
    cleaned = {}
    for key, tensor in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = tensor
    return cleaned


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load research weights on the CPU: safetensors, a pickled state dict (``weights_only=True``) or a
    torch.distributed.checkpoint folder (FSDP)."""
    file = find_checkpoint_file(path)
    if file.is_dir():
        return strip_wrapper_prefixes(read_distributed_checkpoint(file))
    state_dict = load_checkpoint(file)
    for wrapper in ("state_dict", "model"):  # {"model": state_dict} style training checkpoints
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{file} does not hold a flat state dict of tensors.")
    return strip_wrapper_prefixes(state_dict)


# Exactly the globals a torch.distributed.checkpoint `.metadata` pickle references (recorded on torch 2.13 from
# checkpoints with float, bfloat16, float16 and integer tensors and non-tensor items). Names are matched whole: a name
# with a dot would make pickle walk attributes from the module (`filesystem` imports `os`: "os.system" would reach
# it), so no module is admitted as a whole.
_METADATA_GLOBALS = frozenset({
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
})
_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format)
_PICKLE_OPCODES = frozenset(opcode.code for opcode in pickletools.opcodes)


class CheckpointRefused(ConversionError):
    """A checkpoint file was refused unread: loading it could have run code from the file. Nothing from it ran."""


def _refusal(file: Path, what: str) -> CheckpointRefused:
    return CheckpointRefused(
        f"Refused to read {file}: it {what}, which a checkpoint of tensors never needs, and unpickling it could run "
        "code from the file (nothing from it was run). Re-save it where it was trained, if you trust its origin, with "
        "plain tensors and values only (safetensors, or torch.save({'model': model.state_dict(), 'model_args': "
        "vars(args)})), and convert that."
    )


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles torch.distributed.checkpoint metadata and nothing else: exact (module, name) pairs from a list, torch
    dtype/layout/memory-format constants, no persistent ids. Everything else is refused before it is looked up."""

    def __init__(self, handle, file: Path):
        super().__init__(handle)
        self.file = file

    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and name.isidentifier() and isinstance(vars(torch).get(name), _TORCH_CONSTANTS):
            return vars(torch)[name]
        raise _refusal(self.file, f"references {module}.{name}")

    def persistent_load(self, pid):
        raise _refusal(self.file, "holds a persistent id (an external object reference)")


def read_distributed_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """The `model.*` tensors of a torch.distributed.checkpoint folder, prefix removed, read on the CPU.

    Both facebookresearch/memory step folders and accelerate's FSDP `pytorch_model_fsdp_0/` folders (HF Trainer with
    `SHARDED_STATE_DICT`) store `{"model": state_dict}` this way. The `.metadata` pickle goes through an unpickler that
    admits only checkpoint metadata types.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            file = Path(self.path) / ".metadata"
            with open(file, "rb") as handle:
                metadata = _MetadataUnpickler(handle, file).load()
            if not isinstance(metadata, Metadata):
                raise ConversionError(f"Could not read {file}: it holds a {type(metadata).__name__}, not checkpoint "
                                      "metadata. The distributed checkpoint is damaged or incomplete.")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    reader = SafeReader(str(folder))
    try:
        metadata = reader.read_metadata()
    except ConversionError:
        raise
    except Exception as error:
        raise ConversionError(f"Could not read {folder / '.metadata'}: {type(error).__name__}: {error}. The "
                              "distributed checkpoint is damaged or incomplete.") from error
    wanted = {key: item for key, item in metadata.state_dict_metadata.items()
              if key.startswith("model.") and isinstance(item, TensorStorageMetadata)}
    if not wanted:
        raise ConversionError(f"{folder} holds no `model.*` tensors: it is not a training checkpoint of this code.")
    state = {"model": {key[len("model."):]: torch.empty(item.size, dtype=item.properties.dtype)
                       for key, item in wanted.items()}}
    try:
        with warnings.catch_warnings():  # "no process group: loading in a single process" is exactly the intent
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=reader, planner=DefaultLoadPlanner(allow_partial_load=True))
    except Exception as error:
        raise ConversionError(f"Could not read the tensors of {folder}: {type(error).__name__}: {error}. A shard file "
                              "(__<rank>_0.distcp) is missing or damaged.") from error
    return state["model"]


def load_tokenizer(location: str | os.PathLike, model_dir: str | os.PathLike | None = None,
                   trust_remote_code: bool = False):
    """The tokenizer saved at `location` (a folder, or a Hub repository id), refused in words a user can act on:
    a folder without tokenizer files (converted research checkpoints carry none), a path that does not exist.
    `trust_remote_code` is passed on: AutoTokenizer reads the model's config first, and for an architecture that is
    not registered it would otherwise stop to ask whether to run the folder's code."""
    from transformers import AutoTokenizer

    path = Path(location)
    if path.is_dir():
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ValueError(f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}). Converted research "
                             "checkpoints carry none: pass --tokenizer DIR, or convert with --tokenizer.")
    elif path.exists():
        raise ValueError(f"The tokenizer location {path} is a file; pass the folder that holds it.")
    elif str(location).startswith((".", "/", "~")) or str(location).count("/") > 1 or os.sep in str(location).replace("/", ""):
        raise ValueError(f"The tokenizer folder {path} does not exist: check the path"
                         + (f", or leave --tokenizer out to use the one saved in {model_dir}." if model_dir else "."))
    try:
        return AutoTokenizer.from_pretrained(str(location), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        if path.is_dir():
            raise
        raise OSError(f"{location} is neither a folder on this machine nor a Hub repository with a tokenizer that "
                      f"could be loaded ({' '.join(str(error).split())}). Check the path or repository id.") from error


def check_output_folder(output_dir: Path, overwrite: bool, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output folder that is a file, that holds one of the ``inputs`` (replacing it would delete them), or
    that already holds files, unless ``overwrite``."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"{output_dir} is a file: choose a folder to write the converted model to.")
    target = output_dir.resolve()
    for given in inputs:
        if given is None or isinstance(given, dict):
            continue
        path = Path(given).resolve()
        if path == target or target in path.parents:
            raise ConversionError(f"The output folder {output_dir} holds the input {given}: replacing the folder would "
                                  "delete it. Write the converted model to another folder.")
    if output_dir.is_dir() and not overwrite:
        present = sorted(entry.name for entry in output_dir.iterdir())
        if present:
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise ConversionError(f"{output_dir} is not empty ({shown}): choose a new or empty folder, or pass "
                                  "--overwrite (overwrite=True) to replace its contents with the converted model.")


@contextmanager
def staged_folder(output_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``output_dir`` to write into, put in its place only when the block succeeds.

    A failed or interrupted write leaves ``output_dir`` as it was (absent, or with its old contents) and no temporary
    folder behind; on success the old contents are replaced whole, so no file of an earlier model stays beside the
    new ones.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.writing-", dir=output_dir.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if output_dir.exists():
        previous = staging.with_name(staging.name.replace(".writing-", ".replaced-"))
        output_dir.rename(previous)
    try:
        staging.rename(output_dir)
    except BaseException:
        if previous is not None:
            previous.rename(output_dir)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def read_json_object(path: str | os.PathLike, name: str | None = None) -> dict:
    """The JSON object in ``path``; errors name the file as ``name`` (default: the path)."""
    name = name or str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConversionError(f"{name} does not exist.") from None
    except json.JSONDecodeError as error:
        raise ConversionError(f"{name} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{name} must hold a JSON object, got {type(data).__name__}.")
    return data


def load_research_config(path: str | os.PathLike | None) -> dict:
    """The ``--config`` JSON object (research names as keys), or ``{}`` without one."""
    return {} if path is None else read_json_object(path, f"--config file {path}")


# Entries of a dumped research model description (see the fixture READMEs) that describe the run, not the model.
RESEARCH_DUMP_KEYS = frozenset({
    "research_repo", "research_commit", "module", "module_globals_read", "instance_attributes", "torch_version",
    "transformers_version", "attn_implementation", "dtype", "batch_size", "state_dict_keys", "n_parameters",
    "forward_call", "notes", "tied_groups", "verified_reload_bitwise", "expected_tensors",
})


def research_init_kwargs(research_config: dict) -> dict:
    """The research constructor arguments in ``--config``: the object itself, or its ``init_kwargs`` entry.

    The second form is a dump of a research model (class, constructor arguments, sub-models); its other entries
    are kept under their own names so converters can read sub-model descriptions.
    """
    if "init_kwargs" not in research_config:
        return dict(research_config)
    arguments = research_config["init_kwargs"]
    if not isinstance(arguments, dict):
        raise ConversionError(f"--config init_kwargs must be a JSON object, got {type(arguments).__name__}.")
    return {**{k: v for k, v in research_config.items() if k != "init_kwargs"}, **arguments}


def reconcile(research_config: dict, names: Iterable[str], from_checkpoint, what: str):
    """Check the ``--config`` values under ``names`` against the value the tensor shapes imply.

    Returns the checkpoint's value; raises a :class:`ConversionError` naming both sides on a contradiction.
    """
    for name in names:
        if name in research_config and research_config[name] != from_checkpoint:
            raise ConversionError(
                f"--config says {name}={research_config[name]!r}, but the checkpoint's tensors imply {what} = "
                f"{from_checkpoint!r}. Fix the config (or use the checkpoint that belongs to it)."
            )
    return from_checkpoint


def warn_unknown_keys(research_config: dict, known: Iterable[str], source: str) -> None:
    unknown = sorted(set(research_config) - set(known))
    if unknown:
        logger.warning("Ignoring --config keys that %s does not use: %s", source, ", ".join(unknown))


def take(state_dict: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """Pop a required tensor, with an error naming it when the checkpoint lacks it."""
    if key not in state_dict:
        raise ConversionError(f"The checkpoint has no tensor {key!r}; is it from the right SOURCE?")
    return state_dict.pop(key)


class TensorMapper:
    """Moves tensors from a research state dict (``source``, emptied as it goes) to ours (``target``).

    Whatever is left in ``source`` at the end was not understood, and a converter reports it.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.source = dict(state_dict)
        self.target: dict[str, torch.Tensor] = {}

    def move(self, old: str, new: str) -> torch.Tensor:
        tensor = take(self.source, old)
        self.target[new] = tensor
        return tensor

    def move_optional(self, old: str, new: str) -> bool:
        """Move ``old`` if the checkpoint has it (e.g. a bias); returns whether it did."""
        if old not in self.source:
            return False
        self.move(old, new)
        return True


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of a checkpoint folder (every file's relative path and bytes, in order)."""
    if Path(path).is_file():
        return file_sha256(Path(path))
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file_sha256(file).encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
