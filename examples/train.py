"""Train any memory-zoo architecture with the Hugging Face `Trainer`: one CPU, many GPUs, or several machines.

The same script runs alone (`python examples/train.py ...`) and under `torchrun` or `accelerate launch` (DDP,
FSDP, DeepSpeed ZeRO-3: ready configs and commands in `examples/configs/README.md`); the `Trainer` handles the
distribution, checkpoints and resumption.

* **Architecture**: `--architecture` is any registered model type (`masked_mixer`, `memory_mosaics`, ...; dashes
  work too). A new model gets small default sizes (below), changed with `--hidden-size`, `--layers` and
  `--context`, or a JSON file of config arguments (`--config`, merged over the defaults); `--model DIR_OR_HUB_ID`
  continues from a saved model instead (its tokenizer comes along, or pass `--tokenizer`).
* **Data**: `--train-file` / `--validation-file` (plain UTF-8 text; without a validation file the last 10% of the
  training text, cut at a line break, is held out), or `--dataset NAME [--dataset-config C] [--text-column text]`
  through the `datasets` package (imported only then; its `validation` or `test` split, else a 5% slice of
  `train`). Without either, a dozen Shakespeare sonnets embedded in `quickstart.py` (offline, seconds). Text is
  tokenized, documents joined with the end-of-sequence token, and packed into blocks of `--context` tokens.
* **Tokenizer**: `--tokenizer DIR_OR_HUB_ID` (`AutoTokenizer`), else the one saved with `--model` or with the
  checkpoint being resumed, else a byte-level BPE of `--vocab-size` tokens trained on the training text (on the
  main process; the other ranks load it). It is saved with every checkpoint and with the final model.
* **Loss**: causal LMs (and the memory models, whose fixed context is `num_chunks * chunk_length`) report the
  next-token loss and the perplexity `exp(eval_loss)`; autoencoders (`mixer_autoencoder`,
  `transformer_autoencoder`) reconstruct each block (`labels = input_ids`, unshifted) and report the
  reconstruction loss in nats and bits per token.
* **Output**: checkpoints `OUTPUT_DIR/checkpoint-N` every `--save-steps` (resume with
  `--resume-from-checkpoint latest` or a path), then the final model, its remote code and the tokenizer in
  `OUTPUT_DIR` (loadable with `AutoModelForCausalLM` / `AutoModel`, `trust_remote_code=True` where memory-zoo is
  not installed).

Default sizes (hidden width, blocks - per stack for encoder/decoder models -, context): 128, 4, 64 for
`masked_mixer`, `memory_mosaics`, `memory_layers` (blocks 1 and 3 read one 4096-slot product-key memory) and
`lswt`; 128, 2, 32 for the autoencoders; 128, 2, 64 (4 chunks of 16 tokens, `--num-chunks`) for the memory models
(`memory_mixer` decodes each chunk from the previous chunk's memory, the causal setting).

    python examples/train.py                      # masked mixer, 200 steps on the sonnets (memorised: held-out rises)
    python examples/train.py --train-file ../shared/data/tinyshakespeare.txt --max-steps 600   # held-out 6.26 -> 3.35
    python examples/train.py --architecture mixer_autoencoder --gradient-checkpointing
    python examples/train.py --output-dir runs/mm --resume-from-checkpoint latest             # continue a run
    torchrun --standalone --nproc-per-node 2 examples/train.py --use-cpu                     # 2 CPU processes, gloo
    accelerate launch --config_file examples/configs/fsdp.yaml examples/train.py --architecture lswt --bf16

Under several processes every flag means the same; `--batch-size` is per process (the global batch is
processes x batch size x `--gradient-accumulation-steps`). `--fsdp` / `--deepspeed JSON` select FSDP2 / DeepSpeed
when launching with torchrun; with `accelerate launch` the config file does. A hidden `--rank-checksums DIR` makes
every rank write a SHA-256 of its parameters after training (the distributed tests check that they agree).

Run `python examples/train.py --help` for every flag.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

import memory_zoo
from memory_zoo import ARCHITECTURES, memory_layers_param_groups

sys.path.insert(0, str(Path(__file__).parent))
from quickstart import SONNETS, SPECIAL_TOKENS  # noqa: E402  (sibling example: the embedded default text)

ARCHITECTURE_CLASSES = {config.model_type: (config, base, causal_lm) for config, base, causal_lm in ARCHITECTURES}
AUTOENCODERS = sorted(name for name, (_, _, causal_lm) in ARCHITECTURE_CLASSES.items() if causal_lm is None)
CHUNKED = ("variable_memory_mixer", "memory_mixer", "variable_memory_transformer")
# architecture -> (hidden width, blocks per stack, context) of a new model
DEFAULT_SIZES = {name: (128, 2, 32) if name in AUTOENCODERS else (128, 2, 64) if name in CHUNKED else (128, 4, 64)
                 for name in ARCHITECTURE_CLASSES}
HELD_OUT_FRACTION = 0.1  # of a training text file without --validation-file
DATASET_VALIDATION_FRACTION = 0.05  # of a dataset's train split without a validation or test split
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def architecture_name(value: str) -> str:
    return value.replace("-", "_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train any memory-zoo architecture with the Hugging Face Trainer (single process, DDP, FSDP, "
                    "DeepSpeed through torchrun / accelerate launch).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--architecture", type=architecture_name, choices=sorted(ARCHITECTURE_CLASSES), default=None,
                       help="model type of a new model (default masked_mixer; read from --model / --config if given)")
    model.add_argument("--model", default=None, help="start from this saved model (folder or Hub id)")
    model.add_argument("--config", type=Path, default=None,
                       help="JSON file of config arguments for a new model, merged over the default sizes")
    model.add_argument("--hidden-size", type=int, default=None, help="width of a new model (default: per architecture)")
    model.add_argument("--layers", type=int, default=None,
                       help="blocks of a new model; per stack (encoder and decoder) for encoder/decoder models")
    model.add_argument("--context", type=int, default=None,
                       help="tokens per training block: a new model's fixed context (autoencoders: window; memory "
                            "models: num_chunks * chunk_length); default: per architecture, or the saved model's")
    model.add_argument("--num-chunks", type=int, default=4, help="chunks of a new memory model (context / chunk length)")
    data = parser.add_argument_group("data")
    data.add_argument("--train-file", type=Path, default=None, help="UTF-8 text to train on (default: embedded sonnets)")
    data.add_argument("--validation-file", type=Path, default=None,
                      help="UTF-8 text to evaluate on (default: the last 10%% of the training text, never trained on)")
    data.add_argument("--dataset", default=None, help="a `datasets` dataset name or path (needs `pip install datasets`)")
    data.add_argument("--dataset-config", default=None, help="configuration name of --dataset")
    data.add_argument("--text-column", default="text", help="text column of --dataset")
    data.add_argument("--max-eval-blocks", type=int, default=256, help="cap on evaluation blocks (0: no cap)")
    data.add_argument("--preprocessing-workers", type=int, default=None, help="processes for datasets.map")
    tok = parser.add_argument_group("tokenizer")
    tok.add_argument("--tokenizer", default=None, help="load this tokenizer (folder or Hub id) instead of training one")
    tok.add_argument("--vocab-size", type=int, default=512, help="vocabulary of a trained BPE tokenizer")
    tok.add_argument("--tokenizer-train-texts", type=int, default=200_000,
                     help="at most this many dataset texts train the BPE tokenizer")
    run = parser.add_argument_group("training")
    run.add_argument("--output-dir", type=Path, default=None, help="checkpoints and final model (outputs/train-<arch>)")
    run.add_argument("--max-steps", type=int, default=200, help="optimisation steps")
    run.add_argument("--batch-size", type=int, default=16, help="blocks per step and device (per_device_train_batch_size)")
    run.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per optimisation step")
    run.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate (warm-up, then cosine to 10%%)")
    run.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    run.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default: 10%% of the steps)")
    run.add_argument("--eval-steps", type=int, default=100, help="evaluate every N steps (0: only before and after)")
    run.add_argument("--save-steps", type=int, default=100, help="checkpoint every N steps (0: no checkpoints)")
    run.add_argument("--save-total-limit", type=int, default=None, help="keep only the newest N checkpoints")
    run.add_argument("--logging-steps", type=int, default=20, help="log the training loss every N steps")
    run.add_argument("--resume-from-checkpoint", default=None,
                     help="a checkpoint folder, or `latest`: the newest checkpoint-N of --output-dir (if any)")
    run.add_argument("--gradient-checkpointing", action="store_true", help="recompute block activations in backward")
    run.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (autocast)")
    run.add_argument("--use-cpu", action="store_true", help="train on the CPU even where a GPU is present")
    run.add_argument("--fsdp", action="store_true",
                     help="FSDP2 under torchrun (accelerate launch: use examples/configs/fsdp.yaml instead); blocks "
                          "are wrapped by the model's _no_split_modules, checkpoints hold full state dicts")
    run.add_argument("--deepspeed", default=None,
                     help="DeepSpeed JSON config under torchrun / the deepspeed launcher (accelerate launch: use "
                          "examples/configs/deepspeed_zero3.yaml instead)")
    run.add_argument("--ddp-backend", default=None, help="torch.distributed backend (default: gloo on CPU, nccl on GPU)")
    run.add_argument("--report-to", default="none", help="Trainer integrations (tensorboard, wandb, ...; none)")
    run.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    run.add_argument("--no-eval-before", action="store_true", help="skip the evaluation before training")
    # Debugging aid (used by the distributed tests): every rank writes a checksum of its parameters after training.
    run.add_argument("--rank-checksums", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "vocab_size", "num_chunks",
                 "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    for name in ("hidden_size", "layers", "context"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    if args.dataset is not None and (args.train_file is not None or args.validation_file is not None):
        parser.error("Pass either --dataset or --train-file/--validation-file, not both.")
    if args.dataset is not None and importlib.util.find_spec("datasets") is None:
        parser.error(f"--dataset {args.dataset} needs the `datasets` package: `pip install datasets` (or train on "
                     "local text files with --train-file / --validation-file).")
    for name in ("train_file", "validation_file", "config"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name.replace('_', '-')} {path}: no such file.")
    if args.model is not None:
        if args.config is not None or args.hidden_size is not None or args.layers is not None:
            parser.error("--model continues a saved model; --config, --hidden-size and --layers only shape new ones.")
        saved_type = AutoConfig.from_pretrained(args.model).model_type
        if args.architecture not in (None, saved_type):
            parser.error(f"--architecture {args.architecture} but --model {args.model} is a {saved_type}.")
        args.architecture = saved_type
    elif args.config is not None:
        saved_type = json.loads(args.config.read_text()).get("model_type")
        if saved_type is not None and args.architecture not in (None, saved_type):
            parser.error(f"--architecture {args.architecture} but --config {args.config} is a {saved_type}.")
        args.architecture = args.architecture or saved_type
    args.architecture = args.architecture or "masked_mixer"
    if args.architecture not in ARCHITECTURE_CLASSES:
        parser.error(f"{args.architecture} is not a memory-zoo architecture ({', '.join(sorted(ARCHITECTURE_CLASSES))}).")
    if args.output_dir is None:
        args.output_dir = Path("outputs") / f"train-{args.architecture}"
    return args


# ----------------------------------------------------------------------------------------------------------- data


def train_bpe(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (the quickstart's): every byte is in the vocabulary, so any text round-trips."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def has_tokenizer(folder) -> bool:
    return folder is not None and Path(folder).is_dir() and any((Path(folder) / f).is_file() for f in TOKENIZER_FILES)


def get_tokenizer(args, checkpoint: str | None, training_texts, is_main: bool):
    """The tokenizer, in order: --tokenizer, the resumed checkpoint's, --model's, or a BPE trained here.

    Called under `main_process_first`: the main process trains and saves the BPE in `--output-dir`, the other
    ranks then load that copy, so every rank has the same vocabulary."""
    if args.tokenizer is not None:
        return AutoTokenizer.from_pretrained(args.tokenizer), f"loaded from {args.tokenizer}"
    if has_tokenizer(checkpoint):
        return AutoTokenizer.from_pretrained(checkpoint), f"loaded from {checkpoint}"
    if args.model is not None:
        try:
            return AutoTokenizer.from_pretrained(args.model), f"loaded from {args.model}"
        except (OSError, ValueError) as error:
            raise SystemExit(f"--model {args.model} has no tokenizer ({error}); pass the one it was trained with "
                             "as --tokenizer.") from error
    if not is_main:
        return AutoTokenizer.from_pretrained(args.output_dir), "byte-level BPE trained by the main process"
    tokenizer = train_bpe(training_texts(), args.vocab_size)
    tokenizer.save_pretrained(args.output_dir)
    return tokenizer, "byte-level BPE trained on the training text"


class Blocks(torch.utils.data.Dataset):
    """Packed blocks `[N, context]`; each item is `{input_ids, labels}` with `labels = input_ids` (the causal models
    shift inside, the autoencoders reconstruct the block)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        block = self.blocks[index]
        return {"input_ids": block, "labels": block}


