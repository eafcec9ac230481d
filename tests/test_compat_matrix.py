"""benchmarks/compat_matrix.py, its pure parts: junit parsing, rendering, versions. No venv, no pip."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compat_matrix.py"
_spec = importlib.util.spec_from_file_location("compat_matrix", SCRIPT)
compat = importlib.util.module_from_spec(_spec)
sys.modules["compat_matrix"] = compat
_spec.loader.exec_module(compat)

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="6" time="1.2">
<testcase classname="tests.test_contract" name="test_remote_code_load[memory_mosaics]" time="0.10" />
<testcase classname="tests.test_contract" name="test_cached_equals_uncached[masked_mixer-greedy]" time="0.20" />
<testcase classname="tests.test_contract" name="test_cached_equals_uncached[masked_mixer-beam-4]" time="0.20">
<failure message="AssertionError: logits differ&#10;second line">Traceback (most recent call last):
AssertionError: logits differ</failure></testcase>
<testcase classname="tests.test_contract" name="test_remote_code_load[lswt]" time="0.01">
<skipped type="pytest.skip" message="needs transformers&gt;=5.20">tests/test_contract.py:12: needs transformers&gt;=5.20</skipped>
</testcase>
<testcase classname="tests.test_contract" name="test_config_registry" time="0.01" />
<testcase classname="tests.test_contract" name="test_save_load[lswt]" time="0.01">
<error message="failed on setup with &quot;RuntimeError: boom&quot;">fixture trace</error></testcase>
</testsuite></testsuites>
"""

PIP_INDEX = """transformers (5.26.0rc1)
Available versions: 6.0.0.dev0, 5.26.0rc1, 5.25.0, 5.24.0, 5.12.1, 5.10.4, 5.2.0, 5.0.0, 5.0.0rc3, 4.57.6, 4.9.2
  INSTALLED: 5.24.0
  LATEST:    5.26.0rc1
"""


def test_parse_junit_cases():
    cases = compat.parse_junit(JUNIT)
    assert cases == {
        "memory_mosaics": {"remote_code_load": {"outcome": "passed", "message": None}},
        "masked_mixer": {
            "cached_equals_uncached-greedy": {"outcome": "passed", "message": None},
            "cached_equals_uncached-beam-4": {"outcome": "failed", "message": "AssertionError: logits differ\nsecond line"},
        },
        "lswt": {
            "remote_code_load": {"outcome": "skipped", "message": "needs transformers>=5.20"},
            "save_load": {"outcome": "error", "message": 'failed on setup with "RuntimeError: boom"'},
        },
        "*": {"config_registry": {"outcome": "passed", "message": None}},
    }
    assert compat.version_counts(cases) == {"passed": 3, "failed": 1, "error": 1, "skipped": 1, "total": 6}


def test_parse_junit_truncates_messages_and_keeps_duplicate_checks():
    long = "x" * 1000
    xml = f"""<testsuites><testsuite>
<testcase classname="a.TestOne" name="test_same[lswt]"><skipped message="{long}"/></testcase>
<testcase classname="a.TestTwo" name="test_same[lswt]"><failure>{long}</failure></testcase>
</testsuite></testsuites>"""
    checks = compat.parse_junit(xml)["lswt"]
    assert checks["same"] == {"outcome": "skipped", "message": "x" * compat.MESSAGE_CHARS}
    assert checks["a.TestTwo::same"]["outcome"] == "failed"  # message from the element's text when no attribute
    assert len(checks["a.TestTwo::same"]["message"]) == compat.MESSAGE_CHARS


@pytest.mark.parametrize(("name", "expected"), [
    ("test_cached_equals_uncached[masked_mixer-greedy]", ("masked_mixer", "cached_equals_uncached-greedy")),
    ("test_remote_code_load[memory_mosaics]", ("memory_mosaics", "remote_code_load")),
    ("test_x[lswt-a-b]", ("lswt", "x-a-b")),
    ("test_config_registry", ("*", "config_registry")),
    ("tests.test_contract", ("*", "tests.test_contract")),  # a collection error's test case
])
def test_split_test_id(name, expected):
    assert compat.split_test_id(name) == expected


def test_collection_error_keeps_the_exception():
    xml = """<testsuites><testsuite><testcase classname="" name="tests.test_contract">
<error message="collection failure">tests/test_contract.py:6: in &lt;module&gt;
    import memory_zoo
E   ValueError: Either a revision or a version must be specified.</error></testcase></testsuite></testsuites>"""
    assert compat.parse_junit(xml) == {"*": {"tests.test_contract": {
        "outcome": "error",
        "message": "collection failure: ValueError: Either a revision or a version must be specified."}}}


