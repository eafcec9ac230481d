"""Which transformers releases memory-zoo works with: the contract tests, run once per release in a venv of its own.

    python benchmarks/compat_matrix.py                         # setup.cfg's lower bound, 5.22.2, 5.23.0, 5.24.0, newest
    python benchmarks/compat_matrix.py --versions 5.12.1,newest
    python benchmarks/compat_matrix.py --newest-only           # CI: the newest 5.x release only
    python benchmarks/compat_matrix.py --tests tests/test_contract.py -- -x -k masked_mixer   # extra pytest args

For each release this script
1. creates `.compat/venv-<version>` under the repository root (`python -m venv --system-site-packages`, so the
   system torch and the editable memory-zoo install stay visible) and runs `pip install transformers==<version>` in
   it; pip puts what that release needs (huggingface_hub, tokenizers, ...) into the venv, shadowing the system copies.
   A venv already built for that exact version is reused (`--rebuild` to start over). If pip's resolver refuses
   (a dependency this package index does not serve), it retries with `--no-deps` and records that, with pip's reason.
   Then it checks, inside the venv, that `transformers.__version__` is the requested one and that `memory_zoo`
   resolves to this checkout (setting PYTHONPATH to the repository root if the editable install is not visible);
2. runs `python -m pytest <--tests> -q -p no:cacheprovider --junitxml=...` in the venv (timeout: `--timeout`);
3. reads the junit XML: `test_<check>[<architecture>]` or `test_<check>[<architecture>-<variant>]` is the case
   `<check>` (or `<check>-<variant>`) of `<architecture>` (the parameter id up to its first `-`; architecture names
   use underscores); a test without a parameter id goes under the architecture `*`.

It prints a table architecture x version (`passed/total` checks; F failed, E error, S skipped) and writes it as
JSON (`--output`) and Markdown (`--markdown`, for the README). Progress goes to stderr, pip and pytest output to
`.compat/logs/`. The exit status is 1 if any case failed or errored, a test run did not finish cleanly, or an
install failed; 0 otherwise. Only the standard library is used.

`newest` in `--versions` is the newest 5.x release of `pip index versions transformers` (pre-releases ignored);
`lower` is the oldest release satisfying setup.cfg's `transformers>=X`. Run the script with the interpreter that
holds torch and the editable install (a venv's `--system-site-packages` shares its *base* interpreter's packages).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMPAT_DIR = REPO / ".compat"
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TESTS = ["tests/test_contract.py", "tests/test_lm_eval.py"]  # the model contract and lm-evaluation-harness
DEFAULT_VERSIONS = ["lower", "5.22.2", "5.23.0", "5.24.0", "newest"]  # the bounds, a middle release, both cache conventions
ALIASES = ("lower", "newest")
NO_PARAMETERS = "*"  # the architecture of a test without a parameter id
OUTCOMES = ("passed", "failed", "error", "skipped")
MESSAGE_CHARS = 300
NOTE_CHARS = 160  # a failure's message in the table's notes
INSTALL_TIMEOUT_S = 900
MARKER = "compat-install.json"  # written into a venv once its install is verified; a venv without it is rebuilt

# Cases of one version: {architecture: {check: {"outcome": ..., "message": ...}}}.
Cases = dict[str, dict[str, dict[str, Any]]]


# ----------------------------------------------------------------------------------------------------------------------
# Versions (pure)


def release_tuple(version: str) -> tuple[int, ...] | None:
    """The release numbers of a final release (`5.12.1` -> (5, 12, 1); a `.postN` suffix is allowed), trailing zeros
    dropped so that `5.0` and `5.0.0` compare equal; None for pre-, dev- and local releases (`5.0.0rc1`)."""
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)(?:\.post\d+)?", version.strip())
    if match is None:
        return None
    numbers = [int(part) for part in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def same_release(a: str, b: str) -> bool:
    """Whether two version strings name the same final release (`5.0` == `5.0.0`)."""
    ta, tb = release_tuple(a), release_tuple(b)
    return ta is not None and ta == tb


def transformers_lower_bound(setup_cfg_text: str) -> str:
    """The `X` of the `transformers>=X` requirement in `[options] install_requires` of a setup.cfg text."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(setup_cfg_text)
    requires = parser.get("options", "install_requires", fallback="")
    for line in requires.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        match = re.fullmatch(r"transformers\s*(?:\[[^\]]*\])?\s*([<>=!~].*)?", line, flags=re.IGNORECASE)
        if match is None:
            continue
        for specifier in (match.group(1) or "").split(","):
            bound = re.fullmatch(r">=\s*([\w.]+)", specifier.strip())
            if bound:
                return bound.group(1)
        raise ValueError(f"the transformers requirement has no '>=' lower bound: {line!r}")
    raise ValueError("setup.cfg [options] install_requires has no transformers requirement")