def encode_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids of a whole text file, tokenized in pieces of lines (ids as if tokenized at once: the BPE
    pre-tokenizer never merges across a line break)."""
    lines, pieces = text.splitlines(keepends=True), []
    for start in range(0, len(lines), 10_000):
        for ids in tokenizer(lines[start: start + 10_000], add_special_tokens=False)["input_ids"]:
            pieces.extend(ids)
    return torch.tensor(pieces, dtype=torch.long)


def pack(ids: torch.Tensor, context: int, what: str, limit: int = 0) -> torch.Tensor:
    """Non-overlapping blocks of `context` tokens (the remainder dropped); a stream shorter than one block
    becomes one shorter block (the models accept inputs up to their context)."""
    if len(ids) < 2:
        raise SystemExit(f"The {what} text has {len(ids)} tokens; give more text.")
    if len(ids) < context:
        return ids[None]
    blocks = ids[: len(ids) // context * context].view(-1, context)
    return blocks[:limit] if limit else blocks


def read_text_files(args):
    """(training text, validation text, description) of --train-file / --validation-file or the embedded sonnets."""
    name, text = ("embedded sonnets", SONNETS) if args.train_file is None else (
        str(args.train_file), args.train_file.read_text(encoding="utf-8"))
    if args.validation_file is not None:
        return text, args.validation_file.read_text(encoding="utf-8"), f"{name} / {args.validation_file}"
    cut = text.rfind("\n", 0, int(len(text) * (1 - HELD_OUT_FRACTION))) + 1
    if cut <= 0 or len(text) - cut < 100:
        raise SystemExit(f"{name}: too little text ({len(text)} characters) to hold out 10% for evaluation; give a "
                         "longer --train-file or a --validation-file.")
    return text[:cut], text[cut:], f"{name} (last 10% held out)"


def load_dataset_splits(args):
    try:
        import datasets
    except ImportError as error:
        raise SystemExit("--dataset needs the `datasets` package: `pip install datasets` (or train on local text "
                         "files with --train-file / --validation-file).") from error
    raw = datasets.load_dataset(args.dataset, args.dataset_config)
    if "train" not in raw:
        raise SystemExit(f"--dataset {args.dataset} has no train split (splits: {', '.join(raw)}).")
    if args.text_column not in raw["train"].column_names:
        raise SystemExit(f"--dataset {args.dataset} has no column {args.text_column!r} (columns: "
                         f"{', '.join(raw['train'].column_names)}); pass --text-column.")
    validation = next((raw[s] for s in ("validation", "valid", "test") if s in raw), None)
    train = raw["train"]
    if validation is None:
        split = train.train_test_split(test_size=DATASET_VALIDATION_FRACTION, seed=args.seed)
        train, validation = split["train"], split["test"]
    return train, validation


def pack_dataset(dataset, tokenizer, context: int, args, limit: int = 0):
    """Tokenize a `datasets` split, join documents with the end-of-sequence token and pack blocks of `context`."""
    column, eos = args.text_column, tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch[column], add_special_tokens=False)["input_ids"]
        return {"ids": [x + [eos] if eos is not None else x for x in ids]}

    def group(batch):
        stream = [token for ids in batch["ids"] for token in ids]
        stream = stream[: len(stream) // context * context]
        blocks = [stream[i: i + context] for i in range(0, len(stream), context)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    workers = args.preprocessing_workers
    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, num_proc=workers,
                            desc="tokenizing")
    packed = tokenized.map(group, batched=True, batch_size=1000, remove_columns=["ids"], num_proc=workers,
                           desc=f"packing blocks of {context}")
    if limit and len(packed) > limit:
        packed = packed.select(range(limit))
    return packed.with_format("torch")


# ---------------------------------------------------------------------------------------------------------- model


def natural_context(config) -> int | None:
    """The sequence length a saved model was built for (None: no fixed length)."""
    for name in ("context_length", "window_length", "block_size", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def new_config(args, tokenizer, context: int):
    """The config of a new model: default sizes of the architecture, --config arguments over them."""
    architecture = args.architecture
    config_class = ARCHITECTURE_CLASSES[architecture][0]
    default_hidden, default_layers, _ = DEFAULT_SIZES[architecture]
    hidden = args.hidden_size or default_hidden
    layers = args.layers or default_layers
    heads = 4 if hidden % 4 == 0 else 1
    special = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    llama = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
                 max_position_embeddings=max(context, 64))
    if architecture in CHUNKED and context % args.num_chunks:
        raise SystemExit(f"--context {context} must be a multiple of --num-chunks {args.num_chunks} "
                         "(the memory models read num_chunks chunks of context / num_chunks tokens).")
    chunk = context // args.num_chunks
    settings = {
        "masked_mixer": dict(hidden_size=hidden, num_hidden_layers=layers, max_position_embeddings=context),
        "memory_mosaics": dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, pmem_size=256,
                               block_size=context, attention_dropout=0.0, hidden_dropout=0.0),
        "memory_layers": dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=max(1, heads // 2), multiple_of=32, max_position_embeddings=context,
                              memory_layers=list(range(1, layers, 2)) or [0], memory_n_keys=64, memory_heads=4,
                              memory_knn=8, memory_k_dim=64),
        "lswt": dict(embedding_size=hidden, hidden_size=hidden, intermediate_size=8 * hidden // 3,
                     num_attention_heads=heads, num_hidden_layers=layers),
        "mixer_autoencoder": dict(hidden_size=hidden, encoder_layers=layers, decoder_layers=layers,
                                  window_length=context),
        "transformer_autoencoder": dict(encoder_config=llama, window_length=context),
        "variable_memory_mixer": dict(encoder_hidden_size=hidden, hidden_size=hidden, encoder_layers=layers,
                                      decoder_layers=layers, chunk_length=chunk, num_chunks=args.num_chunks),
        "memory_mixer": dict(encoder_hidden_size=hidden, hidden_size=hidden, encoder_layers=layers,
                             decoder_layers=layers, chunk_length=chunk, memory_source="previous_chunk"),
        "variable_memory_transformer": dict(encoder_config=llama, decoder_config=llama, chunk_length=chunk,
                                            num_chunks=args.num_chunks),
    }[architecture]
    settings.update(special)
    if args.config is not None:
        overrides = json.loads(args.config.read_text())
        overrides.pop("model_type", None)
        settings.update(overrides)
        if settings["vocab_size"] < len(tokenizer):
            raise SystemExit(f"--config vocab_size {settings['vocab_size']} is smaller than the tokenizer "
                             f"({len(tokenizer)} tokens).")
    return config_class(**settings)


def build_model(args, tokenizer, context: int):
    _, base_class, causal_lm_class = ARCHITECTURE_CLASSES[args.architecture]
    if args.model is not None:
        auto = AutoModelForCausalLM if causal_lm_class is not None else AutoModel
        model = auto.from_pretrained(args.model)
        if len(tokenizer) > model.config.vocab_size:
            raise SystemExit(f"The tokenizer has {len(tokenizer)} tokens but --model {args.model} only "
                             f"{model.config.vocab_size} embeddings: pass the tokenizer it was trained with.")
        return model
    # from_config, not the class itself: under DeepSpeed ZeRO-3 the weights are created already partitioned
    return (AutoModelForCausalLM if causal_lm_class is not None else AutoModel).from_config(
        new_config(args, tokenizer, context))


def parameter_checksum(model: torch.nn.Module) -> dict:
    """SHA-256 of every parameter's bytes (in name order) and their float64 sum: equal on every DDP rank."""
    digest, total = hashlib.sha256(), 0.0
    for name, parameter in sorted(model.named_parameters()):
        data = parameter.detach()
        if hasattr(data, "full_tensor"):  # FSDP2 shards (a collective: every rank hashes in the same order)
            data = data.full_tensor()
        data = data.cpu().contiguous()
        digest.update(name.encode())
        digest.update(data.flatten().view(torch.uint8).numpy().tobytes())
        total += float(data.double().sum())
    return {"sha256": digest.hexdigest(), "sum": total}


