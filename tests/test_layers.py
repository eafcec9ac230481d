"""The package's shape: imports point down the layers, and every list of architectures comes from the records.

Layers, bottom up: the launcher's standard-library leaves (memory_zoo_cli.arguments, .progress) <- configuration (and
the version) <- the records and model cards <- kernels (ops) <- modeling <- conversion, metrics, LoRA <- evaluation,
retrieval <- hub <- cli <- the package root <- the launcher (memory_zoo_cli, the `memory-zoo` console script). A
module may import its own layer or any layer below, never one above; the records name model classes and converter
modules by string and resolve them on use, which is late binding, not an import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

import memory_zoo
import memory_zoo_cli
from memory_zoo.architectures import ARCHITECTURES, BY_MODEL_TYPE
from memory_zoo.conversion import _SINGLE_FILE_SOURCES, DTYPES, SOURCES
from memory_zoo.lora import LORA_TARGET_MODULES
from memory_zoo_cli import arguments

PACKAGE = Path(memory_zoo.__file__).parent
LAUNCHER = Path(memory_zoo_cli.__file__).parent
FIXTURES = Path(__file__).parent / "fixtures"

LAYERS = [  # (rank, module prefixes), bottom up
    (0, ("configuration", "_version")),
    (1, ("architectures", "model_card")),
    (2, ("hub_kernels", "ops")),
    (3, ("modeling",)),
    (4, ("conversion", "metrics", "lora")),
    (5, ("evaluation", "retrieval")),
    (6, ("hub",)),
    (7, ("cli",)),
    (8, ("",)),  # the package root
]
# The `memory-zoo` console script lives beside the package so that `--help` imports neither torch nor transformers:
# its parser and progress line use the standard library alone (below everything, memory_zoo.cli takes them), and its
# entry point imports memory_zoo.cli only to run a command (above everything).
LAUNCHER_LAYERS = {"memory_zoo_cli.arguments": -1, "memory_zoo_cli.progress": -1, "memory_zoo_cli": 9}


def rank(module: str) -> int:
    if module == "memory_zoo_cli" or module.startswith("memory_zoo_cli."):
        assert module in LAUNCHER_LAYERS, f"{module} belongs to no layer: add it to LAUNCHER_LAYERS"
        return LAUNCHER_LAYERS[module]
    name = module.removeprefix("memory_zoo").removeprefix(".")
    for value, prefixes in LAYERS:
        if any(prefix and (name == prefix or name.startswith(prefix + ".")) for prefix in prefixes):
            return value
    assert name == "", f"{module} belongs to no layer: add it to LAYERS in {Path(__file__).name}"
    return LAYERS[-1][0]


def package_modules() -> dict[str, Path]:
    found = {}
    for root, name in ((PACKAGE, "memory_zoo"), (LAUNCHER, "memory_zoo_cli")):
        for path in root.rglob("*.py"):
            relative = path.relative_to(root)
            if relative.parts[0] == "hub_kernels" and len(relative.parts) > 2:
                continue  # the kernels' own build trees are separate packages (loaded by `kernels`)
            parts = [name, *relative.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """The memory_zoo modules `module` imports: statically, or by a literal `importlib.import_module(...)`."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # `from . import x`: x may be a module
                found |= {f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                          for alias in node.names}
            else:
                found.add(target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("memory_zoo"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("memory_zoo")}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("memory_zoo")):
            found.add(node.args[0].value)
    return found


MODULES = package_modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = sorted(target for target in imports_of(module, MODULES[module]) if rank(target) > rank(module))
    assert not upward, f"{module} (layer {rank(module)}) imports {upward} from layers above it"


def test_models_and_configs_never_reach_publishing_conversion_or_the_root():
    for module, path in MODULES.items():
        if module.startswith(("memory_zoo.modeling", "memory_zoo.configuration")):
            bad = {target for target in imports_of(module, path)
                   if target == "memory_zoo" or target.startswith(("memory_zoo.hub", "memory_zoo.conversion",
                                                                    "memory_zoo.cli"))
                   and not target.startswith("memory_zoo.hub_kernels")}
            assert not bad, f"{module} imports {sorted(bad)}"


