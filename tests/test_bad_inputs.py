"""Bad input of every kind a user or a stranger's checkpoint can bring, refused with the exact error class and a
message that names the problem and the fix.

Categories (model inputs are covered per architecture by `test_contract.py::test_bad_inputs_are_refused_with_the_fix`,
pickles by `test_hostile_checkpoints.py`):

* config fields: a wrong type (string booleans, strings for numbers, floats for sizes) or a value out of range
  (sizes < 1, epsilons and bases <= 0, dropouts outside [0, 1), unknown choices), for every field of every config,
  derived from the fields themselves, at construction and at `from_pretrained` of an edited `config.json`;
* config relations and nested Llama configs (divisibility, positions, impossible stack sizes);
* files: another architecture's folder, mismatched shapes with `strict=False`, NaN weights at load and at
  conversion, tensors of the wrong shape at conversion, a tokenizer path that does not exist;
* the command line: every user error is one line on stderr with status 2, a bug keeps its traceback.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import fields
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import printed_warnings, train_tokenizer
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from safetensors.torch import load_file, save_file
from test_contract import CAUSAL_LMS, build
from test_memory_layers_conversion import fixture, write_checkpoint
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig

import memory_zoo
from memory_zoo import cli
from memory_zoo.configuration.zoo_config import OtherArchitectureError
from memory_zoo.conversion import ConversionError, convert
from memory_zoo.modeling.zoo_loading import CheckpointMismatchError

CONFIG_CLASSES = sorted({config for config, *_ in memory_zoo.ARCHITECTURES} | {config for config, _ in memory_zoo.TASK_MODELS},
                        key=lambda c: c.__name__)
BASE_FIELDS = {f.name for f in fields(PretrainedConfig)}

# Bad values per field validator (the name of the function declared with the field in zoo_config).
BAD_BY_VALIDATOR = {
    "positive": [0, -1],
    "non_negative": [-1],
    "positive_number": [0, -1e-5, math.nan, math.inf],
    "finite_number": [math.nan, -math.inf],
    "dropout": [1.0, -0.1],
    "std": [-0.02, math.nan],
    "activation": ["not_an_activation"],
}
# Fields that take any value of their type, and why.
FREE_FIELDS = {
    "pad_token_id": "special token ids are checked by transformers (it warns on ids outside the vocabulary)",
    "bos_token_id": "as pad_token_id",
    "eos_token_id": "as pad_token_id",
    "memory_position": "a negative position whose range depends on another field: checked by a validate_ method",
    "memory_v_dim": "the research -1 means 'the model width'; any value <= 0 is normalised to None",
    "memory_layers": "block indices, checked against num_hidden_layers by validate_memory",
    "encoder_config": "a Llama config, checked field by field by validate_stacks",
    "decoder_config": "as encoder_config",
    "pooler_config": "the research pooler dict, checked key by key by validate_pooler",
    "kernel_repo_id": "any Hub repository id",
    "kernel_revision": "any branch, tag or commit",
}


def own_fields(config_class):
    return [f for f in fields(config_class) if f.name not in BASE_FIELDS]


def validator_name(field) -> str | None:
    validators = field.metadata.get("validator") or []
    return validators[0].__name__ if validators else None


def bad_values(field) -> list:
    """Values of the wrong type, then values of the right type out of range."""
    args = set(typing.get_args(field.type)) or {field.type}
    literal = [a for a in args if typing.get_origin(a) is typing.Literal] or (
        [field.type] if typing.get_origin(field.type) is typing.Literal else [])
    values = []
    if bool in args:
        values += ["false", 1]
    elif int in args:
        values += ["8", True] + ([2.5] if float not in args else [])
    elif literal:
        values += ["nonsense"]
    elif str in args and validator_name(field) is None:
        values += [3]
    return values + BAD_BY_VALIDATOR.get(validator_name(field), [])


FIELD_CASES = [(config, f.name, value) for config in CONFIG_CLASSES for f in own_fields(config) for value in bad_values(f)]


def case_id(case) -> str:
    config, name, value = case
    return f"{config.__name__}.{name}={value!r}"


def test_every_field_of_every_config_is_checked():
    unchecked = [f"{config.__name__}.{f.name} ({f.type})" for config in CONFIG_CLASSES for f in own_fields(config)
                 if f.name not in FREE_FIELDS and validator_name(f) is None
                 and not {bool, str}.intersection(set(typing.get_args(f.type)) or {f.type})
                 and not any(typing.get_origin(t) is typing.Literal for t in (f.type, *typing.get_args(f.type)))]
    assert not unchecked, f"declare these fields with a validator from zoo_config, or list them in FREE_FIELDS: {unchecked}"
    assert len(FIELD_CASES) > 300


@pytest.mark.parametrize("case", FIELD_CASES, ids=case_id)
def test_bad_field_value_is_refused(case):
    config_class, name, value = case
    with pytest.raises(StrictDataclassFieldValidationError, match=rf"field '{name}'") as raised:
        config_class(**{name: value})
    assert any(word in str(raised.value) for word in ("expected", "must", "choose one of"))  # what it needs


@pytest.mark.parametrize("config_class", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_edited_config_json_is_refused_at_from_pretrained(config_class, tmp_path):
    config_class().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for f in own_fields(config_class):
        for value in bad_values(f)[:1] + bad_values(f)[-1:]:
            if isinstance(value, float) and not math.isfinite(value):
                continue  # JSON has no NaN or infinity (Python writes them, but other tools refuse the file)
            (tmp_path / "config.json").write_text(json.dumps({**saved, f.name: value}))
            with pytest.raises(StrictDataclassFieldValidationError, match=rf"field '{f.name}'"):
                AutoConfig.from_pretrained(tmp_path)


def llama(**settings) -> dict:
    return {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, **settings}


RELATION_CASES = [  # (config class name, arguments, error class, message)
    ("MaskedMixerConfig", {"num_mixing_heads": 2}, StrictDataclassClassValidationError, "needs mixing_head_dim"),
    ("MaskedMixerConfig", {"mixing_softmax": True, "mixing_expanded": True}, StrictDataclassClassValidationError,
     "cannot be combined"),
    ("MaskedMixerConfig", {"max_position_embeddings": 0}, StrictDataclassFieldValidationError, "must be >= 1"),
    ("MemoryMosaicsConfig", {"hidden_size": 30, "num_attention_heads": 4}, StrictDataclassClassValidationError,
     "divisible by num_attention_heads"),
    ("MemoryMosaicsConfig", {"layer_norm_eps": -1e-5}, StrictDataclassFieldValidationError, "finite number > 0"),
    ("MemoryLayersConfig", {"rope_theta": 0.0}, StrictDataclassFieldValidationError, "finite number > 0"),
    ("MemoryLayersConfig", {"num_hidden_layers": 2, "memory_layers": [0, 0]}, StrictDataclassClassValidationError,
     "distinct block indices"),
    ("LSWTConfig", {"rope_base_freq": -10.0}, StrictDataclassFieldValidationError, "finite number > 0"),
    ("LSWTConfig", {"pooler_config": {"embedding_dropout": 1.0}}, StrictDataclassClassValidationError,
     r"pooler_config.embedding_dropout must be a probability in \[0, 1\)"),
    ("MixerAutoencoderConfig", {"hidden_size": 16, "compression": 3}, StrictDataclassClassValidationError,
     "compression = 3 must divide hidden_size = 16"),
    ("MemoryMixerConfig", {"encoder_hidden_size": 18, "compression": 4}, StrictDataclassClassValidationError,
     "compression = 4 must divide encoder_hidden_size = 18"),
    ("VariableMemoryMixerConfig", {"encoder_hidden_size": 16, "encoder_num_mixing_heads": 3},
     StrictDataclassClassValidationError, "not divisible by encoder_num_mixing_heads"),
    ("MemoryMixerConfig", {"combination": "embedding", "tie_word_embeddings": True},
     StrictDataclassClassValidationError, "tie_word_embeddings needs combination='token'"),
    # nested Llama configs: sizes and constants LlamaConfig itself lets through
    ("VariableMemoryTransformerConfig", {"encoder_config": llama(hidden_size=0)}, StrictDataclassClassValidationError,
     r"encoder_config: hidden_size must be an integer >= 1"),
    ("VariableMemoryTransformerConfig", {"encoder_config": llama(), "decoder_config": llama(rms_norm_eps=0.0)},
     StrictDataclassClassValidationError, r"decoder_config: rms_norm_eps must be a finite number > 0"),
    ("VariableMemoryTransformerConfig", {"encoder_config": llama(intermediate_size=-4)},
     StrictDataclassClassValidationError, r"intermediate_size must be an integer >= 1"),
    ("VariableMemoryTransformerConfig", {"encoder_config": llama(attention_dropout=1.0)},
     StrictDataclassClassValidationError, r"attention_dropout must be a probability in \[0, 1\)"),
    ("VariableMemoryTransformerConfig", {"encoder_config": llama(num_key_value_heads=3)},
     StrictDataclassClassValidationError, r"multiple of num_key_value_heads"),
    ("TransformerAutoencoderConfig", {"encoder_config": llama(hidden_size=18)}, StrictDataclassFieldValidationError,
     r"encoder_config: .*not a multiple of the number of attention heads"),
    ("TransformerAutoencoderConfig", {"encoder_config": llama(num_hidden_layers=0)},
     StrictDataclassClassValidationError, r"num_hidden_layers must be an integer >= 1"),
    ("TransformerAutoencoderConfig", {"encoder_config": llama(), "decoder_config": LlamaConfig(
        hidden_size=16, num_attention_heads=4, num_hidden_layers=1, hidden_act="nope")},
     StrictDataclassClassValidationError, r"hidden_act 'nope' is not an activation"),
    ("RetrievalMixerConfig", {"num_slots": 1}, StrictDataclassClassValidationError, "at least 2"),
]


@pytest.mark.parametrize(("name", "arguments", "error", "message"), RELATION_CASES,
                         ids=[f"{c[0]}-{'-'.join(c[1])}" for c in RELATION_CASES])
def test_fields_that_do_not_fit_together_are_refused(name, arguments, error, message):
    with pytest.raises(error, match=f"(?s){message}"):
        getattr(memory_zoo, name)(**arguments)


def test_research_names_set_their_field_before_derived_defaults():
    config = memory_zoo.MemoryMosaicsConfig(n_embd=64, n_head=4)
    assert (config.hidden_size, config.num_attention_heads) == (64, 4)
    assert memory_zoo.LSWTConfig(d_model=64, n_heads=4, d_vocab=32).embedding_size == 32


# --- files ---------------------------------------------------------------------------------------------------------


def saved(architecture: str, folder: Path) -> Path:
    build(architecture).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_another_architectures_folder_is_refused_by_name(architecture, tmp_path):
    other = CAUSAL_LMS[(CAUSAL_LMS.index(architecture) + 1) % len(CAUSAL_LMS)]
    folder = saved(other, tmp_path)
    model_class = next(causal for config, _, causal in memory_zoo.ARCHITECTURES if config.model_type == architecture)
    with pytest.raises(ValueError, match=rf"holds a '{other}' model, but {model_class.__name__} builds "
                                         rf"'{architecture}' models.*AutoModelForCausalLM.from_pretrained"):
        model_class.from_pretrained(folder)
    # The config class refuses it too (transformers' own reader only warns), and at the same single read.
    reads = []
    original = PretrainedConfig._get_config_dict.__func__

    def counting(cls, *args, **kwargs):
        reads.append(args[0])
        return original(cls, *args, **kwargs)

    with mock.patch.object(PretrainedConfig, "_get_config_dict", classmethod(counting)):
        with pytest.raises(OtherArchitectureError, match=rf"holds a '{other}' model"):
            model_class.config_class.from_pretrained(folder)
        assert len(reads) == 1
        model_class.from_pretrained(saved(architecture, tmp_path / "own"))
        assert len(reads) == 2, "from_pretrained should read config.json once"


def test_strict_false_does_what_the_mismatch_message_says(tmp_path):
    folder = saved("masked_mixer", tmp_path)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if k.endswith("up_proj.weight"))
    weights[name] = torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])
    del weights[next(k for k in weights if k.endswith("down_proj.weight"))]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model_class = type(build("masked_mixer"))
    with pytest.raises(CheckpointMismatchError, match="(?s)mismatched keys.*missing keys.*pass strict=False.*"
                                                      "pass ignore_mismatched_sizes=True"):
        model_class.from_pretrained(folder)
    with pytest.raises(CheckpointMismatchError, match="(?s)mismatched keys.*ignore_mismatched_sizes=True") as raised:
        model_class.from_pretrained(folder, strict=False)
    assert "missing keys" not in str(raised.value)
    model = model_class.from_pretrained(folder, strict=False, ignore_mismatched_sizes=True)
    assert model.get_parameter(name).shape != weights[name].shape  # re-initialised at the model's own shape


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_non_finite_weights_load_with_a_warning_naming_them(architecture, tmp_path):
    folder = saved(architecture, tmp_path)
    weights = load_file(folder / "model.safetensors")
    name = sorted(k for k, v in weights.items() if v.is_floating_point() and v.dim() == 2)[0]
    weights[name] = torch.full_like(weights[name], math.nan)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with printed_warnings() as printed:
        AutoModelForCausalLM.from_pretrained(folder)
    assert any("NaN or infinite" in line and name in line for line in printed), printed


def research_checkpoint(tmp_path: Path, poison=None) -> Path:
    weights, _, _ = fixture("pk_plain")
    weights = dict(weights)
    if poison is not None:
        poison(weights)
    return write_checkpoint(tmp_path / "research", "pk_plain", "pth_file", weights)


def test_non_finite_weights_are_refused_at_conversion_unless_allowed(tmp_path):
    def poison(weights):
        name = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() == 2)
        weights[name] = weights[name].clone()
        weights[name][0, 0] = math.inf

    checkpoint = research_checkpoint(tmp_path, poison)
    with pytest.raises(ConversionError, match=r"1 tensor\(s\) hold NaN or infinite values .*--allow-non-finite"):
        convert("memory-layers", checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with printed_warnings(("memory_zoo",)) as printed:
        convert("memory-layers", checkpoint, tmp_path / "out", allow_non_finite=True)
    assert any("converted anyway" in line for line in printed)


def test_a_tensor_of_the_wrong_shape_is_refused_at_conversion(tmp_path):
    def reshape(weights):
        name = next(k for k, v in weights.items() if k.endswith("feed_forward.w1.weight"))
        weights[name] = torch.zeros(weights[name].shape[0] - 1, weights[name].shape[1])

    with pytest.raises(ConversionError, match=r"(?s)do not have the shape|does not have the shape.*--config"):
        convert("memory-layers", research_checkpoint(tmp_path, reshape), tmp_path / "out")


@pytest.mark.parametrize("tokenizer", ["missing_tokenizer_dir", "./missing", "/definitely/not/here"])
def test_a_tokenizer_path_that_does_not_exist_is_named(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "missing_tokenizer_dir").mkdir()  # exists, but holds no tokenizer
    with pytest.raises(ValueError, match=r"has no tokenizer|does not exist"):
        convert("memory-layers", research_checkpoint(tmp_path), tmp_path / "out", tokenizer=tokenizer)


# --- the command line ----------------------------------------------------------------------------------------------


def cli_cases(tmp_path: Path) -> dict[str, list[str]]:
    bare = saved("masked_mixer", tmp_path / "bare")
    model = saved("masked_mixer", tmp_path / "model")
    train_tokenizer().save_pretrained(model)
    nan = research_checkpoint(tmp_path / "nan", lambda w: w.__setitem__(
        "tok_embeddings.weight", torch.full_like(w["tok_embeddings.weight"], math.nan)))
    good = research_checkpoint(tmp_path / "good")
    (tmp_path / "bad_config.json").write_text('{"dim": "wide"')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("important")
    edited = saved("memory_mosaics", tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 0}))
    return {
        "unknown source": ["convert", "no-such-source", str(good), str(tmp_path / "o1")],
        "missing checkpoint": ["convert", "memory-layers", str(tmp_path / "nothing.pt"), str(tmp_path / "o2")],
        "non-empty output": ["convert", "memory-layers", str(good), str(tmp_path / "full")],
        "non-finite weights": ["convert", "memory-layers", str(nan), str(tmp_path / "o3")],
        "broken research config": ["convert", "memory-layers", str(good), str(tmp_path / "o4"), "--config",
                                   str(tmp_path / "bad_config.json")],
        "missing tokenizer": ["convert", "memory-layers", str(good), str(tmp_path / "o5"), "--tokenizer",
                              str(tmp_path / "no_tokenizer")],
        "missing model": ["generate", str(tmp_path / "no_model"), "Hello"],
        "model without tokenizer": ["generate", str(bare), "Hello"],
        "missing tokenizer folder": ["generate", str(model), "Hello", "--tokenizer", str(tmp_path / "no_tokenizer")],
        "empty prompt": ["generate", str(model), ""],
        "prompt longer than the context": ["generate", str(model), "the " * 40],
        "edited config": ["generate", str(edited), "Hello", "--tokenizer", str(model)],
        "eval of a missing file": ["eval", str(model), str(tmp_path / "no_text.txt")],
    }


def test_every_user_error_is_one_line_with_status_2(tmp_path, capsys):
    cases = cli_cases(tmp_path)
    capsys.readouterr()  # the set-up's own output
    for name, argv in cases.items():
        try:
            status = cli.main(argv)
        except SystemExit as exit:  # argparse's own refusals
            status = exit.code
        err = capsys.readouterr().err.strip()
        assert status == 2, (name, err)
        assert len(err.splitlines()) == 1 and err.startswith(f"memory-zoo {argv[0]}: error: "), (name, err)
    assert (tmp_path / "full" / "keep.txt").read_text() == "important"


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a programming error")

    monkeypatch.setattr("memory_zoo.conversion.convert", broken)
    with pytest.raises(KeyError, match="a programming error"):
        cli.main(["convert", "memory-layers", str(tmp_path / "x.pt"), str(tmp_path / "out")])
