"""Custom kernels laid out as Hub kernel repositories, and the loader models use to pick them up.

Each sub-folder is one kernel repository: `build.toml`, the source package under `torch-ext/<name>/`, and the
published tree under `build/<variant>/` that `kernels.get_local_kernel` (or, once pushed, `kernels.get_kernel`)
loads. `python -m memory_zoo.hub_kernels.build` regenerates the published trees from the sources.

| kernel | used by | what it computes |
|---|---|---|
| `masked_mixing` | Masked Mixer | `tril(W, diagonal=offset) @ U (+ bias)`, skipping the masked half; forward and backward |
| `leaky_average` | Memory Mosaics | causal leaky sum `y_t = exp(-beta_h) y_{t-1} + x_t` with an initial state, float32 accumulation; exact forward and backward |
| `embedding_bag` | Memory Layers | `out[n] = sum_j w[n, j] * table[idx[n, j]]`, float32 accumulation; deterministic backward (segmented sums over sorted indices) |
"""

from .zoo_kernels import kernel_for, kernel_runs_on, load_hub_kernel

__all__ = ["kernel_for", "kernel_runs_on", "load_hub_kernel"]
