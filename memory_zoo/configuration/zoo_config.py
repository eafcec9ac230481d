"""What every memory-zoo config shares (travels with saved models as remote code): the `ZooConfig` base class and
the field validators its subclasses declare their fields with.

Configs are strict dataclasses, as transformers' own configs are since v5: every field is declared once, with its
type and, where a type is not enough, a validator. `huggingface_hub.dataclasses.strict` checks the type and the
validator on every assignment (so `mixing_expanded="false"` or `layer_norm_eps=0` is refused where it is written,
at construction and at `from_pretrained` of an edited `config.json` alike) and runs the `validate_*` methods, which
check how fields relate, once the config is built.
"""

import math

from huggingface_hub.dataclasses import as_validated_field
from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from .zoo_versions import SUPPORTED_RANGE  # noqa: F401  (the import refuses an unsupported transformers by name)

# Hub kernel repositories: one per kernel under memory_zoo/hub_kernels/ (its build.toml `repo-id` must agree; a test
# checks), published by `memory-zoo push-kernels`; models pin the major-version branch.
KERNEL_ORGANIZATION = "memory-zoo"
KERNEL_REVISION = "v1"

# Output keys the Trainer leaves out of evaluation logits: the cache, under its name before and since transformers 5.24.
KEYS_TO_IGNORE_AT_INFERENCE = ["cache", "past_key_values"]


def default_kernel_repo(name: str) -> str:
    """The default Hub repository of the kernel `memory_zoo/hub_kernels/<name>` (e.g. "memory-zoo/masked-mixing")."""
    return f"{KERNEL_ORGANIZATION}/{name.replace('_', '-')}"


# Field validators. The type annotation is checked first (an int field refuses bools and strings, a float field
# declared `int | float` refuses strings), so these only see values of the right type; None passes wherever the
# annotation allows it.


@as_validated_field
def positive(value: int | None) -> None:
    """A size or a count: an integer >= 1."""
    if value is not None and value < 1:
        raise ValueError(f"must be >= 1 (it is a size or a count), got {value!r}.")


@as_validated_field
def non_negative(value: int | None) -> None:
    """A count that may be zero."""
    if value is not None and value < 0:
        raise ValueError(f"must be >= 0, got {value!r}.")


@as_validated_field
def positive_number(value: float | None) -> None:
    """An epsilon, a rotary base, a scale or a learning rate: a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a finite number > 0, got {value!r}.")


@as_validated_field
def finite_number(value: float | None) -> None:
    """Any finite number."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}.")


@as_validated_field
def dropout(value: float | None) -> None:
    """A dropout probability, in [0, 1): 1 would drop everything."""
    if value is not None and not 0.0 <= value < 1.0:
        raise ValueError(f"must be a probability in [0, 1) (0 disables dropout), got {value!r}.")


@as_validated_field
def std(value: float | None) -> None:
    """The standard deviation of an initialisation: finite, >= 0."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"must be a finite standard deviation >= 0, got {value!r}.")


@as_validated_field
def activation(value: str) -> None:
    """The name of an activation transformers knows (`transformers.activations.ACT2FN`)."""
    if value not in ACT2FN:
        raise ValueError(f"unknown activation {value!r}; choose one of {sorted(ACT2FN)}.")


class OtherArchitectureError(ValueError):
    """A config.json written for another architecture (its `model_type` differs from the class reading it)."""

    def __init__(self, location, found: str, expected: str, reader: str) -> None:
        self.location, self.found, self.expected = location, found, expected
        super().__init__(
            f"{location} holds a {found!r} model, but {reader} builds {expected!r} models: its weights cannot be "
            f"loaded into this architecture. Load it with AutoModelForCausalLM.from_pretrained({str(location)!r}) "
            f"(or AutoModel, AutoConfig), which picks the class named in its config.json."
        )


class ZooConfig(PretrainedConfig):
    """Base of every memory-zoo configuration.

    Subclasses are `@strict` dataclasses (as transformers' own configs): fields declared once with their types and
    validators, derived defaults filled in by `_fill_defaults`, relations checked by `validate_*` methods. Research
    names listed in `attribute_map` are accepted as keyword arguments and set their field before derived defaults
    are computed, so `MemoryMosaicsConfig(n_embd=64)` is a 64-wide model in every respect.
    """

    keys_to_ignore_at_inference = KEYS_TO_IGNORE_AT_INFERENCE

    def __post_init__(self, **kwargs) -> None:
        for alias, name in type(self).attribute_map.items():
            if alias in kwargs:
                setattr(self, name, kwargs.pop(alias))
        self._fill_defaults()
        super().__post_init__(**kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        """transformers' reader, refusing another architecture's config.json where transformers only warns.

        The check sits here, where `from_pretrained` of the config and of every model reads config.json, so the
        file is read once; a composite config holding ours under a nested key is accepted, as transformers does.
        """
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        found, expected = config_dict.get("model_type"), cls.model_type
        nested = any(isinstance(value, dict) and value.get("model_type") == expected for value in config_dict.values())
        if found and expected and found != expected and not nested:
            raise OtherArchitectureError(pretrained_model_name_or_path, found, expected, cls.__name__)
        return config_dict, kwargs

    def _fill_defaults(self) -> None:
        """Fill the fields whose default depends on other fields (e.g. `intermediate_size = 4 * hidden_size`)."""

    def _require(self, condition: bool, message: str) -> None:
        """Raise a ValueError naming this config unless `condition` holds (for `validate_*` methods)."""
        if not condition:
            raise ValueError(f"{type(self).__name__}: {message}")


__all__ = [
    "KERNEL_ORGANIZATION",
    "KERNEL_REVISION",
    "KEYS_TO_IGNORE_AT_INFERENCE",
    "OtherArchitectureError",
    "ZooConfig",
    "activation",
    "default_kernel_repo",
    "dropout",
    "finite_number",
    "non_negative",
    "positive",
    "positive_number",
    "std",
]

