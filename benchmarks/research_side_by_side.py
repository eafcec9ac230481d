"""Side by side with the research implementations: decoding and training time and peak memory, same weights.

For every architecture whose research checkout is passed by path, the script builds the research model (imported from
that checkout at run time, never copied here) at a small random float32 config, converts its weights with memory-zoo's
own converter into our model, checks that both give the same logits, and then measures, alternating the two sides:

* decoding: a greedy continuation of `--new-tokens` tokens from a random prompt that fills the context (`--contexts`),
  the research side with what its code does to generate (its own `generate` where it has one, else a full re-run of
  the whole window per new token, as its inference script does), ours with `model.generate(use_cache=True)`; the
  tokens must be identical;
* training: forward + backward of one step at `--lengths` tokens (batch 1): time (median of `--repeats`) and peak
  memory (fresh worker process per cell, peak RSS high-water mark reset right before the step, see bench_common.py).

    python benchmarks/research_side_by_side.py --masked-mixers ~/src/maskedmixers \\
        --memory-mosaics ~/src/MemoryMosaics --memorymodels ~/src/memorymodels \\
        --lswt ~/src/memory-transformer-pt4 --memory-layers ~/src/memory
    python benchmarks/research_side_by_side.py --quick --masked-mixers ~/src/maskedmixers   # seconds; temp dir

Architectures without a path are skipped (and say so). The research checkouts are imported the way the fixture
generators of tests/fixtures/ import them (tests/fixtures/generator_common.py and the per-repository
generate_fixtures.py: stand-ins for unused packages, CPU in place of CUDA). Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# CPU only: some research modules choose their device once, at import, from torch.cuda.is_available() (see
# generator_common.hide_cuda), so CUDA is hidden before torch is first imported.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(HERE))
from bench_common import (  # noqa: E402
    RESULT_TAG,
    fmt_bytes,
    load_average,
    machine_info,
    mark_peak,
    read_peak,
    run_cell,
    run_worker,
)

del sys.path[0]
RESULTS = HERE / "results"
DEFAULT_OUTPUT = RESULTS / "research_side_by_side.json"

# Values used when a flag is not given; --quick swaps in the second set (flags given explicitly still win).
DEFAULTS = {"contexts": [256, 1024], "new_tokens": 32, "lengths": [512, 1024, 2048], "hidden_size": 256, "layers": 4,
            "vocab": 4096, "repeats": 3}
QUICK = {"contexts": [32, 64], "new_tokens": 4, "lengths": [64, 128], "hidden_size": 64, "layers": 2, "vocab": 512,
         "repeats": 1}


@dataclass(frozen=True)
class Architecture:
    """One research repository and the model of it that is compared."""

    key: str  # our name, used in the JSON
    option: str  # the command-line option that takes the checkout path
    repository: str
    title: str
    source: str  # the `memory-zoo convert` SOURCE whose converter is used


ARCHITECTURES = (
    Architecture("masked-mixer", "--masked-mixers", "blbadger/maskedmixers", "Masked Mixer", "masked-mixer"),
    Architecture("memory-mosaics", "--memory-mosaics", "facebookresearch/MemoryMosaics", "Memory Mosaics",
                 "memory-mosaics"),
    Architecture("variable-memory-mixer", "--memorymodels", "blbadger/memorymodels", "Variable-memory mixer",
                 "variable-memory-mixer"),
    Architecture("lswt", "--lswt", "Avelina9X/memory-transformer-pt4", "LSWT", "lswt"),
    Architecture("memory-layers", "--memory-layers", "facebookresearch/memory", "Memory Layers", "memory-layers"),
)
BY_KEY = {arch.key: arch for arch in ARCHITECTURES}


class Skip(Exception):
    """The research code of an architecture cannot run here; the message says why."""


# ------------------------------------------------------------------------------------------------ research imports


def _fixture_module(folder: str) -> types.ModuleType:
    """Import ``tests/fixtures/<folder>/generate_fixtures.py`` (the fixture generator of one research repository),
    whose functions know how to import and build that research code on the CPU. It is a script, not a package
    module, so it is loaded by path under a private name (registered first: its dataclasses look themselves up)."""
    name = f"_side_by_side_fixture_{folder}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FIXTURES / folder / "generate_fixtures.py")
    if spec is None or spec.loader is None:
        raise Skip(f"cannot load {FIXTURES / folder / 'generate_fixtures.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _generator_common() -> types.ModuleType:
    """tests/fixtures/generator_common.py, imported as the fixture generators import it."""
    sys.path.insert(0, str(FIXTURES))
    try:
        import generator_common
    finally:
        sys.path.remove(str(FIXTURES))
    return generator_common


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Research constructors and forwards print (shapes, flags); keep the worker's stdout for its result line."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _checked(call: Callable[[], Any]) -> Any:
    """Run a research import step; its SystemExit (wrong checkout, missing package) becomes a Skip with the text."""
    try:
        return call()
    except SystemExit as error:
        raise Skip(str(error)) from None
    except ImportError as error:
        raise Skip(f"the research code cannot be imported here: {type(error).__name__}: {error}") from None


def _our_model(source: str, config: Any, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Our model class for ``source`` (as `memory-zoo convert` picks it) loaded with a converted state dict."""
    from memory_zoo.conversion import SOURCES

    chooser = SOURCES[source][2]
    model_class = chooser(config)
    model = model_class(config)
    result = model.load_state_dict(state_dict, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [key for key in result.missing_keys if not (tied and key == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"converted weights do not fit {model_class.__name__}: missing {missing}, unexpected "
                           f"{result.unexpected_keys}")
    if tied:
        model.tie_weights()
    # Generation runs exactly `new_tokens` steps on both sides: no end-of-sequence stop (the research loops have none).
    model.generation_config.eos_token_id = None
    return model.float()


def _detached(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state dict that the converter may take apart without touching the model."""
    return {key: tensor.detach().clone() for key, tensor in model.state_dict().items()}


class Adapter:
    """How one architecture's research model is imported, built, converted, run and decoded.

    ``context`` is the sequence length a model is built for: the mixers' token-mixing matrices, Memory Mosaics'
    block size and the transformers' position range all depend on it, so each length gets its own model (from the
    same seed on both sides).
    """

    research_decoding = ""  # what the research side does to generate (recorded in the JSON)
    research_code = ""  # which research files / classes run
    notes: tuple[str, ...] = ()

    def __init__(self, path: Path, sizes: dict[str, int]) -> None:
        """``path``: the user's checkout; ``sizes``: hidden_size, layers, vocab, threads."""
        self.path = path
        self.sizes = sizes

    def load(self) -> None:
        """Import the research code (raise Skip when it cannot run here)."""

    def commit(self) -> str | None:
        """The commit of the research checkout (None when it is not a git checkout)."""
        return _generator_common().git(self.path, "rev-parse", "HEAD")

    def build_research(self, context: int, seed: int) -> torch.nn.Module:
        """The research model for sequences of ``context`` tokens, initialised under ``seed``."""
        raise NotImplementedError

    def convert(self, research: torch.nn.Module, context: int) -> torch.nn.Module:
        """Our model holding ``research``'s weights, converted by memory-zoo's converter."""
        raise NotImplementedError

    def research_logits(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """``[B, T, V]`` logits of the research model (eval, no grad)."""
        raise NotImplementedError

    def research_loss(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The training loss as the research code computes it for a batch of ``ids``."""
        raise NotImplementedError

    def research_generate(self, model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int,
                          context: int) -> torch.Tensor:
        """``[1, prompt + new_tokens]`` greedy tokens the research way."""
        raise NotImplementedError


def _window_greedy(logits_of: Callable[[torch.Tensor], torch.Tensor], prompt: torch.Tensor, new_tokens: int,
                   context: int, pad_id: int = 0) -> torch.Tensor:
    """Greedy decoding by re-running the whole right-padded ``[1, context]`` window per new token, reading the logits
    at the last filled position (blbadger/maskedmixers mixer_lm/inference.py; the mixers only take full windows, and
    their causal mixing makes the padding invisible to earlier positions). ``logits_of`` gives ``[1, T, V]``."""
    window = torch.full((1, context), pad_id, dtype=torch.long)
    filled = prompt.shape[1]
    window[:, :filled] = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            window[0, filled] = logits_of(window)[0, filled - 1].argmax()
            filled += 1
    return window[:, :filled]


class _MixerAdapter(Adapter):
    """blbadger's mixers (maskedmixers, memorymodels): the research forward returns ``(loss, logits [B, V, T])`` and
    there is no generation code, so decoding re-runs the right-padded window per new token."""

    def research_logits(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model(ids, labels=ids)[1].transpose(1, 2)  # the research output is [B, V, T]

    def research_loss(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model(ids, labels=ids)[0]

    def research_generate(self, model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int,
                          context: int) -> torch.Tensor:
        return _window_greedy(lambda window: self.research_logits(model, window), prompt, new_tokens, context)


class MaskedMixer(_MixerAdapter):
    """blbadger/maskedmixers: the causal ``LanguageMixer``."""

    research_decoding = ("full re-run of the right-padded context window per new token (mixer_lm/inference.py; the "
                         "research code has no generate)")
    research_code = "mixer_lm/mixer_trainer_tinystories.py LanguageMixer (flat token mixing, FFN x4)"

    def load(self) -> None:
        common = _generator_common()
        self.common = common
        self.root = _checked(lambda: common.prepare_maskedmixers(self.path))
        torch.set_num_threads(self.sizes["threads"])  # prepare_maskedmixers sets the fixtures' 2 threads

    def build_research(self, context: int, seed: int) -> torch.nn.Module:
        trainer = self.common.load_definitions(self.root / "mixer_lm" / "mixer_trainer_tinystories.py",
                                               {"device": "cpu", "tokenized_length": context})
        torch.manual_seed(seed)
        return trainer.LanguageMixer(self.sizes["vocab"], self.sizes["hidden_size"], self.sizes["layers"])

    def convert(self, research: torch.nn.Module, context: int) -> torch.nn.Module:
        from memory_zoo.conversion.masked_mixer import convert_masked_mixer_state_dict

        config, state_dict, _ = convert_masked_mixer_state_dict(_detached(research), "masked-mixer",
                                                                {"tokenized_length": context})
        return _our_model("masked-mixer", config, state_dict)

class MemoryMosaics(Adapter):
    """facebookresearch/MemoryMosaics: the Library's pure-torch ``StackAssoMem``."""

    research_decoding = "the research StackAssoMem.generate (top_k=1: greedy; a full forward per new token)"
    research_code = ("Library/memory_mosaics/models/memory_mosaics.py StackAssoMem, the pure-torch model, built by "
                     "train_memory_mosaics.py's own StackAssoMem(...) call and argparse defaults")
    notes = ("dropout 0 on both sides (ic_dropout = hd_dropout = 0): the same computation, and losses comparable",)

    def load(self) -> None:
        fixture = _checked(lambda: _fixture_module("memory_mosaics"))
        self.fixture = fixture
        self.library = _checked(lambda: fixture.check_checkout(self.path))
        self.research = _checked(lambda: fixture.import_research(self.library))

    def commit(self) -> str | None:
        """The commit of the checkout holding Library/."""
        return _generator_common().git(self.library, "rev-parse", "HEAD")

    def model_args(self, context: int) -> dict[str, Any]:
        """The training script's ``model_args`` (its own argparse defaults) for our sizes and block size ``context``."""
        hidden = self.sizes["hidden_size"]
        # research proportions: 64-channel heads, persistent memories of 3.5 x hidden slots
        cli = {"n_embd": hidden, "n_head": max(1, hidden // 64), "n_layer": self.sizes["layers"],
               "pmem_size": hidden * 7 // 2, "block_size": context, "ic_dropout": 0.0, "hd_dropout": 0.0}
        argv = [item for key, value in cli.items() for item in (f"--{key}", str(value))]
        args = vars(self.research.parser_factory().parse_args(argv))
        args["vocab_size"] = self.sizes["vocab"]  # the training script hard-codes 50304
        return args

    def build_research(self, context: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = self.fixture.construct(self.research, self.model_args(context), eft=False)
        model.config = types.SimpleNamespace(skip_tokens=0)  # the research forward reads it (set by its trainer)
        return model

    def convert(self, research: torch.nn.Module, context: int) -> torch.nn.Module:
        from memory_zoo.conversion.memory_mosaics import convert_memory_mosaics_state_dict

        config, state_dict, _ = convert_memory_mosaics_state_dict(_detached(research), "memory-mosaics",
                                                                  self.model_args(context))
        return _our_model("memory-mosaics", config, state_dict)

    def research_logits(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model(ids, logits_only=True)

    def research_loss(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        # the training script's targets: the next token (its data loader shifts by one); the last has none
        targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -1)], dim=1)
        return model(ids, targets)[1]

    def research_generate(self, model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int,
                          context: int) -> torch.Tensor:
        with torch.random.fork_rng():  # generate samples with torch.multinomial, certain here (top_k=1)
            return model.generate(prompt, max_new_tokens=new_tokens, top_k=1)[0]  # (tokens, None)


class VariableMemoryMixer(_MixerAdapter):
    """blbadger/memorymodels: ``VariableMemoryMixer``."""

    research_decoding = ("full re-run of the right-padded window per new token, as mixer_lm/inference.py does for the "
                         "Masked Mixer (memorymodels has no generation code for its mixers)")
    research_code = ("memorymodels/mixer_autoencoder.py VariableMemoryMixer (4 chunks of T/4 tokens, encoder half "
                     "as wide as the decoder, compression 1)")
    chunks = 4

    def load(self) -> None:
        common = _generator_common()
        self.common = common
        self.package = _checked(lambda: common.memorymodels_package(self.path, "mixer_autoencoder.py"))
        _checked(lambda: common.require_modules("einops"))
        with _quiet():
            self.module = _checked(lambda: common.import_memorymodels(self.package,
                                                                      ["mixer_autoencoder"])["mixer_autoencoder"])

    def commit(self) -> str | None:
        """The commit of the checkout holding memorymodels/."""
        return self.common.git(self.package, "rev-parse", "HEAD")

    def init_kwargs(self, context: int) -> dict[str, Any]:
        """``VariableMemoryMixer`` constructor arguments for a window of ``context`` tokens."""
        hidden = self.sizes["hidden_size"]
        return {"n_vocab": self.sizes["vocab"], "encoder_dim": max(2, hidden // 2), "dim": hidden,
                "depth": self.sizes["layers"], "length": context // self.chunks, "compression": 1, "n_heads": 0,
                "kernel": 1, "n_chunks": self.chunks}

    def build_research(self, context: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return self.module.VariableMemoryMixer(**self.init_kwargs(context))

    def convert(self, research: torch.nn.Module, context: int) -> torch.nn.Module:
        from memory_zoo.conversion.mixer_autoencoder import convert_variable_memory_state_dict

        config, state_dict, _ = convert_variable_memory_state_dict(_detached(research), self.init_kwargs(context))
        return _our_model("variable-memory-mixer", config, state_dict)

class LSWT(Adapter):
    """Avelina9X/memory-transformer-pt4: ``LSWTForCausalLM``."""

    research_decoding = ("greedy steps on the research model's own key/value cache (past_key_values), one token per "
                         "step: what its prepare_inputs_for_generation feeds HF generate")
    research_code = ("src/model/modeling.py LSWTForCausalLM with the research code's own CPU attention "
                     "(layers.sdpa_attention, used when flash-attn is absent)")
    notes = (
        "the research CPU attention scales scores by n_heads**-0.5 where flash-attn uses head_dim**-0.5; the config "
        "has n_heads = head_dim (16 heads of 16 channels at width 256), so both scales are the same and our model "
        "gives the same logits",
        "one segment per training step, without the previous segment's key/values (XL memory)",
    )

    def load(self) -> None:
        fixture = _checked(lambda: _fixture_module("lswt"))
        self.fixture = fixture
        with _quiet():
            self.checkout = _checked(lambda: fixture.check_checkout(self.path, fixture.HEAD_COMMIT))
        # not fixture.load_head: that swaps the attention for the fixtures' stand-in; here the research fallback runs
        self.research = _checked(lambda: fixture.import_research_package(self.checkout, "lswt_research_side_by_side"))

    def research_config(self, context: int) -> Any:
        """The research ``LSWTConfig`` for our sizes, positions up to ``context``, dropout 0."""
        hidden = self.sizes["hidden_size"]
        heads = max(1, round(hidden ** 0.5))  # n_heads = head_dim: see notes
        if heads * heads != hidden:
            raise Skip(f"--hidden-size {hidden} is not a square: the research CPU attention's scale (n_heads**-0.5) "
                       "only equals head_dim**-0.5 when n_heads = head_dim")
        dropouts = {name: 0.0 for name in ("dropout_att_mat", "dropout_att_out", "dropout_ffn_int", "dropout_ffn_out",
                                           "dropout_layers")}
        return self.research.configuration.LSWTConfig(
            vocab_size=self.sizes["vocab"], d_vocab=hidden, d_model=hidden, n_heads=heads,
            n_layers=self.sizes["layers"], d_ffn=4 * hidden, rope_positions=context, **dropouts)

    def build_research(self, context: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        with _quiet():
            return self.research.modeling.LSWTForCausalLM(self.research_config(context))

    def convert(self, research: torch.nn.Module, context: int) -> torch.nn.Module:
        from memory_zoo.conversion.lswt import convert_lswt_state_dict

        config, state_dict, _ = convert_lswt_state_dict(_detached(research), "lswt", research.config.to_dict())
        return _our_model("lswt", config, state_dict)

    def research_logits(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model(ids, past_key_values=None, use_cache=False).logits

    def research_loss(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        logits = model(ids, past_key_values=None, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    def research_generate(self, model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int,
                          context: int) -> torch.Tensor:
        # The research generate.py calls HF `generate`, written for transformers 4.41, whose legacy tuple caches
        # current transformers no longer pass through; the loop below is the step `prepare_inputs_for_generation`
        # sets up: the last token and the research cache, trimmed to `max_key_values` (= rope_positions).
        tokens = [prompt]
        with torch.no_grad():
            out = model(prompt, past_key_values=None, use_cache=True, max_key_values=context)
            for step in range(new_tokens):
                tokens.append(out.logits[:, -1].argmax(dim=-1, keepdim=True))
                if step + 1 < new_tokens:
                    out = model(tokens[-1], past_key_values=out.past_key_values, use_cache=True,
                                max_key_values=context)
        return torch.cat(tokens, dim=1)


class MemoryLayers(Adapter):
    """facebookresearch/memory: ``LMTransformer`` with a product-key memory layer."""

    research_decoding = ("the research apps/main/generate.py PackedCausalTransformerGenerator (its KV cache; prefill "
                         "with flex_attention), temperature 0")
    research_code = ("apps/main/transformer.py LMTransformer with one lingua/product_key/memory.py HashingMemory "
                     "(PK+, SwiLU projection) in the middle block")
    notes = (
        "research memory lookup on the CPU: the Triton xformers_embedding_bag is replaced by F.embedding_bag (the "
        "fixture generator's stand-in, tests/fixtures/memory_layers/generate_fixtures.py); xformers, wandb, "
        "sentencepiece and tiktoken are stand-ins that never run",
        "the research value table is made in bfloat16; both sides run it in float32 here",
        "training loss: the research forward's own cross-entropy against the next tokens",
    )

    def load(self) -> None:
        fixture = _checked(lambda: _fixture_module("memory_layers"))
        self.fixture = fixture
        self.checkout = _checked(lambda: fixture.check_checkout(self.path))
        self.research = _checked(lambda: fixture.import_research(self.checkout))
        # The research generator's prefill calls a torch.compile'd flex_attention. Compiled again for a second
        # context, it is compiled with dynamic shapes, and torch 2.13's CPU code for that fails to build
        # (CppCompileError: `cur_kvSplitSize7` undeclared); a static compile per context works.
        torch._dynamo.config.automatic_dynamic_shapes = False

    def params(self, context: int, seed: int) -> dict[str, Any]:
        """The parts of a research ``params.json`` that build the model (``seed`` and ``model``)."""
        hidden = self.sizes["hidden_size"]
        memory = {"is_enabled": True, "layers": str(self.sizes["layers"] // 2), "mem_n_keys": 256 if hidden >= 256
                  else 32, "mem_heads": 4, "mem_knn": 32 if hidden >= 256 else 8, "mem_k_dim": min(256, hidden),
                  "mem_v_dim": -1, "mem_share_values": False, "swilu_projection": True}
        return {"seed": seed, "model": {"dim": hidden, "n_layers": self.sizes["layers"],
                                        "n_heads": max(1, hidden // 64), "vocab_size": self.sizes["vocab"],
                                        "max_seqlen": context, "rope_theta": 10000.0, "productkey_args": memory}}

    def build_research(self, context: int, seed: int) -> torch.nn.Module:
        params = self.params(context, seed)
        model = self.fixture.build_model(self.research, params).float()
        model.side_by_side_params = params  # for convert
        return model

    def convert(self, research: torch.nn.Module, context: int) -> torch.nn.Module:
        from memory_zoo.conversion.memory_layers import convert_memory_layers_state_dict

        model_args = research.side_by_side_params["model"]
        config, converted, _ = convert_memory_layers_state_dict(_detached(research), "memory-layers", model_args)
        config.memory_value_dtype = "float32"
        return _our_model("memory-layers", config, converted)

    def research_logits(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model(ids)

    def research_loss(self, model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return model(ids[:, :-1], target=ids[:, 1:])

    def research_generate(self, model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int,
                          context: int) -> torch.Tensor:
        r = self.research

        class Tokenizer:
            """The research generator tokenizes strings; this one hands it the prompt ids and keeps its output."""

            eos_id = -1  # never generated: no early stop
            generated: list[int] = []

            def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
                return prompt[0].tolist()

            def decode(self, tokens: list[int]) -> str:
                self.generated = list(tokens)
                return ""

        tokenizer = Tokenizer()
        cfg = r.generate.PackedCausalTransformerGeneratorArgs(temperature=0.0, max_gen_len=new_tokens,
                                                              max_tokens=context, dtype="fp32", device="cpu")
        generator = r.generate.PackedCausalTransformerGenerator(cfg, model, tokenizer)
        with self.fixture.cuda_calls_are_noops():
            generator.generate([""])
        return torch.cat([prompt, torch.tensor([tokenizer.generated], dtype=torch.long)], dim=1)


ADAPTERS: dict[str, type[Adapter]] = {"masked-mixer": MaskedMixer, "memory-mosaics": MemoryMosaics,
                                      "variable-memory-mixer": VariableMemoryMixer, "lswt": LSWT,
                                      "memory-layers": MemoryLayers}


# ----------------------------------------------------------------------------------------------------- the workers


def _adapter(cell: dict) -> Adapter:
    """The loaded adapter of a worker cell (raises Skip when its research code cannot run here)."""
    adapter = ADAPTERS[cell["arch"]](Path(cell["path"]), {**cell["sizes"], "threads": cell.get("threads") or 1})
    adapter.load()
    return adapter


def _ours_generate(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Our greedy decoding with the model's cache, exactly ``new_tokens`` tokens."""
    return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          use_cache=True)


def _timed(call: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    """``(wall seconds, result)`` of ``call()``."""
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def measure_decoding(cell: dict) -> dict:
    """Worker: agreement check at every context, then research and ours decoding, alternating."""
    try:
        adapter = _adapter(cell)
    except Skip as reason:
        return {"status": f"skipped: {reason}"}
    result: dict[str, Any] = {"status": "ok", "research_commit": adapter.commit(), "agreement": [], "decoding": []}
    new_tokens, repeats, budget = cell["new_tokens"], cell["repeats"], cell["time_budget"]
    for context in cell["contexts"]:
        with _quiet():
            research = adapter.build_research(context, cell["seed"]).eval()
            ours = adapter.convert(research, context).eval()
        generator = torch.Generator().manual_seed(cell["seed"] + context)
        ids = torch.randint(0, cell["sizes"]["vocab"], (2, context), generator=generator)
        with torch.no_grad(), _quiet():
            expected = adapter.research_logits(research, ids).float()
            got = ours(ids).logits.float()
        gap = (expected - got).abs().max().item()
        scale = expected.abs().max().item()
        agree = bool(torch.allclose(got, expected, atol=1e-4, rtol=1e-4))
        result["agreement"].append({"context": context, "batch": 2, "max_abs_logit_diff": gap,
                                    "max_abs_logit": scale, "allclose_atol_rtol_1e-4": agree})

        prompt = torch.randint(0, cell["sizes"]["vocab"], (1, context - new_tokens), generator=generator)
        sides = {"research": functools.partial(adapter.research_generate, research, prompt, new_tokens, context),
                 "ours": functools.partial(_ours_generate, ours, prompt, new_tokens)}
        times: dict[str, list[float]] = {"research": [], "ours": []}
        tokens: dict[str, torch.Tensor] = {}
        identical = True
        with torch.inference_mode(), _quiet():
            warm = {}
            for side, call in sides.items():  # one warm-up call each (the research generator compiles its prefill)
                warm[side], tokens[side] = _timed(call)
            identical = torch.equal(tokens["research"], tokens["ours"])
            # A slow research side gets fewer timed calls, so that the default run stays short.
            count = min(repeats, max(1, int(budget // max(warm["research"], 1e-9))))
            for repeat in range(count):
                for side in (("research", "ours") if repeat % 2 == 0 else ("ours", "research")):
                    elapsed, out = _timed(sides[side])
                    times[side].append(elapsed)
                    identical = identical and torch.equal(out, tokens["research"])
        research_s, ours_s = statistics.median(times["research"]), statistics.median(times["ours"])
        result["decoding"].append({
            "context": context, "prompt_length": context - new_tokens, "new_tokens": new_tokens,
            "research_seconds": research_s, "ours_seconds": ours_s, "time_ratio": research_s / ours_s,
            "research_seconds_all": times["research"], "ours_seconds_all": times["ours"],
            "research_warmup_seconds": warm["research"], "ours_warmup_seconds": warm["ours"], "repeats": count,
            "tokens_identical": bool(identical),
            "generated_research": tokens["research"][0, context - new_tokens:].tolist(),
        })
        del research, ours
    return result


def measure_training(cell: dict) -> dict:
    """Worker: one side's forward + backward at one length; the first full-size step's peak memory, then timed steps."""
    try:
        adapter = _adapter(cell)
    except Skip as reason:
        return {"status": f"skipped: {reason}"}
    length = cell["length"]
    with _quiet():
        model = adapter.build_research(length, cell["seed"])
        if cell["side"] == "ours":
            model = adapter.convert(model, length)  # the research model is dropped here
    model.train()
    ids = torch.randint(0, cell["sizes"]["vocab"], (1, length + (1 if cell["arch"] == "memory-layers" else 0)),
                        generator=torch.Generator().manual_seed(cell["seed"] + length))

    def loss_of() -> torch.Tensor:
        """The side's training loss on ``ids`` (a fresh forward)."""
        if cell["side"] == "ours":
            if cell["arch"] == "memory-layers":  # as the research forward: `length` inputs, each next token a target
                logits = model(ids[:, :-1]).logits
                return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            return model(ids, labels=ids).loss
        return adapter.research_loss(model, ids)

    parameters = [p for p in model.parameters() if p.requires_grad]
    for parameter in parameters:  # gradients exist before the baseline: the peak is what the step itself adds
        parameter.grad = torch.zeros_like(parameter)
    method, baseline, maxrss_before = mark_peak(False)
    with _quiet():
        start = time.perf_counter()
        loss = loss_of()
        loss.backward()
        warmup = time.perf_counter() - start
    peak = read_peak(method)
    value = loss.item()
    del loss
    count = min(cell["repeats"], max(1, int(cell["time_budget"] // max(warmup, 1e-9))))
    seconds = []
    with _quiet():
        for _ in range(count):
            for parameter in parameters:
                parameter.grad.zero_()
            start = time.perf_counter()
            loss_of().backward()
            seconds.append(time.perf_counter() - start)
    return {"status": "ok", "seconds": statistics.median(seconds), "seconds_all": seconds, "warmup_seconds": warmup,
            "repeats": count, "peak_bytes": peak - baseline, "baseline_bytes": baseline, "peak_method": method,
            "loss": value, "parameters": sum(p.numel() for p in parameters)}


WORKERS = {"decoding": measure_decoding, "training": measure_training}


def worker_main(payload: str) -> int:
    """``--worker CELL``: measure one cell and print its result line for ``bench_common.run_cell``."""
    cell = json.loads(payload)
    result = run_worker(cell, WORKERS[cell["kind"]])
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# -------------------------------------------------------------------------------------------------------- the driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the default or --quick values filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for arch in ARCHITECTURES:
        parser.add_argument(arch.option, type=Path, default=None, metavar="PATH",
                            help=f"your checkout of {arch.repository} ({arch.title}); skipped without it")
    parser.add_argument("--only", nargs="+", choices=list(BY_KEY), default=None, metavar="ARCH",
                        help=f"run only these architectures (of: {', '.join(BY_KEY)})")
    parser.add_argument("--quick", action="store_true",
                        help=f"seconds-long smoke run ({QUICK}); writes to the temp dir unless --output is given")
    parser.add_argument("--contexts", type=int, nargs="+", default=None,
                        help=f"decoding contexts (prompt + new tokens; default {DEFAULTS['contexts']})")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help=f"tokens generated per call (default {DEFAULTS['new_tokens']})")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help=f"training sequence lengths T (default {DEFAULTS['lengths']})")
    parser.add_argument("--hidden-size", type=int, default=None, help=f"width (default {DEFAULTS['hidden_size']})")
    parser.add_argument("--layers", type=int, default=None, help=f"blocks (default {DEFAULTS['layers']})")
    parser.add_argument("--vocab", type=int, default=None, help=f"vocabulary size (default {DEFAULTS['vocab']})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per side and cell, median reported (default {DEFAULTS['repeats']})")
    parser.add_argument("--time-budget", type=float, default=20.0,
                        help="a cell whose warm-up took w seconds gets min(repeats, budget // w) timed calls "
                             "(default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    parser.add_argument("--worker-timeout", type=float, default=900.0, help="seconds per worker (default 900)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON path (default {DEFAULT_OUTPUT.relative_to(ROOT)}; --quick: the temp dir); the "
                             "PNG goes beside it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.output is None:
        args.output = (Path(tempfile.gettempdir()) / "research_side_by_side.json") if args.quick else DEFAULT_OUTPUT
    if any(c <= args.new_tokens for c in args.contexts):
        parser.error("every context must be longer than --new-tokens")
    return args


def _cell(args: argparse.Namespace, arch: Architecture, path: Path, kind: str, **extra: Any) -> dict:
    """The JSON-able description of one worker's job."""
    sizes = {"hidden_size": args.hidden_size, "layers": args.layers, "vocab": args.vocab}
    return {"kind": kind, "arch": arch.key, "path": str(path), "sizes": sizes, "seed": args.seed,
            "threads": args.threads, "repeats": args.repeats, "time_budget": args.time_budget, "device": "cpu",
            "worker_timeout": args.worker_timeout, **extra}


def run_architecture(args: argparse.Namespace, arch: Architecture, path: Path) -> dict:
    """Decoding (one worker) and training (one worker per side and length, the sides alternating)."""
    adapter = ADAPTERS[arch.key]
    entry: dict[str, Any] = {"title": arch.title, "repository": arch.repository, "path": str(path),
                             "research_code": adapter.research_code,
                             "research_decoding": adapter.research_decoding,
                             "ours_decoding": "model.generate(use_cache=True, do_sample=False)",
                             "notes": list(adapter.notes)}
    print(f"{arch.title}: decoding and agreement ...", flush=True)
    decoding = run_cell(_cell(args, arch, path, "decoding", contexts=args.contexts, new_tokens=args.new_tokens),
                        measure_decoding, __file__)
    if decoding["status"] != "ok":
        entry["status"] = decoding["status"]
        return entry
    entry.update(status="ok", research_commit=decoding["research_commit"], agreement=decoding["agreement"],
                 decoding=decoding["decoding"])
    training = []
    for index, length in enumerate(args.lengths):
        sides: dict[str, dict] = {}
        for side in (("research", "ours") if index % 2 == 0 else ("ours", "research")):
            print(f"{arch.title}: training T={length} {side} ...", flush=True)
            sides[side] = run_cell(_cell(args, arch, path, "training", side=side, length=length),
                                   measure_training, __file__)
        row: dict[str, Any] = {"length": length, "research": sides["research"], "ours": sides["ours"]}
        if sides["research"]["status"] == "ok" and sides["ours"]["status"] == "ok":
            row["time_ratio"] = sides["research"]["seconds"] / sides["ours"]["seconds"]
            row["peak_ratio"] = sides["research"]["peak_bytes"] / max(sides["ours"]["peak_bytes"], 1)
            row["loss_abs_diff"] = abs(sides["research"]["loss"] - sides["ours"]["loss"])
        training.append(row)
    entry["training"] = training
    return entry


def print_tables(results: dict) -> None:
    """The decoding and training tables on stdout, then what was skipped."""
    print("\ndecoding (greedy; research / ours time):")
    print(f"{'architecture':24} {'context':>7} {'new':>4} {'research s':>11} {'ours s':>9} {'ratio':>7} "
          f"{'tokens':>9} {'max|dlogit|':>12}")
    for key, entry in results["architectures"].items():
        if entry.get("status") != "ok":
            continue
        gaps = {row["context"]: row for row in entry["agreement"]}
        for row in entry["decoding"]:
            print(f"{BY_KEY[key].title:24} {row['context']:7d} {row['new_tokens']:4d} {row['research_seconds']:11.3f} "
                  f"{row['ours_seconds']:9.3f} {row['time_ratio']:6.1f}x "
                  f"{'identical' if row['tokens_identical'] else 'DIFFER':>9} "
                  f"{gaps[row['context']]['max_abs_logit_diff']:12.2e}")
    print("\ntraining (forward + backward, batch 1; research / ours):")
    print(f"{'architecture':24} {'T':>5} {'research s':>11} {'ours s':>9} {'time':>7} {'research peak':>14} "
          f"{'ours peak':>10} {'memory':>7} {'|dloss|':>8}")
    for key, entry in results["architectures"].items():
        for row in entry.get("training", []):
            research, ours = row["research"], row["ours"]
            if "time_ratio" not in row:
                print(f"{BY_KEY[key].title:24} {row['length']:5d} research: {research['status']}; ours: "
                      f"{ours['status']}")
                continue
            print(f"{BY_KEY[key].title:24} {row['length']:5d} {research['seconds']:11.3f} {ours['seconds']:9.3f} "
                  f"{row['time_ratio']:6.1f}x {fmt_bytes(research['peak_bytes']):>14} "
                  f"{fmt_bytes(ours['peak_bytes']):>10} {row['peak_ratio']:6.1f}x {row['loss_abs_diff']:8.1e}")
    for item in results["skipped"]:
        print(f"skipped {item['architecture']}: {item['reason']}")


def plot(results: dict, path: Path) -> None:
    """Three panels of research / ours ratios (decoding time, training time, training peak memory) to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    done = {key: entry for key, entry in results["architectures"].items() if entry.get("status") == "ok"}
    if not done:
        print("nothing was measured: no plot")
        return
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (("decoding", "context", "time_ratio", "decoding: research time / ours"),
              ("training", "length", "time_ratio", "training step: research time / ours"),
              ("training", "length", "peak_ratio", "training step: research peak memory / ours"))
    for axis, (part, column, ratio, title) in zip(axes, panels, strict=True):
        labels = sorted({row[column] for entry in done.values() for row in entry.get(part, [])})
        width = 0.8 / len(done)
        for i, (key, entry) in enumerate(done.items()):
            rows = {row[column]: row.get(ratio) for row in entry.get(part, [])}
            values = [rows.get(label) or float("nan") for label in labels]
            xs = [j + i * width for j in range(len(labels))]
            bars = axis.bar(xs, values, width, label=BY_KEY[key].title)
            for bar, value in zip(bars, values, strict=True):
                if value == value:  # not NaN
                    axis.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                                  va="bottom", fontsize=7)
        axis.set_xticks([j + width * (len(done) - 1) / 2 for j in range(len(labels))], [str(x) for x in labels])
        axis.set_xlabel("context (tokens)" if part == "decoding" else "T (tokens)")
        axis.set_yscale("log")
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    settings = results["settings"]
    figure.suptitle(f"memory-zoo vs research code, same weights (CPU float32, {settings['threads']} thread(s), "
                    f"hidden {settings['hidden_size']}, {settings['layers']} layers, vocab {settings['vocab']}; "
                    "> 1: ours faster / smaller)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """Run every architecture whose path is given; exit status 1 if tokens or logits differ anywhere."""
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = machine_info("cpu")
    machine["load_average_before"] = load_average()
    results: dict[str, Any] = {
        "machine": machine,
        "settings": {key: getattr(args, key) for key in ("contexts", "new_tokens", "lengths", "hidden_size", "layers",
                                                         "vocab", "repeats", "time_budget", "threads", "seed",
                                                         "quick")},
        "architectures": {},
        "skipped": [],
    }
    for arch in ARCHITECTURES:
        path = getattr(args, arch.option.lstrip("-").replace("-", "_"))
        if args.only is not None and arch.key not in args.only:
            reason = "not selected (--only)"
        elif path is None:
            reason = f"no {arch.option} PATH given (a checkout of {arch.repository})"
        else:
            reason = None
        if reason is not None:
            print(f"{arch.title}: skipped, {reason}")
            results["skipped"].append({"architecture": arch.key, "reason": reason})
            continue
        entry = run_architecture(args, arch, path)
        results["architectures"][arch.key] = entry
        if entry["status"] != "ok":
            print(f"{arch.title}: {entry['status']}")
            results["skipped"].append({"architecture": arch.key, "reason": entry["status"].removeprefix("skipped: ")})
    machine["load_average_after"] = load_average()
    results["seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    print(f"\nwrote {args.output} ({results['seconds']:.0f} s)")
    plot(results, args.output.with_suffix(".png"))
    failures = [f"{key}: tokens differ at context {row['context']}"
                for key, entry in results["architectures"].items() for row in entry.get("decoding", [])
                if not row["tokens_identical"]]
    failures += [f"{key}: logits differ at context {row['context']} (max |diff| {row['max_abs_logit_diff']:.2e})"
                 for key, entry in results["architectures"].items() for row in entry.get("agreement", [])
                 if not row["allclose_atol_rtol_1e-4"]]
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
