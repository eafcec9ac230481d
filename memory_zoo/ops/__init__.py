"""The ops memory-zoo's kernels implement: each file holds the op's pure-torch reference (the ground truth, as
flash-linear-attention keeps `naive.py` beside each kernel) and its one dispatch (the Hub kernel where it loads and
works, else the pure-torch path, with one log line; see `zoo_kernels.dispatch`: the reference itself, or for masked
mixing `masked_mixing_torch`, the same products with a leaner backward). Models call the dispatching function;
tests run the kernels against the references under the Triton interpreter. These files travel with saved models.

| op | kernel (memory_zoo/hub_kernels/) | used by |
|---|---|---|
| `masked_mixing` | `masked_mixing` | Masked Mixer and the mixer stacks of the compression models |
| `leaky_average` | `leaky_average` | Memory Mosaics |
| `embedding_bag_sum` | `embedding_bag` | Memory Layers |
"""

from .embedding_bag import embedding_bag_sum, embedding_bag_sum_reference
from .leaky_average import leaky_average, leaky_average_reference
from .masked_mixing import masked_mixing, masked_mixing_reference, masked_mixing_torch
from .zoo_kernels import dispatch, kernel_for, kernel_runs_on, load_hub_kernel

__all__ = [
    "dispatch",
    "embedding_bag_sum",
    "embedding_bag_sum_reference",
    "kernel_for",
    "kernel_runs_on",
    "leaky_average",
    "leaky_average_reference",
    "load_hub_kernel",
    "masked_mixing",
    "masked_mixing_reference",
    "masked_mixing_torch",
]
