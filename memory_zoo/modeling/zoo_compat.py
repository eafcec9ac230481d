"""The generation cache under both of its names, on every supported transformers release.

transformers 5.24 renamed the cache a model takes and returns from ``past_key_values`` to ``cache`` (and
``cache_params`` likewise): ``generate`` passes ``cache=`` from 5.24 on and ``past_key_values=`` before, reads the
next cache from the output field of the same name, and answers the old names with a deprecation message. A forward
that reads only one of the names silently starts an empty cache at every step under the other convention.

memory-zoo models take the cache as ``cache`` and accept ``past_key_values``/``cache_params`` too
(``ZooPreTrainedModel`` wraps every ``forward`` and ``prepare_inputs_for_generation`` with
``accepts_every_cache_name``), and their outputs answer to ``.cache`` and ``.past_key_values`` alike, with no
deprecation message on any release. Everything that depends on the release is decided here, once, from what the
installed transformers declares, not from its version number. This file travels with every saved model.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

# The name this transformers uses for the cache, in model arguments and in output fields.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# Every name a caller may use for the cache: ours first.
CACHE_NAMES = ("cache", "past_key_values", "cache_params")
_OTHER_OUTPUT_NAME = "past_key_values" if CACHE_NAME == "cache" else "cache"

_Function = TypeVar("_Function", bound=Callable[..., Any])
_Output = TypeVar("_Output", bound=type)


def take_cache_argument(kwargs: dict[str, Any], name: str = "cache") -> dict[str, Any]:
    """Move the cache, under whichever name the caller used, to ``kwargs[name]`` (in place; returns ``kwargs``).

    Passing it under two names is refused rather than guessed: one of them would be silently dropped.
    """
    present = [key for key in CACHE_NAMES if key in kwargs]
    given = [key for key in present if kwargs[key] is not None]
    if len(given) > 1:
        raise ValueError(
            f"The cache was passed twice ({' and '.join(given)}); pass it once, as cache= (or past_key_values= in "
            "code written for transformers < 5.24)."
        )
    if present:
        value = kwargs[given[0]] if given else None
        for key in present:
            del kwargs[key]
        kwargs[name] = value
    return kwargs


def cache_argument(cache: Any) -> dict[str, Any]:
    """``{<this transformers' cache argument name>: cache}``, for calls into transformers' own layers and helpers."""
    return {CACHE_NAME: cache}


def accepts_every_cache_name(function: _Function) -> _Function:
    """Wrap a method whose cache parameter is ``cache`` so that it also takes ``past_key_values``/``cache_params``."""
    if getattr(function, "_accepts_every_cache_name", False):
        return function

    @functools.wraps(function)
    def wrapper(self, *args, **kwargs):
        if any(key in kwargs for key in CACHE_NAMES):
            take_cache_argument(kwargs)
        return function(self, *args, **kwargs)

    wrapper._accepts_every_cache_name = True
    wrapper.__signature__ = _with_every_cache_name(function)
    return wrapper  # type: ignore[return-value]


def _with_every_cache_name(function: Callable) -> inspect.Signature | None:
    """`function`'s signature with every cache name as a keyword: transformers < 5.24 checks the arguments it passes
    (e.g. to an assistant model's generate) against the signatures of `prepare_inputs_for_generation` and `forward`."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    present = {parameter.name for parameter in parameters}
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
             for name in CACHE_NAMES if name not in present]
    tail = [parameter for parameter in parameters if parameter.kind is inspect.Parameter.VAR_KEYWORD]
    head = [parameter for parameter in parameters if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=head + extra + tail)


def answers_to_every_cache_name(output_class: _Output) -> _Output:
    """Class decorator for a ``ModelOutput`` dataclass with a cache field: it is built with ``cache=`` (or
    ``past_key_values=``) and read as ``.cache`` or ``.past_key_values`` on every release, without a warning."""
    init = output_class.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **take_cache_argument(kwargs, CACHE_NAME))

    output_class.__init__ = __init__
    setattr(output_class, _OTHER_OUTPUT_NAME, property(
        lambda self: getattr(self, CACHE_NAME), doc="The cache, under its other name (see memory-zoo's zoo_compat)."
    ))
    return output_class


@answers_to_every_cache_name
@dataclass
class ZooModelOutput(BaseModelOutputWithPast):
    """``BaseModelOutputWithPast`` whose cache is ``.cache`` and ``.past_key_values`` on every transformers release."""


@answers_to_every_cache_name
@dataclass
class ZooCausalLMOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` whose cache is ``.cache`` and ``.past_key_values`` on every transformers release."""


__all__ = [
    "CACHE_NAME",
    "CACHE_NAMES",
    "ZooCausalLMOutput",
    "ZooModelOutput",
    "accepts_every_cache_name",
    "answers_to_every_cache_name",
    "cache_argument",
    "take_cache_argument",
]
