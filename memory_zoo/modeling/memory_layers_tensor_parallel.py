"""Tensor parallelism for Memory Layers on torch's DTensor: the value table split by columns across ranks.

A product-key memory's value table (`[memory_n_keys ** 2, width]`, a billion parameters in the research PK+ configs)
is the one tensor that does not fit on a device. :func:`parallelize_memory_layers` shards it column-wise (`Shard(1)`)
over a 1-D device mesh: every rank keeps all the slots but `width / world_size` of their columns. Every rank computes
the same queries, key scores and top-k (their inputs are replicated), reads its own columns of the selected slots with
the ordinary embedding bag, and one all-gather of the `[tokens, width]` read makes the full rows again. The attention
and SwiGLU blocks can be split the usual Megatron way as well (query/key/value and gate/up column-wise, output and down
row-wise), which is what transformers' `tp_plan` does for Llama.

Why an all-gather of the read rather than a row-wise `value_proj` with an all-reduce of its output: the all-gather
is exact (each column of a read is computed whole on one rank, so a sharded forward equals the one-process forward
bit for bit), it moves `tokens x width` numbers in the table's dtype (bfloat16 by default) where the all-reduce moves
`tokens x hidden` float32 numbers twice (reduce-scatter + all-gather), and it needs no collective in the backward for
the activations (the gradient of a replicated output is sliced locally). It also covers every variant alike: plain
PK, which has no projection to shard, `memory_v_dim`, PK+ and the gate. The only backward collective of the memory
is an all-reduce of the gradient of the read weights (`[tokens, heads * knn]`, small): each rank's read only sees its
columns, so its weight gradient is a partial sum.

The product keys, query network and projections stay replicated: they are a few million parameters next to the
table's billion, and splitting the keys would turn the exact local top-k into a distributed one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..ops.embedding_bag import embedding_bag_sum

_VALUE_TABLE = "MemoryLayersValueTable"
_ATTENTION = "MemoryLayersAttention"
_MLP = "MemoryLayersMLP"


def _is(module: nn.Module, class_name: str) -> bool:
    # By name, not isinstance: a model loaded with trust_remote_code has its own copy of the classes.
    return any(cls.__name__ == class_name for cls in type(module).__mro__)


def _column_sharded_read(self: nn.Module, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The value table's forward when its weight is a `Shard(1)` DTensor: a local read of this rank's columns, then
    one all-gather of the columns."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    table = self.weight
    mesh = table.device_mesh
    # The read weights are the same on every rank, but each rank's read only sees its columns, so the gradient it
    # computes for them is a partial sum over columns: `Partial` makes DTensor all-reduce it in the backward.
    weights = DTensor.from_local(weights, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])
    local = embedding_bag_sum(indices, table.to_local(), weights, getattr(self, "kernel", None))
    # All-gather the columns. In the backward the gradient of the full read is the same on every rank (replicated),
    # so each rank just keeps its columns: no collective.
    return DTensor.from_local(local, mesh, [Shard(1)], run_check=False).full_tensor()


_SHARDED_CLASSES: dict[type, type] = {}


def _column_sharded_class(cls: type) -> type:
    """A subclass of `cls` whose forward reads a column-sharded table (as FSDP2's `fully_shard` swaps the class of the
    modules it shards): `isinstance` checks, `memory_layers_param_groups` and the state-dict names are unchanged."""
    if cls not in _SHARDED_CLASSES:
        _SHARDED_CLASSES[cls] = type(f"ColumnSharded{cls.__name__}", (cls,), {"forward": _column_sharded_read})
    return _SHARDED_CLASSES[cls]


def _column_sharded_value_table_style():
    """torch's `ParallelStyle` for a value table (built lazily: `torch.distributed.tensor` is imported on use)."""
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ParallelStyle

    class ColumnShardedValueTable(ParallelStyle):
        """Shard a value table's weight by columns (`Shard(1)`); the read is local, then one all-gather."""

        def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
            from torch.distributed.tensor import DTensor

            weight = module.weight
            if weight.device.type == device_mesh.device_type or weight.is_meta:
                sharded = distribute_tensor(weight.detach(), device_mesh, [Shard(1)],
                                            src_data_rank=self.src_data_rank)
            else:
                # A table loaded on the CPU for a GPU mesh: distribute_tensor would first copy the whole table to the
                # device; move only this rank's columns (every rank loaded the same checkpoint).
                columns = weight.detach().chunk(device_mesh.size(), dim=1)[device_mesh.get_local_rank()]
                local = columns.to(device_mesh.device_type).contiguous()
                sharded = DTensor.from_local(local, device_mesh, [Shard(1)], run_check=False)
            # Either way the dtype is kept: a bfloat16 table stays bfloat16 next to float32 weights.
            module.weight = nn.Parameter(sharded, requires_grad=weight.requires_grad)
            module.__class__ = _column_sharded_class(type(module))
            return module

    return ColumnShardedValueTable()


