"""benchmarks/research_side_by_side.py: the command line without research code (always), and its smoke scale against
the research checkouts found under ``$MEMORY_ZOO_RESEARCH_ROOT`` (skipped when that is unset or holds none)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "research_side_by_side.py"
ARCHITECTURES = ("masked-mixer", "memory-mosaics", "variable-memory-mixer", "lswt", "memory-layers")
# option of the script -> folder names a checkout may have under MEMORY_ZOO_RESEARCH_ROOT (the repository's name
# first; `git clone URL NAME` checkouts of the fixture READMEs second)
CHECKOUTS = {
    "--masked-mixers": ("maskedmixers",),
    "--memory-mosaics": ("MemoryMosaics",),
    "--memorymodels": ("memorymodels",),
    "--lswt": ("memory-transformer-pt4", "lswt-head"),
    "--memory-layers": ("memory",),
}


def run_script(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict]:
    output = tmp_path / "side_by_side.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(output), *options],
                            capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(output.read_text())


def test_without_research_paths_every_architecture_is_skipped(tmp_path: Path) -> None:
    result, report = run_script(tmp_path)
    assert report["architectures"] == {}
    skipped = {item["architecture"]: item["reason"] for item in report["skipped"]}
    assert set(skipped) == set(ARCHITECTURES)
    for option in CHECKOUTS:
        assert any(option in reason for reason in skipped.values()), option
        assert f"no {option} PATH given" in result.stdout
    assert report["settings"]["quick"] is True and report["machine"]["torch"]
    assert not (tmp_path / "side_by_side.png").exists()  # nothing measured, nothing to plot


def research_options() -> list[str]:
    root = os.environ.get("MEMORY_ZOO_RESEARCH_ROOT")
    if not root:
        pytest.skip("MEMORY_ZOO_RESEARCH_ROOT is not set (a folder holding checkouts of the research repositories "
                    f"under their names: {', '.join(names[0] for names in CHECKOUTS.values())})")
    if not Path(root).is_dir():
        pytest.skip(f"MEMORY_ZOO_RESEARCH_ROOT={root} is not a folder")
    options = []
    for option, names in CHECKOUTS.items():
        folder = next((Path(root) / name for name in names if (Path(root) / name).is_dir()), None)
        if folder is not None:
            options += [option, str(folder)]
    if not options:
        pytest.skip(f"MEMORY_ZOO_RESEARCH_ROOT={root} holds none of the checkouts "
                    f"{', '.join(name for names in CHECKOUTS.values() for name in names)}")
    return options


def test_quick_run_against_the_research_checkouts(tmp_path: Path) -> None:
    options = research_options()
    result, report = run_script(tmp_path, *options)
    given = {option for option in options if option.startswith("--")}
    assert len(report["architectures"]) == len(given)
    for key, entry in report["architectures"].items():
        if entry["status"].startswith("skipped:"):  # e.g. a package the research code needs is not installed here
            assert any(item["architecture"] == key for item in report["skipped"])
            continue
        assert entry["status"] == "ok", (key, entry["status"])
        assert [row["context"] for row in entry["agreement"]] == report["settings"]["contexts"]
        assert all(row["allclose_atol_rtol_1e-4"] for row in entry["agreement"]), (key, entry["agreement"])
        for row in entry["decoding"]:
            assert row["tokens_identical"] is True, (key, row)
            assert row["research_seconds"] > 0 and row["ours_seconds"] > 0 and row["time_ratio"] > 0
        assert [row["length"] for row in entry["training"]] == report["settings"]["lengths"]
        for row in entry["training"]:
            assert row["research"]["status"] == "ok" and row["ours"]["status"] == "ok", (key, row)
            assert row["time_ratio"] > 0 and row["peak_ratio"] > 0
            assert row["research"]["peak_method"] in ("vm_hwm_after_reset", "ru_maxrss")
            assert row["loss_abs_diff"] < 1e-3, (key, row)  # same weights, same inputs: the same loss
    if any(entry["status"] == "ok" for entry in report["architectures"].values()):
        assert (tmp_path / "side_by_side.png").stat().st_size > 0
        assert "research / ours" in result.stdout
