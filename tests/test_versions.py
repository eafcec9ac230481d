"""The supported transformers range: declared once, agreed on by setup.cfg, enforced by name in saved remote code."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import printed_warnings, tiny_model

from memory_zoo.configuration import zoo_versions
from memory_zoo.modeling import zoo_compat

ROOT = Path(__file__).resolve().parents[1]


def test_setup_cfg_declares_the_proven_range():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    requirements = [line.strip() for line in setup["options"]["install_requires"].splitlines()]
    assert f"transformers{zoo_versions.SUPPORTED_RANGE}" in requirements


@pytest.mark.parametrize("version", ["5.19.3", "5.0.0", "4.57.6"])
def test_an_older_transformers_is_refused_with_the_range_and_the_fix(version):
    with pytest.raises(ImportError, match=r"transformers>=5\.20,<5\.26.*pip install 'transformers>=5\.20,<5\.26'"):
        zoo_versions.check_transformers_version(version)


def test_a_newer_transformers_is_noted_once_not_refused():
    with printed_warnings((zoo_versions.__name__,)) as printed:
        zoo_versions.check_transformers_version("5.99.0")
        zoo_versions.check_transformers_version("5.25.1")  # proven release: silent
    assert len(printed) == 1 and "5.99.0 is newer" in printed[0] and zoo_versions.SUPPORTED_RANGE in printed[0]


def test_release_of_reads_dev_and_post_versions():
    assert zoo_versions.release_of("5.26.0.dev0") == (5, 26)
    assert zoo_versions.release_of("5.24.0.post1") == (5, 24)
    with pytest.raises(ValueError, match="Cannot read"):
        zoo_versions.release_of("main")


def test_remote_code_under_an_unsupported_transformers_names_the_range(tmp_path):
    """A saved model loaded as remote code (memory-zoo absent) under a too-old transformers fails at AutoConfig with
    the supported range, not deep inside the model code."""
    tiny_model().save_pretrained(tmp_path / "model")
    script = textwrap.dedent(f"""
        import block_memory_zoo  # noqa: F401
        import transformers
        transformers.__version__ = "5.19.0"  # what an older install reports
        from transformers import AutoConfig
        try:
            AutoConfig.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        except ImportError as error:
            print("REFUSED:", error)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=Path(__file__).parent, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REFUSED: memory-zoo models need transformers>=5.20,<5.26, but transformers 5.19.0" in result.stdout


def test_cache_arguments_fold_to_one_name():
    marker = object()
    assert zoo_compat.take_cache_argument({"past_key_values": marker}) == {"cache": marker}
    assert zoo_compat.take_cache_argument({"cache_params": marker, "cache": None}) == {"cache": marker}
    assert zoo_compat.take_cache_argument({"x": 1}) == {"x": 1}
    assert zoo_compat.take_cache_argument({"cache": marker}, "past_key_values") == {"past_key_values": marker}
    with pytest.raises(ValueError, match="passed twice"):
        zoo_compat.take_cache_argument({"cache": marker, "past_key_values": marker})


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_constraints_pin_every_requirement_and_a_proven_transformers():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    options = setup["options"]
    requirements = options["install_requires"].splitlines() + setup["options.extras_require"]["test"].splitlines()
    names = {re.split(r"[<>=!\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
             for line in requirements if line.strip() and not line.strip().startswith("#")}
    pins = _constraints()
    assert names <= set(pins), f"not pinned in constraints.txt: {sorted(names - set(pins))}"
    pinned = zoo_versions.release_of(pins["transformers"])
    assert zoo_versions.OLDEST_SUPPORTED <= pinned <= zoo_versions.NEWEST_PROVEN


def test_readme_commands_and_ci_install_from_the_constraints():
    readme = (ROOT / "README.md").read_text()
    test_command = 'pip install torch==2.13.0 && pip install -e ".[test]" -c constraints.txt && python -m pytest -q'
    assert "pip install torch==2.13.0 && pip install -e . -c constraints.txt && python examples/quickstart.py" in readme
    assert test_command in readme
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command  # CI ends with exactly the README's test command
    assert any("compat_matrix.py --newest-only" in line for line in ci)  # after the contract on the newest release


def test_readme_shows_the_last_matrix_run():
    """The README's table is benchmarks/results/compat_matrix.md, as benchmarks/compat_matrix.py last wrote it."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- compat-matrix -->\n", 1)[1].split("<!-- /compat-matrix -->", 1)[0]
    assert block.strip() == (ROOT / "benchmarks" / "results" / "compat_matrix.md").read_text().strip()
    assert "**cases passed per version**" in block