def _divides(what: str, size: int, world: int, fix: str) -> None:
    if size % world:
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        raise ValueError(
            f"Tensor parallelism over {world} ranks cannot split {what} ({size}): it is not divisible by {world}, and "
            f"every rank must hold an equal slice. Use a world size that divides {size} (one of {divisors}), or "
            f"{fix}."
        )


def parallelize_memory_layers(model: nn.Module, device_mesh, *, dense: bool = True) -> nn.Module:
    """Shard a Memory Layers model for tensor parallelism over the 1-D `device_mesh`, in place; returns the model.

    * Every value table (the shared `model.memory_values`, or each memory layer's own with
      `memory_share_values=False`) becomes a DTensor sharded by columns (`Shard(1)` of `[slots, width]`): each rank
      holds `1 / world_size` of it, keeps its dtype (`memory_value_dtype`), and its gradient is sharded the same way.
      Every rank computes the same key scores and reads its columns of the chosen slots; one all-gather of the read
      combines them (see the module docstring for why this and not a row-wise projection).
    * With `dense=True` (default) the attention and SwiGLU blocks are split as transformers' Llama `tp_plan` does:
      `q_proj`, `k_proj`, `v_proj`, `gate_proj`, `up_proj` column-wise, `o_proj`, `down_proj` row-wise (an all-reduce
      each). With `dense=False` only the value tables are sharded, e.g. to combine with data parallelism for the rest.
    * Everything else (embeddings, norms, head, product keys, query network and memory projections) stays a plain,
      replicated tensor whose gradient is the same on every rank.

    Every rank must feed the same inputs. Optimizers, `memory_layers_param_groups` and `generate()` work unchanged;
    gather a sharded parameter or gradient with `.full_tensor()`.

    Args:
        model: a `MemoryLayersForCausalLM`, `MemoryLayersModel` or `MemoryLayersForSequenceClassification` (also one
            loaded with `trust_remote_code=True`), with every rank holding the same weights (with the default
            `src_data_rank`, torch's `distribute_tensor` takes rank 0's).
        device_mesh: a 1-D `torch.distributed.device_mesh.DeviceMesh` over the tensor-parallel ranks, e.g.
            `init_device_mesh("cuda", (world_size,))`.
        dense: also split attention and the SwiGLU feed-forwards.

    Raises:
        ValueError: the mesh is not 1-D, the model is not a Memory Layers model or already parallelized, or the world
            size does not divide the value width (`memory_v_dim` or `hidden_size`) — or, with `dense`, the attention
            and key/value heads or `intermediate_size`.
    """
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    if device_mesh.ndim != 1:
        raise ValueError(f"parallelize_memory_layers needs a 1-D device mesh (the tensor-parallel ranks), got "
                         f"{device_mesh.ndim} dimensions; pass one dimension of it, e.g. mesh['tp'].")
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "memory_layers":
        raise ValueError(f"parallelize_memory_layers shards Memory Layers models, got {type(model).__name__} with "
                         f"model_type {getattr(config, 'model_type', None)!r}.")
    world = device_mesh.size()
    width = config.memory_v_dim or config.hidden_size
    _divides("the value tables' width (memory_v_dim, or hidden_size when it is unset)", width, world,
             "set memory_v_dim to a multiple of the world size (a new value table: this changes the model)")
    if dense:
        _divides("num_key_value_heads", config.num_key_value_heads, world, "pass dense=False to shard the value "
                 "tables only")
        _divides("num_attention_heads", config.num_attention_heads, world, "pass dense=False")
        _divides("intermediate_size", config.intermediate_size, world, "pass dense=False")

    plan = {}
    for name, module in model.named_modules():
        if _is(module, _VALUE_TABLE):
            if isinstance(module.weight, DTensor):
                raise ValueError(f"{name} is already sharded: call parallelize_memory_layers once per model.")
            plan[name] = _column_sharded_value_table_style()
        elif dense and _is(module, _ATTENTION):
            plan.update({f"{name}.{proj}": ColwiseParallel() for proj in ("q_proj", "k_proj", "v_proj")})
            plan[f"{name}.o_proj"] = RowwiseParallel()
        elif dense and _is(module, _MLP):
            plan.update({f"{name}.gate_proj": ColwiseParallel(), f"{name}.up_proj": ColwiseParallel(),
                         f"{name}.down_proj": RowwiseParallel()})
    parallelize_module(model, device_mesh, plan)
    _record_tensor_parallel_degree(model, world)
    return model


