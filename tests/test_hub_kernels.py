"""Hub kernel repositories: layout, loading through `kernels`, fallback, and Triton parity under the interpreter."""

from __future__ import annotations

import filecmp
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memory_zoo.hub_kernels.build import build_kernel, kernel_dirs
from memory_zoo.ops import kernel_for, load_hub_kernel

TESTS = Path(__file__).parent


def test_each_kernel_exists_once_on_disk_and_its_published_tree_is_assembled(tmp_path):
    """torch-ext/ is the only copy of a kernel in the package; build/ (what `kernels` loads) is assembled from it:
    the source modules, flattened, plus metadata.json."""
    assert kernel_dirs(), "no kernel repositories found"
    for kernel_dir in kernel_dirs():
        assert not (kernel_dir / "build").exists(), f"{kernel_dir}/build is generated, not committed"
        modules = sorted(kernel_dir.glob("torch-ext/*/*.py"))
        variant = build_kernel(kernel_dir, tmp_path / kernel_dir.name / "build")
        assert sorted(p.name for p in variant.iterdir()) == sorted([m.name for m in modules] + ["metadata.json"])
        for module in modules:
            assert filecmp.cmp(module, variant / module.name, shallow=False)


def test_packaged_kernel_loads_through_kernels_package():
    kernel = load_hub_kernel("masked_mixing")
    assert kernel is not None and callable(kernel.masked_mixing)
    with pytest.raises(ValueError, match="expects weight"):
        kernel.masked_mixing(torch.zeros(2, 3), torch.zeros(1, 1, 3, 4))


def test_packaged_leaky_average_loads_and_validates_shapes():
    kernel = load_hub_kernel("leaky_average")
    assert kernel is not None and callable(kernel.leaky_average)
    with pytest.raises(ValueError, match=r"expects x \[B, T, H, D\] and decay \[H\], got \(2, 3, 4\)"):
        kernel.leaky_average(torch.zeros(2, 3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"expects x \[B, T, H, D\] and decay \[H\]"):
        kernel.leaky_average(torch.zeros(2, 3, 4, 5), torch.zeros(5))
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, D\] = \(2, 4, 5\)"):
        kernel.leaky_average(torch.zeros(2, 3, 4, 5), torch.zeros(4), torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="expects x in"):
        kernel.leaky_average(torch.zeros(2, 3, 4, 5, dtype=torch.float64), torch.zeros(4))


def test_packaged_embedding_bag_loads_and_validates_inputs():
    kernel = load_hub_kernel("embedding_bag")
    assert kernel is not None and callable(kernel.embedding_bag_sum)
    indices, weight, scores = torch.zeros(2, 3, dtype=torch.int64), torch.zeros(10, 8), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"expects indices \[N, L\] of dtype int64 or int32, got \(2, 3\) torch.float"):
        kernel.embedding_bag_sum(indices.float(), weight, scores)
    with pytest.raises(ValueError, match=r"expects indices \[N, L\]"):
        kernel.embedding_bag_sum(indices[0], weight, scores)
    with pytest.raises(ValueError, match=r"expects weight \[M, V\] in .*, got \(10, 8, 1\)"):
        kernel.embedding_bag_sum(indices, weight[..., None], scores)
    with pytest.raises(ValueError, match=r"expects weight \[M, V\] in .*torch.float64"):
        kernel.embedding_bag_sum(indices, weight.double(), scores)
    with pytest.raises(ValueError, match=r"per_sample_weights must be \[N, L\] = \(2, 3\) in .*, got \(3, 2\)"):
        kernel.embedding_bag_sum(indices, weight, scores.t())
    with pytest.raises(ValueError, match=r"per_sample_weights must be \[N, L\] = \(2, 3\)"):
        kernel.embedding_bag_sum(indices, weight, scores.long())
    with pytest.raises(ValueError, match="empty weight table"):
        kernel.embedding_bag_sum(indices, weight[:0], scores)


def test_unloadable_kernel_falls_back_with_one_log_line(caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="memory_zoo.kernels"):
        assert load_hub_kernel("no_such_kernel", "memory-zoo/no-such-kernel", "v1") is None
        assert load_hub_kernel("no_such_kernel", "memory-zoo/no-such-kernel", "v1") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "no_such_kernel kernel not used" in lines[0] and "pure-torch path" in lines[0]


def test_cpu_tensors_use_the_pure_torch_path(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kernel_for(torch.zeros(1), "masked_mixing", None, None) is None


INTERPRETER_TESTS = sorted(TESTS.glob("interpret_*.py"))


def test_every_kernel_has_an_interpreter_test():
    assert {path.name for path in INTERPRETER_TESTS} >= {f"interpret_{d.name}.py" for d in kernel_dirs()}


@pytest.mark.parametrize("test_file", INTERPRETER_TESTS, ids=lambda path: path.stem)
def test_triton_kernel_matches_reference_in_interpreter(test_file):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