def available_versions(index_output: str) -> list[str]:
    """The versions listed by `pip index versions <package>` (its `Available versions:` line), as printed."""
    for line in index_output.splitlines():
        if line.strip().startswith("Available versions:"):
            return [v.strip() for v in line.split(":", 1)[1].split(",") if v.strip()]
    raise ValueError("no 'Available versions:' line in the pip index output")


def newest_release(index_output: str, major: int = 5) -> str:
    """The newest final release `major.x` in a `pip index versions` output (pre-releases and other majors ignored)."""
    releases = [(release_tuple(v), v) for v in available_versions(index_output)]
    candidates = [(t, v) for t, v in releases if t is not None and t[0] == major]
    if not candidates:
        raise ValueError(f"no final {major}.x release in the pip index output")
    return max(candidates)[1]


def oldest_release_at_least(index_output: str, bound: str) -> str | None:
    """The oldest final release `>= bound` in a `pip index versions` output, or None."""
    floor = release_tuple(bound)
    if floor is None:
        raise ValueError(f"not a release version: {bound!r}")
    releases = [(release_tuple(v), v) for v in available_versions(index_output)]
    candidates = [(t, v) for t, v in releases if t is not None and t >= floor]
    return min(candidates)[1] if candidates else None


def split_version_args(values: list[str]) -> list[str]:
    """`--versions` values, each space- or comma-separated, as one list of tokens (duplicates kept)."""
    return [token for value in values for token in re.split(r"[\s,]+", value) if token]


def resolve_versions(tokens: list[str], lower_bound: str, index_output: str | None) -> list[tuple[str, list[str]]]:
    """Version tokens -> [(version, aliases)], the aliases (`lower`, `newest`) resolved, one entry per release, sorted
    from oldest to newest. `lower` falls back to the bound itself when there is no index output."""
    resolved: dict[tuple[int, ...], tuple[str, list[str]]] = {}
    for token in tokens:
        alias = token.lower()
        if alias == "newest":
            if index_output is None:
                raise ValueError("'newest' needs the output of pip index versions")
            version = newest_release(index_output, major=(release_tuple(lower_bound) or (5,))[0])
        elif alias == "lower":
            version = (oldest_release_at_least(index_output, lower_bound) if index_output is not None else None)
            version = version or lower_bound
        else:
            version = token
            alias = None
        key = release_tuple(version)
        if key is None:
            raise ValueError(f"not a final release version: {token!r}")
        entry = resolved.setdefault(key, (version, []))
        if alias is not None and alias not in entry[1]:
            entry[1].append(alias)
    return [resolved[key] for key in sorted(resolved)]


def install_failure_reason(pip_output: str) -> str:
    """The first line of pip's reason for refusing an install: its first `ERROR:` line (without the list of the
    versions it did find), followed (for a resolver conflict) by the first `... depends on ...` line that says which
    requirement could not be met."""
    lines = [re.sub(r" \(from versions: [^)]*\)", "", line.strip()) for line in pip_output.splitlines() if line.strip()]
    error = next((line for line in lines if line.startswith("ERROR:")), None)
    cause = next((line for line in lines if " depends on " in line), None)
    if error is None:
        return cause or (lines[-1] if lines else "pip failed without output")
    return f"{error} ({cause})" if cause and "conflicting dependencies" in error else error


# ----------------------------------------------------------------------------------------------------------------------
# junit XML and the cases (pure)


