"""Publishing to a Hub: model repositories (`memory-zoo push`) and kernel repositories.

* :func:`push_model` publishes a saved model folder (weights, tokenizer, remote code, ``conversion.json``) with
  the card of :func:`memory_zoo.model_card.model_card`; ``model.push_to_hub(repo_id)`` goes through
  :func:`memory_zoo.model_card.push_pretrained`, so it publishes the same.
* :func:`push_kernel` publishes ``memory_zoo/hub_kernels/<name>`` as a Hub kernel repository (repo type
  ``kernel``, the build tree on branch ``v<major>``), which models then load with
  ``kernels.get_kernel(repo_id, revision=...)``.

Every function takes ``endpoint`` (default: ``HF_ENDPOINT``, else huggingface.co) and ``token`` (default: the
stored login or ``HF_TOKEN``), so the same code publishes to the Hub, a private Hub, or the loopback test Hub.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCardData

from ._version import __version__
from .architectures import ARCHITECTURES
from .configuration.zoo_config import KERNEL_ORGANIZATION
from .hub_kernels.build import KERNELS_ROOT, build_kernel, kernel_dirs
from .model_card import (  # noqa: F401  (re-exported: their home before model_card.py)
    CARD_MARKER,
    DEFAULT_LICENSE,
    TOKENIZER_FILES,
    _is_generated,
    check_model_dir,
    model_card,
    push_pretrained,
)

# The organisation that publishes memory-zoo's kernels (one place: configuration/zoo_config.py); `build.toml`
# ([general.hub] repo-id) names each repository, and the configs' `kernel_repo_id` defaults are
# `zoo_config.default_kernel_repo(name)` (a test keeps the two in agreement).
DEFAULT_ORGANIZATION = KERNEL_ORGANIZATION
_IGNORED = ["__pycache__/", "*.pyc", ".ipynb_checkpoints/"]


def push_model(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    license: str | None = None,  # noqa: A002
    commit_message: str | None = None,
    overwrite_card: bool | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Publish a saved model folder (weights, config, tokenizer, remote code, ``conversion.json``) with a model card.

    Args:
        model_dir: folder written by ``save_pretrained`` or ``memory-zoo convert``.
        repo_id: ``organisation/name`` (created if missing).
        private: create the repository private (ignored if it exists).
        token: Hub token (default: the stored login / ``HF_TOKEN``).
        license: license of the card (see :func:`model_card`).
        commit_message: message of the upload commit.
        overwrite_card: ``None`` (default) regenerates README.md if memory-zoo wrote it and keeps a hand-written one;
            ``True`` always writes a fresh card; ``False`` never replaces an existing README.md.
        revision: branch to push to (default ``main``).
        endpoint: Hub URL (default ``HF_ENDPOINT`` or huggingface.co).

    Returns:
        The upload's ``CommitInfo`` (``.oid`` is the commit sha to pin).
    """
    model_dir = check_model_dir(model_dir)
    readme = model_dir / "README.md"
    existing = readme.read_text(encoding="utf-8") if readme.is_file() else None
    if existing is None or overwrite_card or (overwrite_card is None and _is_generated(existing)):
        readme.write_text(model_card(model_dir, repo_id, license=license), encoding="utf-8")
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=model_dir, revision=revision, ignore_patterns=_IGNORED,
                             commit_message=commit_message or f"Upload {model_dir.name} with memory-zoo {__version__}")



# ---------------------------------------------------------------------------------------------------------------
# Kernel repositories
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelPush:
    """Where :func:`push_kernel` published a kernel: pin ``commit`` (or ``branch``) as a model's ``kernel_revision``."""

    name: str
    repo_id: str
    branch: str
    commit: str


def kernel_dir(name: str) -> Path:
    """The folder of kernel ``name`` (``masked_mixing`` or its Hub name ``masked-mixing``) under hub_kernels/."""
    folder = KERNELS_ROOT / name.replace("-", "_")
    if not (folder / "build.toml").is_file():
        known = ", ".join(d.name for d in kernel_dirs())
        raise ValueError(f"Unknown kernel {name!r}; memory-zoo has: {known}.")
    return folder


def _build_info(name: str) -> dict:
    return tomllib.loads((kernel_dir(name) / "build.toml").read_text(encoding="utf-8"))["general"]


def kernel_repo_id(name: str, organization: str | None = None) -> str:
    """Hub repository of kernel ``name``: ``build.toml``'s ``[general.hub] repo-id``, in ``organization`` if given."""
    general = _build_info(name)
    default = general.get("hub", {}).get("repo-id") or f"{DEFAULT_ORGANIZATION}/{general['name']}"
    return f"{organization}/{default.split('/', 1)[1]}" if organization else default