def module_level_imports(path: Path) -> set[str]:
    """The top-level names of what a module imports when it is imported (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            found.add("." if node.level else node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
    return found


def test_the_launcher_imports_the_standard_library_alone_until_a_command_runs():
    for module, path in MODULES.items():
        if module.startswith("memory_zoo_cli"):
            outside = module_level_imports(path) - set(sys.stdlib_module_names) - {"__future__", "."}
            assert not outside, f"{module} imports {sorted(outside)} on import: `memory-zoo --help` would wait for it"


def test_import_builds_the_registry_from_the_records_alone():
    code = ("import memory_zoo, json; from transformers.models.auto.configuration_auto import CONFIG_MAPPING; "
            "print(json.dumps(sorted(k for k in CONFIG_MAPPING._extra_content)))")
    registered = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert sorted(BY_MODEL_TYPE) == sorted(__import__("json").loads(registered))
    for record in ARCHITECTURES:
        assert CONFIG_MAPPING[record.model_type] is record.config_class
        config = record.config_class()
        assert type(AutoConfig.for_model(record.model_type)) is record.config_class
        for auto, name in record.auto_classes.items():  # each role names the transformers Auto class itself
            mapping = getattr(transformers, auto)._model_mapping
            assert mapping[type(config)].__name__ == name
        if record.role == "causal_lm":  # every causal LM also classifies sequences (tests/test_sequence_classification.py)
            assert record.sequence_classification_class_name is not None, record.model_type


def test_every_list_of_architectures_is_derived_from_the_records():
    assert [c for c, _, _ in memory_zoo.ARCHITECTURES] == [r.config_class for r in ARCHITECTURES if r.role != "task"]
    assert [c for c, _ in memory_zoo.TASK_MODELS] == [r.config_class for r in ARCHITECTURES if r.role == "task"]
    assert set(SOURCES) == {source for record in ARCHITECTURES for source in record.sources}
    assert _SINGLE_FILE_SOURCES == {s for r in ARCHITECTURES if not r.checkpoint_is_folder for s in r.sources}
    assert LORA_TARGET_MODULES == {record.model_type: list(record.lora_targets) for record in ARCHITECTURES}
    # The launcher's parser writes these out (it answers --help without importing the records): the same lists.
    assert list(arguments.SOURCES) == sorted(SOURCES) and list(arguments.DTYPES) == sorted(DTYPES)


@pytest.mark.parametrize("record", ARCHITECTURES, ids=lambda r: r.model_type)
def test_each_record_agrees_with_its_files(record):
    config = record.config_class()
    assert config.model_type == record.model_type
    kernel_repo = getattr(config, "kernel_repo_id", None)
    for kernel in record.kernels:
        assert (PACKAGE / "hub_kernels" / kernel).is_dir()
        assert kernel_repo == f"memory-zoo/{kernel.replace('_', '-')}"
    assert record.fsdp_units, "the model class names the blocks FSDP wraps (_no_split_modules)"
    if record.parity is not None:
        assert (Path(__file__).parent.parent / record.parity.test).is_file()
    for folder in record.research.fixtures:
        assert (FIXTURES / folder / "README.md").is_file()
        assert record.research.commit in (FIXTURES / folder / "README.md").read_text(encoding="utf-8")
        assert (FIXTURES / folder / "generate_fixtures.py").is_file(), f"{folder} has no generator script"


@pytest.mark.parametrize("folder", sorted({f for record in ARCHITECTURES for f in record.research.fixtures}))
def test_fixture_generators_take_a_research_checkout(folder):
    """Each generator runs without the research code until it is given a checkout (--research PATH)."""
    script = FIXTURES / folder / "generate_fixtures.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--research" in result.stdout, result.stderr[-2000:]


def test_one_configuration_file_per_modeling_file():
    modeling = {p.stem.removeprefix("modeling_") for p in (PACKAGE / "modeling").glob("modeling_*.py")}
    configuration = {p.stem.removeprefix("configuration_") for p in (PACKAGE / "configuration").glob("configuration_*.py")}
    assert modeling == configuration
    for record in ARCHITECTURES:
        assert record.modeling_module.removeprefix("modeling_") == record.config_class.__module__.rsplit(
            ".", 1)[-1].removeprefix("configuration_")