def split_test_id(name: str) -> tuple[str, str]:
    """(architecture, check) of a junit test name: `test_cached_equals_uncached[masked_mixer-greedy]` ->
    (`masked_mixer`, `cached_equals_uncached-greedy`); `test_remote_code_load[memory_mosaics]` ->
    (`memory_mosaics`, `remote_code_load`); `test_config_registry` -> (`*`, `config_registry`)."""
    function, bracket, parameters = name.partition("[")
    check = function.removeprefix("test_") or function
    if not bracket:
        return NO_PARAMETERS, check
    parameters = parameters.removesuffix("]")
    architecture, dash, variant = parameters.partition("-")
    if not architecture:
        return NO_PARAMETERS, f"{check}[{parameters}]"
    return architecture, f"{check}-{variant}" if dash else check


def _message(element: ET.Element) -> str:
    """The first MESSAGE_CHARS characters of a failure/error/skipped element's message (else its text). pytest's
    bare `collection failure` gets the exception line of its traceback (the last line starting with `E `)."""
    text = (element.get("message") or element.text or "").strip()
    if text == "collection failure":
        raised = [line[1:].strip() for line in (element.text or "").splitlines() if line.startswith("E ")]
        if raised:
            text = f"{text}: {raised[-1]}"
    return text[:MESSAGE_CHARS]


def parse_junit(xml_text: str) -> Cases:
    """The cases of a pytest junit XML report: {architecture: {check: {"outcome", "message"}}}. A test case with a
    `failure` is failed, else with an `error` error (e.g. a fixture or collection error), else with `skipped` skipped
    (xfail included), else passed. A check met twice (same name in two classes or files) gets the class as prefix."""
    root = ET.fromstring(xml_text)
    cases: Cases = {}
    for testcase in root.iter("testcase"):
        architecture, check = split_test_id(testcase.get("name", ""))
        outcome, message = "passed", None
        for tag, result in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = testcase.find(tag)
            if element is not None:
                outcome, message = result, _message(element)
                break
        checks = cases.setdefault(architecture, {})
        if check in checks:
            check = f"{testcase.get('classname', '')}::{check}"
        checks[check] = {"outcome": outcome, "message": message}
    return cases


def count_outcomes(checks: dict[str, dict[str, Any]]) -> dict[str, int]:
    """{passed, failed, error, skipped, total} of a {check: case} mapping."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for case in checks.values():
        counts[case["outcome"]] += 1
    counts["total"] = len(checks)
    return counts


def version_counts(cases: Cases) -> dict[str, int]:
    """{passed, failed, error, skipped, total} over every architecture of one version."""
    counts = dict.fromkeys((*OUTCOMES, "total"), 0)
    for checks in cases.values():
        for key, value in count_outcomes(checks).items():
            counts[key] += value
    return counts


def version_ok(result: dict[str, Any]) -> bool:
    """A version passes when it installed, pytest exited 0 and no case failed or errored."""
    counts = version_counts(result.get("cases") or {})
    return (result.get("install_ok", False) and result.get("returncode") == 0
            and counts["failed"] == 0 and counts["error"] == 0)


def summarize(versions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-version counts, the versions that did not pass, and whether all passed."""
    per_version = {version: version_counts(result.get("cases") or {}) for version, result in versions.items()}
    failing = [version for version, result in versions.items() if not version_ok(result)]
    return {"per_version": per_version, "failing_versions": failing, "ok": not failing}


# ----------------------------------------------------------------------------------------------------------------------
# Rendering (pure)


def format_cell(counts: dict[str, int]) -> str:
    """`passed/total`, then the failed (F), errored (E) and skipped (S) counts where there are any."""
    marks = " ".join(f"{counts[key]}{key[0].upper()}" for key in ("failed", "error", "skipped") if counts[key])
    return f"{counts['passed']}/{counts['total']}" + (f" ({marks})" if marks else "")


def labelled(version: str, aliases: list[str]) -> str:
    """A version with its aliases, e.g. `5.25.0 (newest)`."""
    return f"{version} ({', '.join(aliases)})" if aliases else version


def column_title(version: str, result: dict[str, Any]) -> str:
    """A table column's title: the version and its aliases, e.g. `5.25.0 (newest)`."""
    return labelled(version, result.get("aliases") or [])


def _no_results(result: dict[str, Any]) -> str:
    """What a version's cells say when its tests did not report: install failed, timeout or no report."""
    if not result.get("install_ok", False):
        return "install failed"
    if result.get("timed_out"):
        return "timeout"
    return "no report"