def _kernel_card(name: str, repo_id: str, general: dict) -> str:
    data = ModelCardData(license=general["license"].lower(), tags=["kernels", "memory-zoo", "triton"])
    python_name = general["name"].replace("-", "_")
    doc = (kernel_dir(name) / "torch-ext" / python_name / "__init__.py").read_text(encoding="utf-8")
    summary = doc.split('"""')[1].strip() if doc.startswith('"""') else ""
    return "\n".join([
        "---", data.to_yaml(), "---", f"{CARD_MARKER} {__version__} -->", "", f"# {general['name']}", "", summary, "",
        "```python", "from kernels import get_kernel", "",
        f'kernel = get_kernel("{repo_id}", version={general["version"]}, trust_remote_code=True)', "```", "",
        "Built for every backend Triton supports (`build/torch-universal`, Triton imported lazily). memory-zoo models "
        "load it through `kernels.get_kernel(config.kernel_repo_id, revision=config.kernel_revision)` and fall back "
        "to their pure-torch path where it cannot run.", ""])


def push_kernel(
    name: str,
    repo_id: str | None = None,
    version: int | None = None,
    *,
    organization: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> KernelPush:
    """Publish ``memory_zoo/hub_kernels/<name>`` as a Hub kernel repository.

    The commit on ``main`` holds ``build.toml``, ``torch-ext/`` (source), ``build/`` (the published tree that
    ``kernels.get_kernel`` reads) and a card; files of an earlier push that no longer exist are deleted. Branch
    ``v<major>`` is then pointed at that commit, which is how ``get_kernel(repo_id, version=<major>)`` finds it.

    Args:
        name: kernel folder (``masked_mixing``) or Hub name (``masked-mixing``).
        repo_id: target repository (default: :func:`kernel_repo_id` in ``organization``).
        version: expected major version; refused if it differs from ``build.toml`` (guards the branch name).
        organization: organisation for the default repository id (default: the one in ``build.toml``).
        private, token, endpoint: as in :func:`push_model`.
    """
    folder, general = kernel_dir(name), _build_info(name)
    major = int(general["version"])
    if version is not None and int(version) != major:
        raise ValueError(f"{folder.name} is version {major} in build.toml, not {version}: edit build.toml to publish "
                         "a new major version.")
    repo_id = repo_id or kernel_repo_id(name, organization)
    staging = Path(tempfile.mkdtemp(prefix="memory-zoo-kernel-"))
    try:
        return _push_kernel_files(folder, general, staging, repo_id, private, token, endpoint)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _push_kernel_files(folder: Path, general: dict, staging: Path, repo_id: str, private: bool, token, endpoint
                       ) -> KernelPush:
    """Upload `folder`'s source and the published tree assembled from it into `staging` (see `push_kernel`)."""
    major = int(general["version"])
    build_kernel(folder, staging / "build")
    sources = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*"))
               if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
               and path.relative_to(folder).parts[0] in ("torch-ext", "build.toml")}
    built = {path.relative_to(staging).as_posix(): path for path in sorted((staging / "build").rglob("*"))
             if path.is_file()}
    files = {**sources, **built}
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, repo_type="kernel", private=private, exist_ok=True).repo_id
    stale = [p for p in api.list_repo_files(repo_id, repo_type="kernel")
             if p.startswith(("build/", "torch-ext/")) and p not in files]
    operations = [*(CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in files.items()),
                  CommitOperationAdd(path_in_repo="README.md",
                                     path_or_fileobj=_kernel_card(folder.name, repo_id, general).encode()),
                  *(CommitOperationDelete(path_in_repo=p) for p in stale)]
    commit = api.create_commit(repo_id, operations, repo_type="kernel",
                               commit_message=f"{general['name']} v{major} from memory-zoo {__version__}").oid
    branch = f"v{major}"
    refs = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id, repo_type="kernel").branches}
    if refs.get(branch) != commit:
        if branch in refs:  # a branch cannot be moved through the API: recreate it at the new commit
            api.delete_branch(repo_id, branch=branch, repo_type="kernel")
        api.create_branch(repo_id, branch=branch, revision=commit, repo_type="kernel")
    return KernelPush(folder.name, repo_id, branch, commit)


def push_kernels(
    names: list[str] | None = None, *, organization: str | None = None, private: bool = False,
    token: str | None = None, endpoint: str | None = None,
) -> list[KernelPush]:
    """:func:`push_kernel` for each of ``names`` (default: every kernel under ``memory_zoo/hub_kernels``)."""
    names = names or [d.name for d in kernel_dirs()]
    folders = [kernel_dir(name) for name in names]  # every name is checked before anything is pushed
    return [push_kernel(f.name, organization=organization, private=private, token=token, endpoint=endpoint)
            for f in folders]


def default_kernel_repos() -> dict[str, str]:
    """Config class name -> the ``kernel_repo_id`` its defaults name, for every architecture that has one."""
    defaults = {record.config_class.__name__: getattr(record.config_class(), "kernel_repo_id", None)
                for record in ARCHITECTURES}
    return {name: repo for name, repo in defaults.items() if repo}


__all__ = [
    "CARD_MARKER", "DEFAULT_ORGANIZATION", "KernelPush", "check_model_dir",
    "default_kernel_repos", "kernel_dir", "kernel_repo_id", "model_card", "push_kernel", "push_kernels", "push_model",
    "push_pretrained",
]