def results():
    """Three versions: with a failure and a skip, all passed with a --no-deps note, an install failure."""
    return {
        "5.0.0": {"requested": "5.0.0", "aliases": ["lower"], "install_ok": True, "install_note": None,
                  "returncode": 1, "cases": compat.parse_junit(JUNIT)},
        "5.25.0": {"requested": "5.25.0", "aliases": ["newest"], "install_ok": True, "returncode": 0,
                   "install_note": "installed with --no-deps (without its dependencies): ERROR: kernels",
                   "cases": {"lswt": {"save_load": {"outcome": "passed", "message": None}}}},
        "5.9.0": {"requested": "5.9.0", "aliases": [], "install_ok": False, "install_error": "no such version",
                  "returncode": None, "cases": None},
    }


def test_render_text_table():
    text = compat.render_text(results())
    lines = text.splitlines()
    assert lines[0].split() == ["architecture", "5.0.0", "(lower)", "5.25.0", "(newest)", "5.9.0"]
    rows = {line.split("  ")[0]: line for line in lines[2:]}
    assert [line.split()[0] for line in lines[2:6]] == ["lswt", "masked_mixer", "memory_mosaics", "*"]
    assert rows["lswt"].split() == ["lswt", "0/2", "(1E", "1S)", "1/1", "install", "failed"]
    assert rows["masked_mixer"].split() == ["masked_mixer", "1/2", "(1F)", "-", "install", "failed"]
    assert rows["cases passed per version"].split()[4:] == ["3/6", "(1F", "1E", "1S)", "1/1", "install", "failed"]
    assert compat.LEGEND in text
    assert "5.25.0: installed with --no-deps (without its dependencies): ERROR: kernels" in text
    assert "5.9.0: install failed: no such version" in text
    assert "5.0.0: failed cached_equals_uncached-beam-4 (masked_mixer): AssertionError: logits differ second line" in text
    assert compat.one_line("A:\n  b   c", limit=160) == "A: b c"
    assert compat.one_line("x" * 200, limit=10) == "xxxxxxx..."


def test_render_markdown_table():
    meta = {"tests": ["tests/test_contract.py"], "date": "2025-01-01T00:00:00+00:00", "python": "3.11.7",
            "torch": "2.13.0+cpu", "commit": "abc123"}
    markdown = compat.render_markdown(results(), meta)
    lines = markdown.splitlines()
    assert "Python 3.11.7" in lines[0] and "torch 2.13.0+cpu" in lines[0] and "commit abc123" in lines[0]
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| architecture | 5.0.0 (lower) | 5.25.0 (newest) | 5.9.0 |"
    assert table[1] == "| --- | :---: | :---: | :---: |"
    assert table[2] == "| lswt | 0/2 (1E 1S) | 1/1 | install failed |"
    assert table[-1] == "| **cases passed per version** | **3/6 (1F 1E 1S)** | **1/1** | **install failed** |"
    assert any(line.startswith("- 5.9.0: install failed") for line in lines)
    assert "- 5.0.0: error save_load (lswt): failed on setup with \"RuntimeError: boom\"" in lines


def test_notes_group_architectures_failing_the_same_way():
    failed = {"outcome": "failed", "message": "ValueError: Kernels are not available (0.19.1 <= version)"}
    cases = {arch: {"save_reload": dict(failed)} for arch in ("lswt", "masked_mixer")}
    cases["memory_mosaics"] = {"save_reload": {"outcome": "failed", "message": "other"}}
    versions = {"5.25.0": {"install_ok": True, "returncode": 1, "cases": cases}}
    notes = compat.table_rows(versions)[2]
    assert notes == ["5.25.0: failed save_reload (lswt, masked_mixer): ValueError: Kernels are not available "
                     "(0.19.1 <= version)", "5.25.0: failed save_reload (memory_mosaics): other"]
    assert "(0.19.1 &lt;= version)" in compat.render_markdown(versions)


def test_summary_and_exit_criteria():
    summary = compat.summarize(results())
    assert summary["failing_versions"] == ["5.0.0", "5.9.0"] and not summary["ok"]
    assert summary["per_version"]["5.25.0"] == {"passed": 1, "failed": 0, "error": 0, "skipped": 0, "total": 1}
    passing = {"5.25.0": results()["5.25.0"]}
    assert compat.summarize(passing)["ok"]
    passing["5.25.0"]["returncode"] = 5  # e.g. no tests collected
    assert not compat.summarize(passing)["ok"]


