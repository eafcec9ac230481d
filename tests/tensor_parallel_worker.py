"""A tensor-parallel rank for tests/test_memory_layers_tensor_parallel.py, launched with
`python -m torch.distributed.run --standalone --nproc-per-node 2 tensor_parallel_worker.py OUT_DIR` (CPU, gloo).

For every case of `CASES` it builds the same tiny model on every rank, saves rank 0's initial weights, shards it with
`parallelize_memory_layers` and runs `run_steps` (forward, loss, backward, an optimizer step, greedy generation), then
writes what it saw to `OUT_DIR/<case>.pt` (rank 0) and the local value-table bytes to `OUT_DIR/<case>.rank<r>.json`.
`clip_steps` with memory_zoo's `clip_grad_norm_` on a freshly sharded model goes to `OUT_DIR/<case>.clip.pt`, and
three steps of transformers' Trainer on the `TRAINER_CASE` model to `OUT_DIR/trainer.pt` (per rank: `trainer.rank<r>.json`).
The test runs the same functions on the unsharded model in its own process (torch's `clip_grad_norm_` there) and
compares. `ERROR_CASES` must fail with a ValueError; the message goes to `OUT_DIR/<case>.error.txt`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from memory_zoo import MemoryLayersConfig, MemoryLayersForCausalLM, memory_layers_param_groups

TINY = dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            multiple_of=32, memory_layers=[1], memory_n_keys=16, memory_heads=2, memory_knn=4, memory_k_dim=16,
            use_kernels=False)

# name -> (config overrides, shard attention and MLPs too)
CASES: dict[str, tuple[dict, bool]] = {
    # PK+ (swilu projection) with one shared bfloat16 table, as the research configs
    "pkplus_shared_bf16": (dict(memory_layers=[0, 1]), True),
    # memory_v_dim != hidden (value_proj only), a table per memory layer, the gate, float32 tables
    "v_dim_per_layer_gated": (dict(memory_v_dim=32, memory_swilu_projection=False, memory_share_values=False,
                                   memory_layers=[0, 1], memory_gated=True, memory_value_dtype="float32"), True),
    # plain PK (no projection: the read is the output), memory sharded alone
    "plain_pk_memory_only": (dict(memory_swilu_projection=False, memory_n_keys=32), False),
}
# a world size of 2 does not divide a value width of 33
ERROR_CASES: dict[str, dict] = {"odd_v_dim": dict(memory_v_dim=33)}
# (norm_type, max_norm) for the clipping check: max_norm well below the tiny models' gradient norms, so it clips
CLIP_NORMS: list[tuple[float, float]] = [(2.0, 0.25), (math.inf, 0.01)]
# the case trained with transformers' Trainer (float32 tables, attention and MLPs sharded too)
TRAINER_CASE = "v_dim_per_layer_gated"


def build(overrides: dict) -> MemoryLayersForCausalLM:
    torch.manual_seed(0)
    return MemoryLayersForCausalLM(MemoryLayersConfig(**{**TINY, **overrides}))


def inputs(vocab_size: int) -> torch.Tensor:
    return torch.randint(3, vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter or gradient as one plain tensor (a DTensor is gathered from its shards)."""
    tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return tensor.detach().clone()


