"""Custom kernels laid out as Hub kernel repositories (their pure-torch references and the dispatch models use are in
`memory_zoo/ops/`).

Each sub-folder is one kernel repository: `build.toml` and the source package under `torch-ext/<name>/`, the only copy
on disk. Its published tree (`build/<variant>/`, what `kernels.get_local_kernel` and `kernels.get_kernel` load) is
assembled from the source by `build.py` when a model first loads the kernel and when `memory-zoo push-kernels`
publishes it.

| kernel | used by | what it computes |
|---|---|---|
| `masked_mixing` | Masked Mixer | `tril(W, diagonal=offset) @ U (+ bias)`, skipping the masked half; forward and backward |
| `leaky_average` | Memory Mosaics | causal leaky sum `y_t = exp(-beta_h) y_{t-1} + x_t` with an initial state, float32 accumulation; exact forward and backward |
| `embedding_bag` | Memory Layers | `out[n] = sum_j w[n, j] * table[idx[n, j]]`, float32 accumulation; deterministic backward (segmented sums over sorted indices) |
"""

from ..ops.zoo_kernels import kernel_for, kernel_runs_on, load_hub_kernel  # noqa: F401  (their home before ops/)
