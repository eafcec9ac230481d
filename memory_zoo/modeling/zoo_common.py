"""Plumbing shared by every memory-zoo model: remote-code export and strict checkpoint loading.

This file travels with every saved model (it is a sibling import of each ``modeling_*.py``), so it may only
import ``torch``/``transformers`` and sibling modules.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging

from .zoo_compat import CACHE_NAMES, accepts_every_cache_name
from .zoo_inputs import checks_model_inputs

logger = logging.get_logger(__name__)

# `from .x import y` / `from ..pkg.x import y`: the only imports of our own code a model file may use.
_RELATIVE_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from[ \t]+(?P<dots>\.+)(?P<module>[\w.]*)[ \t]+import\b", re.MULTILINE)


class CheckpointMismatchError(ValueError):
    """Raised when a checkpoint's tensors do not fit the model built from its config."""


def _resolve_relative(source: Path, dots: str, module: str) -> Path:
    if not module:
        raise ValueError(
            f"{source}: `from {dots} import ...` cannot be exported as remote code (transformers only copies "
            "`from .module import name` siblings); import from the module instead."
        )
    base = source.parent
    for _ in range(len(dots) - 1):
        base = base.parent
    return base.joinpath(*module.split(".")).with_suffix(".py")


def flatten_source(source: Path) -> tuple[str, list[Path]]:
    """Return ``source``'s text with every relative import rewritten to a sibling import, and the files it needs.

    The rewrite is purely mechanical (`from ..configuration.configuration_x import A` becomes
    `from .configuration_x import A`); every other line is kept byte for byte.
    """
    text = source.read_text(encoding="utf-8")
    needed: list[Path] = []

    def rewrite(match: re.Match) -> str:
        target = _resolve_relative(source, match["dots"], match["module"])
        if not target.is_file():
            raise FileNotFoundError(f"{source} imports {match['dots']}{match['module']}, but {target} does not exist.")
        needed.append(target)
        return f"{match['indent']}from .{target.stem} import"

    return _RELATIVE_IMPORT.sub(rewrite, text), needed