def run_steps(model: MemoryLayersForCausalLM, input_ids: torch.Tensor) -> dict:
    """Forward + loss + backward, one SGD step through memory_layers_param_groups, the loss after it, then greedy
    generation. SGD, not AdamW, so that the step can be compared tightly: AdamW's first step is about lr * sign(grad),
    which turns the last-bit differences of near-zero gradients into differences of lr."""
    model.train()
    out = model(input_ids, labels=input_ids)
    out.loss.backward()
    grads = {name: full(p.grad) for name, p in model.named_parameters()}
    grad_types = {name: type(p.grad).__name__ for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(memory_layers_param_groups(model, lr=1e-2, value_lr=1.0), momentum=0.9)
    optimizer.step()
    optimizer.zero_grad()
    stepped = {name: full(p) for name, p in model.named_parameters()}
    with torch.no_grad():
        loss_after_step = model(input_ids, labels=input_ids).loss
    model.eval()
    with torch.no_grad():
        tokens = model.generate(input_ids[:, :5], max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                pad_token_id=0)
    return dict(logits=out.logits.detach(), loss=out.loss.detach(), grads=grads, grad_types=grad_types,
                stepped=stepped, loss_after_step=loss_after_step, tokens=tokens)


def clip_steps(model: MemoryLayersForCausalLM, input_ids: torch.Tensor, clip: Callable[..., torch.Tensor]) -> dict:
    """For each of CLIP_NORMS: fresh gradients, `clip(model.parameters(), max_norm, norm_type)`; the total norm it
    returned and the clipped gradients (gathered)."""
    model.train()
    report = {}
    for norm_type, max_norm in CLIP_NORMS:
        model.zero_grad()
        model(input_ids, labels=input_ids).loss.backward()
        total = clip(model.parameters(), max_norm, norm_type)
        report[str(norm_type)] = dict(total=total.detach().clone(), max_norm=max_norm,
                                      grads={name: full(p.grad) for name, p in model.named_parameters()})
    model.zero_grad()
    return report


class TokenRows(torch.utils.data.Dataset):
    """A few random token rows, each its own label (the causal LM shifts them)."""

    def __init__(self, vocab_size: int) -> None:
        self.rows = torch.randint(3, vocab_size, (6, 12), generator=torch.Generator().manual_seed(2))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


def train_with_trainer(model: MemoryLayersForCausalLM, output_dir: Path) -> dict:
    """Three steps of transformers' Trainer with its default `max_grad_norm=1.0`: the loss of every step (read off the
    model's output, the Trainer's log rounds it), the gradient norm the Trainer logged and the trained weights.
    SGD with a constant rate for a tight comparison (see run_steps); sequential batches so that one process and the
    tensor-parallel ranks see the same rows in the same order."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=2, optim="sgd", learning_rate=0.1,
        lr_scheduler_type="constant", logging_steps=1, report_to=[], save_strategy="no", eval_strategy="no",
        use_cpu=True, train_sampling_strategy="sequential", disable_tqdm=True, seed=0,
    )
    losses: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda module, args, out: losses.append(out.loss.detach().clone()))
    trainer = Trainer(model=model, args=args, train_dataset=TokenRows(model.config.vocab_size))
    trainer.train()
    hook.remove()
    logged = [entry for entry in trainer.state.log_history if "grad_norm" in entry]
    return dict(losses=torch.stack(losses), grad_norms=[entry["grad_norm"] for entry in logged],
                weights={name: full(p) for name, p in model.named_parameters()},
                accelerate_tp_size=getattr(trainer.accelerator.parallelism_config, "tp_size", None),
                model_type=type(trainer.model_wrapped).__name__)


def allow_accelerate_tensor_parallel_on_cpu() -> None:
    """Let accelerate take a `ParallelismConfig(tp_size=2)` on CPU ranks (gloo), for this test only.

    accelerate 1.16 refuses any ParallelismConfig unless the run is FSDP2, DeepSpeed or `Accelerator.multi_device`,
    which lists the accelerator types (MULTI_GPU, MULTI_XPU, ...) but not MULTI_CPU (parallelism_config.py,
    `_validate_accelerator`: "ParallelismConfig is only compatible DistributedType.FSDP (version 2) or
    DistributedType.Multi{Device} or DistributedType.DEEPSPEED"). What the config sets up for tensor parallelism is
    device-agnostic (a `tp` mesh, a data loader that hands every tp rank the same batch, no DDP), so this check alone
    is answered as for a multi-GPU run; a GPU run needs no patch.
    """
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DistributedType

    validate = ParallelismConfig._validate_accelerator

    class AsMultiDevice:
        def __init__(self, accelerator) -> None:
            self.accelerator = accelerator

        def __getattr__(self, name: str):
            return getattr(self.accelerator, name)

        multi_device = True

    def validate_on_cpu(self, accelerator) -> None:
        cpu = accelerator.distributed_type == DistributedType.MULTI_CPU
        validate(self, AsMultiDevice(accelerator) if cpu else accelerator)

    ParallelismConfig._validate_accelerator = validate_on_cpu


def adamw_state_bytes(model: MemoryLayersForCausalLM, input_ids: torch.Tensor) -> dict:
    """One AdamW step (the research optimizer) on the sharded model: the value tables' moments, per rank."""
    model.train()
    model(input_ids, labels=input_ids).loss.backward()
    optimizer = torch.optim.AdamW(memory_layers_param_groups(model, lr=1e-3), betas=(0.9, 0.95))
    optimizer.step()
    report = {}
    for name, table in value_tables(model).items():
        moment = optimizer.state[table]["exp_avg"]
        report[name] = {"moment": type(moment).__name__, "moment_local_numel": moment.to_local().numel(),
                        "table": type(table).__name__, "table_dtype": str(table.dtype),
                        "finite": bool(torch.isfinite(table.to_local().float()).all())}
    return report


def value_tables(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight for name, m in model.named_modules()
            if any(c.__name__ == "MemoryLayersValueTable" for c in type(m).__mro__)}


def main(out_dir: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from memory_zoo import clip_grad_norm_, parallelize_memory_layers

    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    for case, (overrides, dense) in CASES.items():
        model = build(overrides)
        if rank == 0:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, out_dir / f"{case}.initial.pt")
        full_bytes = {n: w.numel() * w.element_size() for n, w in value_tables(model).items()}
        parallelize_memory_layers(model, mesh, dense=dense)
        tables = value_tables(model)
        record = {
            "full_bytes": full_bytes,
            "local_bytes": {n: w.to_local().numel() * w.to_local().element_size() for n, w in tables.items()},
            "placements": {n: [str(p) for p in w.placements] for n, w in tables.items()},
            "dtypes": {n: str(w.dtype) for n, w in tables.items()},
            "dtensor_params": sorted(n for n, p in model.named_parameters() if isinstance(p, DTensor)),
        }
        result = run_steps(model, inputs(model.config.vocab_size))
        record["grad_types"] = result["grad_types"]
        record["adamw"] = adamw_state_bytes(model, inputs(model.config.vocab_size))
        # clipping on a freshly sharded model, so that one process can start from the same (initial) weights
        clipped = clip_steps(parallelize_memory_layers(build(overrides), mesh, dense=dense),
                             inputs(model.config.vocab_size), clip_grad_norm_)
        record["clip_totals"] = {norm: (type(r["total"]).__name__, r["total"].item()) for norm, r in clipped.items()}
        (out_dir / f"{case}.rank{rank}.json").write_text(json.dumps(record))
        if rank == 0:
            torch.save(result, out_dir / f"{case}.pt")
            torch.save(clipped, out_dir / f"{case}.clip.pt")
    # the Trainer, on a freshly sharded model
    allow_accelerate_tensor_parallel_on_cpu()
    model = parallelize_memory_layers(build(CASES[TRAINER_CASE][0]), mesh, dense=CASES[TRAINER_CASE][1])
    trained = train_with_trainer(model, out_dir / "trainer")
    (out_dir / f"trainer.rank{rank}.json").write_text(json.dumps(
        {"losses": trained["losses"].tolist(), "grad_norms": trained["grad_norms"],
         "accelerate_tp_size": trained["accelerate_tp_size"], "model_type": trained["model_type"]}))
    if rank == 0:
        torch.save(trained, out_dir / "trainer.pt")
    for case, overrides in ERROR_CASES.items():
        try:
            parallelize_memory_layers(build(overrides), mesh)
        except ValueError as error:
            (out_dir / f"{case}.error.txt").write_text(str(error))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
    print(f"rank {os.environ.get('RANK')} done")