# -------------------------------------------------------------------------------------------------------- trainer


class ZooTrainer(Trainer):
    """The HF Trainer, with perplexity (or bits per token) logged next to every eval loss, and the research
    parameter groups of Memory Layers (value tables at their own learning rate)."""

    def __init__(self, *args, reconstruction: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.reconstruction = reconstruction

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "eval_loss" in logs:
            if self.reconstruction:
                logs["eval_bits_per_token"] = logs["eval_loss"] / math.log(2)
            else:
                logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 700.0))
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None and getattr(opt_model.config, "model_type", None) == "memory_layers":
            groups = memory_layers_param_groups(opt_model, lr=self.args.learning_rate,
                                                weight_decay=self.args.weight_decay)
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, eps=self.args.adam_epsilon,
                                               betas=(self.args.adam_beta1, self.args.adam_beta2))
            return self.optimizer
        return super().create_optimizer(model)


def describe(metrics: dict, reconstruction: bool) -> str:
    loss = metrics["eval_loss"]
    if reconstruction:
        return f"reconstruction loss {loss:.4f} nats/token = {loss / math.log(2):.4f} bits/token"
    return f"loss {loss:.4f} nats/token, perplexity {math.exp(min(loss, 700.0)):.2f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # No accelerator (e.g. accelerate's torchrun launcher on a CPU machine): CPU processes, gloo between them.
    on_cpu = args.use_cpu or torch.accelerator.current_accelerator() is None
    ddp_backend = args.ddp_backend or ("gloo" if distributed and on_cpu else None)
    checkpoint = args.resume_from_checkpoint
    if checkpoint == "latest":
        checkpoint = get_last_checkpoint(str(args.output_dir)) if args.output_dir.is_dir() else None
    elif checkpoint is not None and not Path(checkpoint).is_dir():
        raise SystemExit(f"--resume-from-checkpoint {checkpoint}: no such checkpoint folder.")

    eval_every, save_every = args.eval_steps, args.save_steps
    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 10),
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        logging_steps=args.logging_steps,
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every or None,
        save_strategy="steps" if save_every else "no",
        save_steps=save_every or None,
        save_total_limit=args.save_total_limit,
        activation_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        use_cpu=on_cpu,
        ddp_backend=ddp_backend,
        fsdp=True if args.fsdp else None,
        fsdp_config={"version": 2, "state_dict_type": "FULL_STATE_DICT"} if args.fsdp else None,
        deepspeed=args.deepspeed,
        seed=args.seed,
        # The evaluation before training runs inside `train()`: a `Trainer.evaluate()` call before `train()` marks
        # the model as prepared, and DDP then never wraps it (every rank trains alone, silently; accelerate 1.15).
        eval_on_start=checkpoint is None and not args.no_eval_before,
        report_to=[] if args.report_to == "none" else args.report_to.split(","),
        dataloader_pin_memory=not on_cpu,
        disable_tqdm=not sys.stderr.isatty(),
    )
    is_main = training_args.process_index == 0

    def say(message: str) -> None:
        if is_main:
            print(message, flush=True)

    say(f"memory-zoo {memory_zoo.__version__}: {args.architecture}, {training_args.world_size} process(es) "
        f"({training_args.parallel_mode.value}) on {training_args.device.type}")

    if args.dataset is not None:
        with training_args.main_process_first(desc="downloading the dataset"):
            train_split, validation_split = load_dataset_splits(args)
        corpus = f"dataset {args.dataset}" + (f" ({args.dataset_config})" if args.dataset_config else "")

        def training_texts():
            return (text for text in train_split.select(range(min(len(train_split), args.tokenizer_train_texts)))
                    [args.text_column] if text)
    else:
        train_text, validation_text, corpus = read_text_files(args)

        def training_texts():
            return train_text.splitlines(keepends=True)

    with training_args.main_process_first(desc="tokenizer"):
        tokenizer, tokenizer_source = get_tokenizer(args, checkpoint, training_texts, is_main)

    saved_context = natural_context(AutoConfig.from_pretrained(args.model)) if args.model else None
    context = args.context or saved_context or DEFAULT_SIZES[args.architecture][2]
    if args.dataset is not None:
        with training_args.main_process_first(desc="tokenizing and packing"):
            train_data = pack_dataset(train_split, tokenizer, context, args)
            eval_data = pack_dataset(validation_split, tokenizer, context, args, args.max_eval_blocks)
    else:
        train_data = Blocks(pack(encode_text(tokenizer, train_text), context, "training"))
        eval_data = Blocks(pack(encode_text(tokenizer, validation_text), context, "validation", args.max_eval_blocks))
    if len(train_data) == 0 or len(eval_data) == 0:
        raise SystemExit(f"Too little text for blocks of {context} tokens: {len(train_data)} training and "
                         f"{len(eval_data)} evaluation blocks.")
    say(f"data: {corpus}; tokenizer: {tokenizer_source}, {len(tokenizer)} tokens; {len(train_data):,} training and "
        f"{len(eval_data):,} evaluation blocks of {context} tokens")

    set_seed(args.seed)
    model = build_model(args, tokenizer, context)
    reconstruction = args.architecture in AUTOENCODERS
    limit = natural_context(model.config)
    if limit is not None and context > limit and args.architecture not in ("memory_mosaics", "lswt", "memory_mixer"):
        raise SystemExit(f"--context {context} exceeds the model's fixed context ({limit}).")
    say(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters"
        + (f", from {args.model}" if args.model else "")
        + f"; no-split modules (FSDP wrapping): {', '.join(sorted(model._no_split_modules or []))}")

    trainer = ZooTrainer(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                         processing_class=tokenizer, data_collator=default_data_collator,
                         reconstruction=reconstruction)
    fsdp_requested = args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_requested and not trainer.is_fsdp_enabled:
        say("warning: FSDP was requested but is not active (accelerate shards on GPUs only; on CPUs this is plain "
            "DDP, every process holding the whole model)")
    if checkpoint is not None:
        step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
        say(f"resuming from {checkpoint} (step {step})")
    elif args.resume_from_checkpoint == "latest":
        say(f"no checkpoint in {args.output_dir} yet: starting from scratch")

    train_started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - train_started
    after = trainer.evaluate()
    losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    before = next((entry for entry in trainer.state.log_history if "eval_loss" in entry), None) \
        if training_args.eval_on_start else None

    if args.rank_checksums is not None:
        args.rank_checksums.mkdir(parents=True, exist_ok=True)
        record = {"rank": training_args.process_index, "world_size": training_args.world_size,
                  "global_step": trainer.state.global_step, **parameter_checksum(trainer.model)}
        (args.rank_checksums / f"rank{training_args.process_index}.json").write_text(json.dumps(record) + "\n")

    if trainer.is_fsdp_enabled:  # the final folder is an ordinary save_pretrained folder, whatever the checkpoints
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(args.output_dir))  # model, remote code, tokenizer (main process; gathered under FSDP)
    trainer.save_state()
    say(f"trained to step {trainer.state.global_step} in {train_seconds:.1f} s; saved model, tokenizer and remote "
        f"code to {args.output_dir}")
    if losses:
        (first_step, first), (last_step, last) = losses[0], losses[-1]
        say(f"training loss {first:.4f} (step {first_step}) -> {last:.4f} (step {last_step}); mean of this run "
            f"{result.training_loss:.4f}")
    if before is not None:
        say(f"eval {describe(before, reconstruction)} -> {describe(after, reconstruction)}")
        if after["eval_loss"] > before["eval_loss"] and args.train_file is None and args.dataset is None:
            say("  (the held-out loss rose: a few KB of sonnets are memorised, not generalised from; train on a real "
                "corpus with --train-file or --dataset)")
    else:
        say(f"eval {describe(after, reconstruction)}")
    say(f"done in {time.perf_counter() - started:.1f} s")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Leave together: a rank that exits while its peer still talks to it makes gloo abort the peer (SIGABRT).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