def export_remote_code(module_files: list[Path], output_dir: str | os.PathLike) -> list[Path]:
    """Write the flat, self-contained remote-code files for ``module_files`` (and what they import) to ``output_dir``.

    transformers only follows sibling imports when it copies and loads custom code, so the package's nested layout
    (``memory_zoo/configuration``, ``memory_zoo/modeling``, ...) is flattened here. Basenames must be unique.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pending = [Path(f).resolve() for f in module_files]
    written: dict[str, Path] = {}
    while pending:
        source = pending.pop()
        if source.name in written:
            if written[source.name] != source:
                raise ValueError(f"Two remote-code files share the basename {source.name}: {written[source.name]} and {source}.")
            continue
        written[source.name] = source
        text, needed = flatten_source(source)
        destination = output_dir / source.name
        if destination.resolve() != source:
            destination.write_text(text, encoding="utf-8")
        pending.extend(p.resolve() for p in needed)
    return [output_dir / name for name in sorted(written)]


class ZooPreTrainedModel(PreTrainedModel):
    """Base class of memory-zoo models.

    * ``save_pretrained`` (and therefore ``push_to_hub``) writes the model's code as flat remote-code files next
      to the weights and fills ``auto_map``, so the folder loads with ``trust_remote_code=True`` where memory-zoo
      is not installed. ``_auto_map_classes`` maps Auto class names to class names of the same modeling module.
    * ``from_pretrained`` refuses another architecture's folder and checkpoints whose tensors do not match the
      config instead of silently initialising the missing ones (``strict=False`` and ``ignore_mismatched_sizes=True``
      get the transformers behaviour back), and warns about NaN or infinite weights.
    * Every subclass's ``forward`` and ``prepare_inputs_for_generation`` take the cache as ``cache`` and also as
      ``past_key_values``/``cache_params``, so ``generate`` works under both transformers conventions (see
      ``zoo_compat``), and every ``forward`` checks its token ids, mask and labels first (see ``zoo_inputs``).
    """

    _auto_map_classes: dict[str, str] = {}
    # accelerate must not move the cache between devices, whichever name it travels under.
    _skip_keys_device_placement = list(CACHE_NAMES)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = accepts_every_cache_name(checks_model_inputs(cls.__dict__["forward"]))
        if "prepare_inputs_for_generation" in cls.__dict__:
            cls.prepare_inputs_for_generation = accepts_every_cache_name(cls.__dict__["prepare_inputs_for_generation"])

    @classmethod
    def _remote_code_files(cls) -> list[Path]:
        return [Path(sys.modules[cls.__module__].__file__), Path(sys.modules[cls.config_class.__module__].__file__)]

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether activation checkpointing is on, under the name transformers < 5.23 used (later releases warn on
        it; PEFT, and so every LoRA set-up, still reads it). The same test transformers makes, without the warning."""
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        modeling_module = type(self).__module__.rsplit(".", 1)[-1]
        config_module = self.config_class.__module__.rsplit(".", 1)[-1]
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map["AutoConfig"] = f"{config_module}.{self.config_class.__name__}"
        auto_map.update({auto: f"{modeling_module}.{name}" for auto, name in self._auto_map_classes.items()})
        self.config.auto_map = auto_map
        result = super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = kwargs.get("is_main_process", True)
        if is_main_process and not os.path.isfile(save_directory):
            export_remote_code(self._remote_code_files(), save_directory)
        return result

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """transformers' ``push_to_hub`` (same arguments, plus ``license``), publishing memory-zoo's model card.

        transformers would replace README.md by its generic template; with memory-zoo installed the upload goes
        through ``memory_zoo.hub.push_pretrained`` (weights, remote code, ``conversion.json``, model card). Where
        only this file is present (remote code), the transformers behaviour is kept.
        """
        try:
            # Looked up at run time, not imported: this file also runs as remote code where memory-zoo is absent,
            # and an import statement of the package would make it a dependency of every saved model.
            hub = importlib.import_module("memory_zoo.hub")
        except ImportError:
            kwargs.pop("license", None)
            return super().push_to_hub(repo_id, *args, **kwargs)
        return hub.push_pretrained(self, repo_id, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """transformers' ``from_pretrained``, refusing what it would let through silently.

        * A folder saved by another architecture is refused before anything is built, naming both architectures.
        * With ``strict=True`` (the default) missing or unexpected tensors are an error listing them; ``strict=False``
          initialises missing tensors randomly and ignores unexpected ones, as transformers does.
        * Tensors whose shape differs from the model's are an error unless ``ignore_mismatched_sizes=True``
          (transformers' own flag), which re-initialises them.
        * Weights holding NaN or infinite values load, with a warning naming the tensors.
        """
        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        if not isinstance(kwargs.get("config"), PretrainedConfig):
            _refuse_other_architecture(cls, pretrained_model_name_or_path, kwargs)
        # Let transformers finish loading so that every problem can be reported at once, in our own words.
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, ignore_mismatched_sizes=True,
                **kwargs,
            )
        except Exception as error:
            if type(error).__name__ != "SafetensorError":  # safetensors' own error type, without importing it here
                raise
            raise _damaged_weights(pretrained_model_name_or_path, error) from error
        mismatched = [] if allow_mismatch else [
            f"{key} (checkpoint {tuple(saved)} vs model {tuple(built)})" if isinstance(key, str) else str(key)
            for key, saved, built in (_mismatch(entry) for entry in info.get("mismatched_keys") or [])
        ]
        problems = {"mismatched_keys": sorted(mismatched)}
        if strict:
            problems["missing_keys"] = sorted(info.get("missing_keys") or [])
            problems["unexpected_keys"] = sorted(info.get("unexpected_keys") or [])
        if any(problems.values()):
            lines = [f"The checkpoint at {pretrained_model_name_or_path!s} does not match {cls.__name__} built from its config:"]
            for key, values in problems.items():
                if values:
                    shown = ", ".join(str(v) for v in values[:20]) + (" ..." if len(values) > 20 else "")
                    lines.append(f"  {key.replace('_', ' ')} ({len(values)}): {shown}")
            fixes = ["Check that config.json belongs to these weights (research checkpoints must go through "
                     "`memory-zoo convert` first)"]
            if problems.get("missing_keys") or problems.get("unexpected_keys"):
                fixes.append("pass strict=False to initialise missing tensors randomly and ignore unexpected ones")
            if problems["mismatched_keys"]:
                fixes.append("pass ignore_mismatched_sizes=True to initialise the mismatched tensors randomly")
            lines.append(", or ".join(fixes) + ".")
            raise CheckpointMismatchError("\n".join(lines))
        warn_non_finite(model, f"the weights of {pretrained_model_name_or_path}")
        return (model, info) if want_info else model