def one_line(message: str | None, limit: int = NOTE_CHARS) -> str:
    """A message on one line (whitespace runs collapsed), cut to `limit` characters with an ellipsis."""
    text = " ".join((message or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def table_rows(versions: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, notes) of the matrix: one row per architecture (`*` last), then the per-version totals row
    `cases passed per version`; the notes say what deserves a footnote (install notes, exit codes, and each failed
    or errored check with its message, the architectures where it failed the same way in one note)."""
    architectures = sorted({a for result in versions.values() for a in (result.get("cases") or {})},
                           key=lambda a: (a == NO_PARAMETERS, a))
    header = ["architecture", *(column_title(v, r) for v, r in versions.items())]
    rows = []
    for architecture in architectures:
        row = [architecture]
        for result in versions.values():
            cases = result.get("cases")
            if cases is None:
                row.append(_no_results(result))
            elif architecture in cases:
                row.append(format_cell(count_outcomes(cases[architecture])))
            else:
                row.append("-")
        rows.append(row)
    totals = ["cases passed per version"]
    for result in versions.values():
        cases = result.get("cases")
        totals.append(_no_results(result) if cases is None else format_cell(version_counts(cases)))
    rows.append(totals)
    notes = []
    for version, result in versions.items():
        for key in ("install_note", "run_note"):
            if result.get(key):
                notes.append(f"{version}: {result[key]}")
        if not result.get("install_ok", False):
            notes.append(f"{version}: install failed: {result.get('install_error', '?')}")
            continue
        if result.get("timed_out"):
            notes.append(f"{version}: pytest did not finish within {result.get('timeout_s')} s")
        elif result.get("returncode") not in (0, None) and not version_counts(result.get("cases") or {})["failed"]:
            notes.append(f"{version}: pytest exited with status {result['returncode']}")
        same: dict[tuple[str, str, str], list[str]] = {}  # (outcome, check, message) -> architectures
        for architecture, checks in (result.get("cases") or {}).items():
            for check, case in checks.items():
                if case["outcome"] in ("failed", "error"):
                    same.setdefault((case["outcome"], check, one_line(case["message"])), []).append(architecture)
        for (outcome, check, message), architectures_hit in same.items():
            notes.append(f"{version}: {outcome} {check} ({', '.join(architectures_hit)}): {message}")
    return header, rows, notes


LEGEND = "Cells: passed/total checks; F failed, E error, S skipped."


def render_text(versions: dict[str, dict[str, Any]]) -> str:
    """The matrix as a plain-text table with aligned columns, the legend and the notes."""
    header, rows, notes = table_rows(versions)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    out = [line(header), line(["-" * width for width in widths])]
    out += [line(row) for row in rows[:-1]]
    out += [line(["-" * width for width in widths]), line(rows[-1]), "", LEGEND]
    out += [f"  {note}" for note in notes]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    """Text for a Markdown table cell or list item: pipes escaped, `<` as an entity (no stray HTML)."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def render_markdown(versions: dict[str, dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    """The matrix as a Markdown table (totals row in bold), with the run's facts above and the notes below."""
    header, rows, notes = table_rows(versions)
    out = []
    if meta:
        facts = [f"`{' '.join(meta.get('tests', []))}`", meta.get("date", ""), f"Python {meta.get('python', '?')}",
                 f"torch {meta.get('torch', '?')}"]
        if meta.get("commit"):
            facts.append(f"commit {meta['commit']}")
        out += [f"transformers compatibility of memory-zoo: {', '.join(f for f in facts if f)}.", ""]
    out.append("| " + " | ".join(_md(cell) for cell in header) + " |")
    out.append("|" + "|".join([" --- "] + [" :---: "] * (len(header) - 1)) + "|")
    for row in rows[:-1]:
        out.append("| " + " | ".join(_md(cell) for cell in row) + " |")
    out.append("| " + " | ".join(f"**{_md(cell)}**" for cell in rows[-1]) + " |")
    out += ["", LEGEND]
    if notes:
        out += [""] + [f"- {_md(note)}" for note in notes]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# Processes, venvs, pip, pytest


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[compat {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def relative(path: Path) -> str:
    """A path relative to the repository root where it lies under it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run_command(command: list[str], log: Path, timeout: float, cwd: Path = REPO,
                env: dict[str, str] | None = None) -> tuple[int | None, str, float]:
    """Run `command` with its output appended to `log`; (exit status or None on timeout, its output, seconds).
    It runs in a session of its own so that a timeout kills it with everything it started."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "a") as handle:
        handle.write("$ " + " ".join("<script>" if "\n" in part else part for part in command) + "\n")
        handle.flush()
        offset = handle.tell()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
    with open(log) as handle:
        handle.seek(offset)
        output = handle.read()
    return returncode, output, time.monotonic() - start


def pip_index_output() -> str:
    """`pip index versions transformers` of the running interpreter."""
    command = [sys.executable, "-m", "pip", "index", "versions", "transformers"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {install_failure_reason(completed.stdout + completed.stderr)}")
    return completed.stdout


VERIFY = """
import importlib.metadata as md, importlib.util, json, sys
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
facts = {"python": sys.version.split()[0], "huggingface_hub": version("huggingface_hub"),
         "tokenizers": version("tokenizers"), "torch": version("torch")}
try:
    import transformers
    facts["transformers"] = transformers.__version__
    facts["transformers_path"] = transformers.__file__
except Exception as error:
    facts["transformers_error"] = f"{type(error).__name__}: {error}"
spec = importlib.util.find_spec("memory_zoo")
facts["memory_zoo_path"] = spec.origin if spec else None
print(json.dumps(facts))
"""


def verify_venv(python: Path, version: str, log: Path) -> tuple[dict[str, Any], str | None, dict[str, str]]:
    """Check inside a venv that `transformers.__version__ == version` and that `memory_zoo` is this checkout's
    (first as installed, then with PYTHONPATH=<repo>); (facts, the problem or None, the environment to run with)."""
    env = dict(os.environ)
    expected = (REPO / "memory_zoo" / "__init__.py").resolve()
    facts: dict[str, Any] = {}
    for attempt in ("installed", "pythonpath"):
        if attempt == "pythonpath":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        with tempfile.TemporaryDirectory() as outside:  # not the repository: its root must not be on sys.path
            returncode, output, _ = run_command([str(python), "-c", VERIFY], log, 300, cwd=Path(outside), env=env)
        if returncode != 0:
            return {}, f"the version check failed in the venv (status {returncode}): {output.strip()[-300:]}", env
        facts = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
        facts["pythonpath_set"] = attempt == "pythonpath"
        if "transformers_error" in facts:
            return facts, f"import transformers failed: {facts['transformers_error']}", env
        if not same_release(facts["transformers"], version):
            return facts, f"transformers {facts['transformers']} is imported, not {version}", env
        if facts["memory_zoo_path"] and Path(facts["memory_zoo_path"]).resolve() == expected:
            return facts, None, env
    return facts, f"memory_zoo resolves to {facts.get('memory_zoo_path')}, not {expected}", env


def create_and_install(venv: Path, version: str, log: Path) -> dict[str, Any]:
    """A fresh venv with `transformers==version`, retried with `--no-deps` if pip refuses; the install facts."""
    if venv.exists():
        shutil.rmtree(venv)
    progress(f"  creating {relative(venv)} (--system-site-packages)")
    returncode, output, _ = run_command([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], log, 600)
    if returncode != 0:
        return {"install_ok": False, "install_error": f"python -m venv failed: {install_failure_reason(output)}"}
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--progress-bar", "off", f"transformers=={version}"]
    progress(f"  pip install transformers=={version} (log: {relative(log)})")
    returncode, output, seconds = run_command(pip, log, INSTALL_TIMEOUT_S)
    if returncode == 0:
        progress(f"  installed in {seconds:.1f} s")
        return {"install_ok": True, "install_note": None}
    reason = install_failure_reason(output) if returncode is not None else f"timeout after {INSTALL_TIMEOUT_S} s"
    progress(f"  pip refused ({reason}); retrying with --no-deps")
    returncode, output, seconds = run_command([*pip[:4], "--no-deps", *pip[4:]], log, INSTALL_TIMEOUT_S)
    if returncode != 0:
        second = install_failure_reason(output) if returncode is not None else "timeout"
        return {"install_ok": False, "install_error": f"{reason}; with --no-deps: {second}"}
    progress(f"  installed without its dependencies in {seconds:.1f} s")
    return {"install_ok": True, "install_note": f"installed with --no-deps (without its dependencies): {reason}"}


def prepare_venv(version: str, compat_dir: Path, rebuild: bool) -> tuple[dict[str, Any], dict[str, str] | None]:
    """The venv of `version`, reused when built and verified before for that exact version (and this base
    interpreter), else (re)built; (install facts for the results, the environment to run pytest with or None)."""
    venv = compat_dir / f"venv-{version}"
    python, marker = venv / "bin" / "python", venv / MARKER
    log = compat_dir / "logs" / f"{version}-install.log"
    base = str(Path(sys.executable).resolve())
    previous = None
    if not rebuild and marker.exists() and python.exists():
        with contextlib.suppress(ValueError, OSError):
            previous = json.loads(marker.read_text())
        if not previous or previous.get("requested") != version or previous.get("base_python") != base:
            previous = None
    for attempt in ("reuse", "build") if previous else ("build",):
        if attempt == "reuse":
            progress(f"  reusing {relative(venv)}")
            info = {"install_ok": True, "install_note": previous.get("install_note")}
        else:
            log.unlink(missing_ok=True)
            info = create_and_install(venv, version, log)
            if not info["install_ok"]:  # nothing to reuse: the venv goes, the log stays
                shutil.rmtree(venv, ignore_errors=True)
                return {**info, "install_log": relative(log)}, None
        facts, problem, env = verify_venv(python, version, log)
        info.update(venv=relative(venv), install_log=relative(log), reused_venv=attempt == "reuse",
                    environment=facts, installed=facts.get("transformers"))
        if problem is None:
            if "kernels" in (info["install_note"] or ""):
                # From 5.25 on, from_pretrained kernelizes every model by default and raises when the installed
                # `kernels` is outside the range transformers needs; with that range unserved here, the run switches
                # transformers' own Hub-kernel integration off (memory-zoo's kernels have their own fallback).
                env = {**env, "USE_HUB_KERNELS": "0"}
                info["run_note"] = ("run with USE_HUB_KERNELS=0: the kernels release this transformers requires "
                                    "is not installed, and from_pretrained refuses to load any model without it")
            if attempt == "build":
                marker.write_text(json.dumps({"requested": version, "base_python": base,
                                              "install_note": info["install_note"],
                                              "created": datetime.now(UTC).isoformat(timespec="seconds")}))
            progress(f"  transformers {facts['transformers']}, huggingface_hub {facts['huggingface_hub']}, "
                     f"tokenizers {facts['tokenizers']}, torch {facts['torch']}"
                     + (" (PYTHONPATH set to the repository)" if facts["pythonpath_set"] else ""))
            return info, env
        progress(f"  check failed: {problem}" + ("; rebuilding" if attempt == "reuse" else ""))
        marker.unlink(missing_ok=True)
        info.update(install_ok=False, install_error=problem)
    return info, None


def run_tests(version: str, python: Path, env: dict[str, str], tests: list[str], extra: list[str], timeout: float,
              compat_dir: Path) -> dict[str, Any]:
    """pytest on `tests` in the venv; its exit status, duration and cases (None without a junit report)."""
    log = compat_dir / "logs" / f"{version}-pytest.log"
    log.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="compat-junit-") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [str(python), "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *extra]
        progress(f"  pytest {' '.join(tests)} (timeout {timeout:.0f} s, log: {relative(log)})")
        returncode, output, seconds = run_command(command, log, timeout, env=env)
        cases = None
        if junit.exists():
            try:
                cases = parse_junit(junit.read_text())
            except ET.ParseError as error:
                progress(f"  unreadable junit report: {error}")
    lines = [line for line in output.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    progress(f"  pytest exited with {returncode if returncode is not None else 'timeout'} in {seconds:.1f} s: {summary}")
    return {"returncode": returncode, "timed_out": returncode is None, "timeout_s": timeout,
            "test_duration_s": round(seconds, 1), "pytest_summary": summary, "pytest_log": relative(log),
            "cases": cases}


def git_commit() -> str | None:
    """The checkout's short commit, with `+dirty` when there are uncommitted changes; None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def package_version(name: str) -> str | None:
    """The installed version of a distribution in the running interpreter, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this script's arguments, the extra pytest arguments after the first `--`)."""
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (without the pytest arguments after `--`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] [-- extra pytest arguments]")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--versions", nargs="+", metavar="VERSION",
                       help="transformers versions, space- or comma-separated; `lower` (setup.cfg's lower bound) and "
                            f"`newest` (newest 5.x on the index) allowed (default: {' '.join(DEFAULT_VERSIONS)})")
    which.add_argument("--newest-only", action="store_true", help="run the newest 5.x release only (for CI)")
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, metavar="PATH",
                        help=f"test files or node ids to run (default: {' '.join(DEFAULT_TESTS)})")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per version's test run (default: 1800)")
    parser.add_argument("--output", type=Path, default=RESULTS / "compat_matrix.json",
                        help="JSON results (default: benchmarks/results/compat_matrix.json)")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "compat_matrix.md",
                        help="Markdown table (default: benchmarks/results/compat_matrix.md)")
    parser.add_argument("--compat-dir", type=Path, default=COMPAT_DIR,
                        help="where the venvs and logs go (default: .compat/ in the repository root)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the venvs even where one can be reused")
    return parser.parse_args(argv)


def repo_test_path(test: str, cwd: Path) -> str:
    """A `--tests` entry for pytest run from the repository root: a path (or `path::node` id) that exists relative
    to the caller's working directory becomes absolute; anything else is taken as relative to the repository."""
    path, sep, node = test.partition("::")
    candidate = (cwd / path).resolve()
    if cwd.resolve() == REPO or not path or not candidate.exists():
        return test
    return str(candidate) + sep + node


def main(argv: list[str] | None = None) -> int:
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = parse_args(own)
    compat_dir = args.compat_dir.resolve()
    args.tests = [repo_test_path(test, Path.cwd()) for test in args.tests]
    if sys.prefix != sys.base_prefix:
        progress(f"warning: running inside a venv ({sys.prefix}); the compat venvs share the packages of its base "
                 f"interpreter {sys.base_prefix}, not this venv's")
    lower_bound = transformers_lower_bound((REPO / "setup.cfg").read_text())
    tokens = ["newest"] if args.newest_only else split_version_args(args.versions or DEFAULT_VERSIONS)
    index_output = None
    if any(token.lower() in ALIASES for token in tokens):
        progress("pip index versions transformers")
        try:
            index_output = pip_index_output()
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            if any(token.lower() == "newest" for token in tokens):
                progress(f"cannot resolve 'newest': {error}")
                return 2
            progress(f"pip index versions failed ({error}); 'lower' is {lower_bound} as written in setup.cfg")
    try:
        versions = resolve_versions(tokens, lower_bound, index_output)
    except ValueError as error:
        progress(f"error: {error}")
        return 2
    progress(f"transformers versions: {', '.join(labelled(v, a) for v, a in versions)}; tests: {' '.join(args.tests)}"
             + (f"; extra pytest args: {' '.join(extra)}" if extra else ""))

    results: dict[str, dict[str, Any]] = {}
    for number, (version, aliases) in enumerate(versions, 1):
        progress(f"[{number}/{len(versions)}] transformers {labelled(version, aliases)}")
        start = time.monotonic()
        result: dict[str, Any] = {"requested": version, "aliases": aliases, "installed": None}
        install, env = prepare_venv(version, compat_dir, args.rebuild)
        result.update(install)
        result["install_duration_s"] = round(time.monotonic() - start, 1)
        if env is None:
            result.update(returncode=None, cases=None)
        else:
            python = compat_dir / f"venv-{version}" / "bin" / "python"
            result.update(run_tests(version, python, env, args.tests, extra, args.timeout, compat_dir))
        result["duration_s"] = round(time.monotonic() - start, 1)
        counts = version_counts(result.get("cases") or {})
        progress(f"  transformers {version}: {'ok' if version_ok(result) else 'FAILED'}, {counts['passed']}/"
                 f"{counts['total']} cases passed, {result['duration_s']:.1f} s in all")
        results[version] = result

    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": package_version("torch"), "transformers_system": package_version("transformers"),
            "commit": git_commit(), "tests": args.tests, "pytest_args": extra, "platform": platform.platform(),
            "setup_cfg_lower_bound": lower_bound}
    summary = summarize(results)
    report = {**meta, "versions": results, "summary": summary}
    for path in (args.output, args.markdown):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.markdown.write_text(render_markdown(results, meta))
    print(render_text(results), end="")
    progress(f"wrote {relative(args.output)} and {relative(args.markdown)}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