def test_lower_bound_from_setup_cfg():
    text = """[metadata]
name = memory-zoo

[options]
install_requires =
    torch>=2.4
    transformers-stream-generator>=0.1
    transformers>=5.0,<6
    huggingface_hub>=1.0
"""
    assert compat.transformers_lower_bound(text) == "5.0"
    assert compat.transformers_lower_bound(text.replace(">=5.0,<6", "<6, >= 5.12.1")) == "5.12.1"
    with pytest.raises(ValueError, match="lower bound"):
        compat.transformers_lower_bound(text.replace(">=5.0,<6", "<6"))
    with pytest.raises(ValueError, match="no transformers requirement"):
        compat.transformers_lower_bound("[options]\ninstall_requires =\n    torch\n")


def test_lower_bound_of_this_repository():
    bound = compat.transformers_lower_bound((compat.REPO / "setup.cfg").read_text())
    assert compat.release_tuple(bound) is not None


def test_newest_release_ignores_prereleases_and_other_majors():
    assert compat.available_versions(PIP_INDEX)[:3] == ["6.0.0.dev0", "5.26.0rc1", "5.25.0"]
    assert compat.newest_release(PIP_INDEX) == "5.25.0"
    assert compat.newest_release(PIP_INDEX, major=4) == "4.57.6"
    assert compat.oldest_release_at_least(PIP_INDEX, "5.0") == "5.0.0"  # not 5.0.0rc3
    assert compat.oldest_release_at_least(PIP_INDEX, "5.3") == "5.10.4"
    with pytest.raises(ValueError):
        compat.newest_release(PIP_INDEX, major=7)
    with pytest.raises(ValueError):
        compat.available_versions("ERROR: No matching distribution found for transformers")


def test_resolve_versions():
    tokens = compat.split_version_args(["lower,5.12.1", "5.24.0  newest", "5.25"])
    assert tokens == ["lower", "5.12.1", "5.24.0", "newest", "5.25"]
    assert compat.resolve_versions(tokens, "5.0", PIP_INDEX) == [
        ("5.0.0", ["lower"]), ("5.12.1", []), ("5.24.0", []), ("5.25.0", ["newest"])]  # 5.25 == 5.25.0: one entry
    assert compat.resolve_versions(["lower"], "5.0", None) == [("5.0", ["lower"])]
    with pytest.raises(ValueError):
        compat.resolve_versions(["newest"], "5.0", None)
    with pytest.raises(ValueError):
        compat.resolve_versions(["5.0.0rc1"], "5.0", PIP_INDEX)
    assert compat.same_release("5.0", "5.0.0") and not compat.same_release("5.0.1", "5.0")


def test_install_failure_reason():
    conflict = """Collecting transformers==5.25.0
ERROR: Cannot install transformers==5.25.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    transformers 5.25.0 depends on kernels<0.20 and >=0.19.1

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/
"""
    assert compat.install_failure_reason(conflict) == (
        "ERROR: Cannot install transformers==5.25.0 because these package versions have conflicting dependencies. "
        "(transformers 5.25.0 depends on kernels<0.20 and >=0.19.1)")
    missing = "ERROR: Could not find a version that satisfies the requirement kernels<0.20,>=0.19.1\nERROR: No matching"
    assert compat.install_failure_reason(missing).startswith("ERROR: Could not find a version")
    listed = ("ERROR: Could not find a version that satisfies the requirement kernels<0.20,>=0.19.1 (from "
              "transformers) (from versions: 0.1.7, 0.17.2)\nERROR: No matching distribution found for kernels")
    assert compat.install_failure_reason(listed) == (
        "ERROR: Could not find a version that satisfies the requirement kernels<0.20,>=0.19.1 (from transformers)")


def test_split_passthrough():
    assert compat.split_passthrough(["--versions", "5.12.1", "--", "-x", "-k", "lswt"]) == (
        ["--versions", "5.12.1"], ["-x", "-k", "lswt"])
    assert compat.split_passthrough(["--newest-only"]) == (["--newest-only"], [])
    args = compat.parse_args(["--versions", "5.12.1,5.24.0"])
    assert args.tests == ["tests/test_contract.py", "tests/test_lm_eval.py"] and args.timeout == 1800


def test_test_paths_are_taken_from_the_callers_directory(tmp_path):
    (tmp_path / "test_mine.py").write_text("")
    assert compat.repo_test_path("test_mine.py::test_a", tmp_path) == f"{tmp_path / 'test_mine.py'}::test_a"
    assert compat.repo_test_path("tests/test_contract.py", tmp_path) == "tests/test_contract.py"
    assert compat.repo_test_path("tests/test_contract.py", compat.REPO) == "tests/test_contract.py"