def non_finite_tensors(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinite value (meta tensors are skipped)."""
    return [name for name, tensor in tensors
            if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())]


def warn_non_finite(model: nn.Module, where: str) -> list[str]:
    """Log a warning naming every parameter or buffer of `model` that holds NaN or infinite values."""
    bad = non_finite_tensors(chain(model.named_parameters(), model.named_buffers()))
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        logger.warning(
            f"{len(bad)} tensor(s) of {where} hold NaN or infinite values ({shown}); every output that reads them "
            "will be NaN. The checkpoint was saved after training diverged or was damaged: use an earlier one."
        )
    return bad


def _refuse_other_architecture(cls: type, location, kwargs: dict) -> None:
    """Raise a ValueError when the folder or repository at `location` holds another architecture's model."""
    hub_kwargs = {key: kwargs[key] for key in ("cache_dir", "force_download", "local_files_only", "token", "revision",
                                               "subfolder", "proxies") if key in kwargs}
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(location, **hub_kwargs)
    except (OSError, ValueError):
        return  # transformers reports a missing or unreadable config in its own words just after
    found, expected = config_dict.get("model_type"), cls.config_class.model_type
    if found and expected and found != expected:
        raise ValueError(
            f"{location} holds a {found!r} model, but {cls.__name__} builds {expected!r} models: its weights cannot "
            f"be loaded into this architecture. Load it with AutoModelForCausalLM.from_pretrained({str(location)!r}) "
            f"(or AutoModel), which picks the class named in its config.json."
        )


def embed_inputs(
    embeddings: nn.Embedding, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None
) -> torch.Tensor:
    """`inputs_embeds`, or the embeddings of `input_ids [batch, seq_len]`; exactly one of them must be given."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if inputs_embeds is not None:
        return inputs_embeds
    return embeddings(input_ids)  # their shape, dtype and range were checked on entry (zoo_inputs)


def resolve_cache(model: PreTrainedModel, cache, use_cache: bool | None, cache_class: type, state: str):
    """The cache a forward pass uses: `None` without caching, else `cache` or a new `cache_class(config)`.

    Caching is off during training with gradient checkpointing. A cache of another class is refused (`state` says
    what it could not hold), since silently starting over would drop the model's memory.
    """
    use_cache = use_cache if use_cache is not None else model.config.use_cache
    if getattr(model, "gradient_checkpointing", False) and model.training:
        use_cache = False
    if cache is not None and not isinstance(cache, cache_class):
        raise TypeError(
            f"{type(model).__name__} needs a {cache_class.__name__}, got {type(cache).__name__}: a key/value "
            f"cache cannot hold {state}. Pass cache=None (a {cache_class.__name__} is created) or reuse the "
            "cache returned by a previous call."
        )
    if not use_cache:
        return None
    return cache if cache is not None else cache_class(model.config)


def kept_positions(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The hidden states logits are computed for: the last `logits_to_keep` positions (0 = all), or given indices."""
    keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return hidden_states[:, keep, :]


def _damaged_weights(location, error: Exception) -> OSError:
    """The error for weights safetensors cannot read, naming the damaged file where it is on this disk."""
    folder = Path(location)
    damaged = None
    if folder.is_dir():
        from safetensors import safe_open

        for file in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(file), framework="pt"):
                    pass
            except Exception:
                damaged = file
                break
    where = damaged or f"the weights of {location}"
    fix = ("copy or download it again" if damaged else
           "download them again (from_pretrained(..., force_download=True)) or copy them again")
    return OSError(f"Could not read {where}: {error}. The file is damaged or incomplete (an interrupted download or "
                   f"copy): {fix}.")


def _mismatch(entry) -> tuple:
    """transformers reports a size mismatch as (key, checkpoint shape, model shape)."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        return tuple(entry)
    return entry, (), ()