def _record_tensor_parallel_degree(model: nn.Module, world: int) -> None:
    """Record the tensor-parallel degree where transformers' `Trainer` and accelerate look for it, as
    `from_pretrained(distributed_config=DistributedConfig(tp_size=N))` records it for a model transformers sharded.

    Without it the `Trainer` under torchrun takes the ranks for data parallelism: accelerate refuses to wrap a model
    holding DTensors in DDP, and each rank would get other rows. With it the `Trainer` builds accelerate's
    `ParallelismConfig(tp_size=N)`: no DDP, every rank gets the same batch, and the loss and token counts are not
    scaled by the (replicated) ranks. Read by `Trainer.__init__` (`model.tp_size`, and on 5.23+
    `model.config.distributed_config.dp_size`), `Trainer.get_tp_size` (`model._tp_size`) and accelerate's
    `get_model_tp_size` (`model.tp_size`). `distributed_config` is not serialized into config.json; transformers'
    `save_pretrained` reads it too (to gather DTensors with `full_tensor()`, on every rank; not exercised by the tests).
    """
    if not hasattr(type(model), "_tp_size"):  # not a transformers PreTrainedModel: nothing reads it
        return
    try:
        from transformers import DistributedConfig
    except ImportError:  # a transformers without DistributedConfig has no Trainer path to join either
        return
    model._tp_size = world
    model.config.distributed_config = DistributedConfig(tp_size=world)


@torch.no_grad()
def clip_grad_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` for a tensor-parallel model, whose gradients mix DTensors (sharded or
    replicated) and plain tensors, which torch's refuses ("mixed torch.Tensor and DTensor").

    The total norm is the norm of every gradient taken over its full tensor, as one process would compute it: torch's
    `get_total_norm` over each device mesh's DTensor gradients gives a `Partial` norm for sharded ones, gathered with
    `full_tensor()` (one small all-reduce), the plain gradients' norm is computed locally (they are the same on
    every rank), and the per-mesh norms are combined with `get_total_norm` again. Every rank gets the same total and
    scales all gradients by the same factor with torch's `clip_grads_with_norm_`, so the replicated parameters stay
    equal across ranks. Every rank must call it (it runs a collective).

    Args:
        parameters: the parameters (or a single tensor) whose `.grad` to clip, e.g. `model.parameters()`.
        max_norm: the largest total norm the gradients keep.
        norm_type: the p of the p-norm, > 0, or `float("inf")` for the largest absolute value.
        error_if_nonfinite: raise a RuntimeError if the total norm is nan or infinite, as torch's does.
        foreach: use torch's foreach kernels (None: where supported), as torch's `foreach`.

    Returns:
        The total norm of the gradients before clipping, a plain (not DTensor) 0-d tensor, equal on every rank.
    """
    from torch.distributed.tensor import DTensor
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    norm_type = float(norm_type)
    if not norm_type > 0:
        # torch combines per-tensor norms as a vector norm, which is wrong for the 0-"norm" (it would count tensors)
        raise ValueError(f"clip_grad_norm_ supports a norm_type > 0 or inf, got {norm_type}.")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    # One group per device mesh (None: plain tensors): torch's functions cannot mix DTensors with plain tensors or
    # DTensors of different meshes in one list, but each group alone is fine.
    groups: dict[object, list[torch.Tensor]] = {}
    for parameter in parameters:
        if parameter.grad is not None:
            mesh = parameter.grad.device_mesh if isinstance(parameter.grad, DTensor) else None
            groups.setdefault(mesh, []).append(parameter)
    norms = []
    for group in groups.values():
        norm = get_total_norm([p.grad for p in group], norm_type, foreach=foreach)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    # the p-norm of the per-group p-norms is the p-norm of all the gradients (and the max of maxima for inf)
    total_norm = get_total_norm(norms, norm_type, error_if_nonfinite, foreach)
    for group in groups.values():
        clip_grads_with_norm_(group, max_norm, total_norm, foreach)
    return total_norm


__all__ = ["clip_grad_norm_", "parallelize_memory_layers"]
