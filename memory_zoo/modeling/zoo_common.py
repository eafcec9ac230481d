"""The base class of every memory-zoo model: what each model class gets by subclassing it.

This file travels with every saved model (it is a sibling import of each ``modeling_*.py``), so it may only
import ``torch``/``transformers`` and sibling modules. The jobs it wires live in their own files: ``zoo_remote_code``
(the flat remote-code copies written on save), ``zoo_loading`` (strict loading), ``zoo_inputs`` (input checks),
``zoo_compat`` (both cache argument names) and ``zoo_forward`` (helpers of the forward passes).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from transformers import PreTrainedModel

from .zoo_compat import CACHE_NAME, CACHE_NAMES, accepts_every_cache_name
from .zoo_inputs import checks_model_inputs
from .zoo_loading import load_strictly
from .zoo_remote_code import export_remote_code
from .zoo_rollback import replays_rolled_back_tokens


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
    * A model with a cache of its own (``_cache_class``) gets it from ``generate`` up front, as transformers' models
      get a ``DynamicCache``, so that assisted and prompt-lookup decoding can record and crop it (``zoo_rollback``).
    """

    _auto_map_classes: dict[str, str] = {}
    # accelerate must not move the cache between devices, whichever name it travels under.
    _skip_keys_device_placement = list(CACHE_NAMES)
    # The cache class the model builds for itself from its config; None for transformers' DynamicCache.
    _cache_class: type | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = accepts_every_cache_name(checks_model_inputs(replays_rolled_back_tokens(cls.__dict__["forward"])))
        if "prepare_inputs_for_generation" in cls.__dict__:
            cls.prepare_inputs_for_generation = accepts_every_cache_name(cls.__dict__["prepare_inputs_for_generation"])

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate must not pre-build a DynamicCache for a model with a cache of its own (built below instead).
        return cls._cache_class is None and super()._supports_default_dynamic_cache()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs):
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if self._cache_class is None or generation_config.use_cache is False:
            return result
        if all(model_kwargs.get(name) is None for name in CACHE_NAMES):
            cache = self._cache_class(self.config)
            # An assistant's cache is cropped after every verification step (transformers marks its own likewise).
            if getattr(generation_config, "is_assistant", False):
                cache.activate_past_recording()
            model_kwargs[CACHE_NAME] = cache
        return result

    def _get_candidate_generator(self, generation_config, *args, **kwargs):
        generator = super()._get_candidate_generator(generation_config, *args, **kwargs)
        if type(generator).__name__ == "PromptLookupCandidateGenerator":
            # transformers' prompt lookup bounds its draft by the prompt's length, not by max_length - 1 (the target
            # model adds one token): drafts may then overrun a fixed context by a few tokens. Cut them to fit.
            propose, max_length = generator.get_candidates, generation_config.max_length

            def get_candidates(input_ids, *more, **options):
                candidates, logits = propose(input_ids, *more, **options)
                room = max(max_length - 1, input_ids.shape[1])
                if candidates.shape[1] > room:
                    candidates = candidates[:, :room]
                    logits = None if logits is None else logits[:, : room - input_ids.shape[1]]
                return candidates, logits

            generator.get_candidates = get_candidates
        return generator

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
        through ``memory_zoo.model_card.push_pretrained`` (weights, remote code, ``conversion.json``, model card),
        whose facts come from the architecture's record. Where only this file is present (remote code), the
        transformers behaviour is kept.
        """
        try:
            # Looked up at run time, not imported: this file also runs as remote code where memory-zoo is absent,
            # and an import statement of the package would make it a dependency of every saved model. model_card
            # sits below modeling (records and huggingface_hub only), so this is no import back up the layers.
            cards = importlib.import_module("memory_zoo.model_card")
        except ImportError:
            kwargs.pop("license", None)
            return super().push_to_hub(repo_id, *args, **kwargs)
        return cards.push_pretrained(self, repo_id, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        """transformers' ``from_pretrained``, refusing what it would let through silently (see ``zoo_loading``):
        another architecture's folder, missing or unexpected tensors unless ``strict=False``, mismatched shapes unless
        ``ignore_mismatched_sizes=True``; damaged files are named, NaN or infinite weights warned about."""
        return load_strictly(cls, super().from_pretrained, pretrained_model_name_or_path, *model_args, strict=strict,
                             **kwargs)


__all__ = ["ZooPreTrainedModel"]
