"""Publishing to a Hub and loading back, end to end, against our loopback Hub server (tests/hub_server.py).

Every architecture of `memory_zoo.ARCHITECTURES` is pushed (model via `push_to_hub`, tokenizer via transformers, a
converted research checkpoint via the `memory-zoo push` command, kernels via `memory-zoo push-kernels`), then loaded
by repository id in fresh processes where memory_zoo cannot be imported: once online (logits, `pipeline`, Hub
kernels through `kernels.get_kernel` and through the models' own loader under the Triton interpreter), once with
`HF_HUB_OFFLINE=1` from the cache. huggingface_hub reads `HF_ENDPOINT` when it is imported, so every Hub client runs
in a subprocess started with the loopback environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import train_tokenizer
from hub_server import HubServer
from safetensors.torch import save_file
from test_integration import AUTOENCODER_BUILDERS, BUILDERS

from memory_zoo import ARCHITECTURES
from memory_zoo.architectures import BY_MODEL_TYPE
from memory_zoo.cli import main as cli_main
from memory_zoo.configuration.zoo_config import default_kernel_repo
from memory_zoo.hub import CARD_MARKER, default_kernel_repos, kernel_repo_id, model_card
from memory_zoo.hub_kernels.build import kernel_dirs, metadata

TESTS = Path(__file__).parent
ORG = "zoo-test"  # the organisation everything is published to; kernels too (their ids are configurable)
# Variables that break every Hub call kernels 0.17 makes (hub_conventions.md, pitfall 7): never set in these tests.
TELEMETRY_VARIABLES = ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK")
SUBPROCESS_TIMEOUT = 240
HUB_LIFETIME = 4 * SUBPROCESS_TIMEOUT + 60  # longer than the module can take; the server stops by itself then


def repo_for(model_type: str) -> str:
    return f"{ORG}/tiny-{model_type.replace('_', '-')}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A loopback Hub for this module, and the environment that points Hub clients at it (restored afterwards)."""
    server = HubServer(lifetime=HUB_LIFETIME).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_ENDPOINT", server.url)
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        patch.setenv("HF_TOKEN", "dummy")
        patch.delenv("HF_HUB_OFFLINE", raising=False)  # conftest makes the rest of the suite offline
        patch.delenv("PYTHONPATH", raising=False)
        # loopback traffic never goes through a proxy a machine may have configured
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        patch.setenv("NO_PROXY", no_proxy)
        patch.setenv("no_proxy", no_proxy)
        for name in (*TELEMETRY_VARIABLES, "LOCAL_KERNELS", "KERNELS_CACHE", "TRITON_INTERPRET"):
            patch.delenv(name, raising=False)
        yield server
    server.stop()


def run(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """Start a subprocess with the current environment (the hub's, inside the fixture) plus ``env``."""
    # one thread each: the models are tiny, and the processes often run two at a time on small machines
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def report(output: str) -> dict:
    """The JSON a subprocess script printed after ``REPORT`` (other output, such as prompts, may precede it)."""
    return json.loads(output.rsplit("REPORT ", 1)[1])


def finish(*processes: subprocess.Popen) -> list[str]:
    """Wait for every process (killing one that outlives SUBPROCESS_TIMEOUT), then check they all succeeded, so that
    no process is left running when one fails; returns their outputs."""
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=SUBPROCESS_TIMEOUT))
        except subprocess.TimeoutExpired:
            process.kill()
            outputs.append(process.communicate())
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"{process.args}\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return [stdout for stdout, _ in outputs]


# Run with memory_zoo importable: push kernels with the CLI, then every model with push_to_hub (kernel ids pointed
# at the pushed commits) and its tokenizer with transformers; also checks that a hand-written card survives.
PUSH_SCRIPT = r"""
import json, sys
from pathlib import Path
from huggingface_hub import HfApi
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from memory_zoo.cli import main
from memory_zoo.hub import kernel_repo_id
from memory_zoo.hub_kernels.build import kernel_dirs, metadata

spec = json.loads(Path(sys.argv[1]).read_text())
org = spec["org"]
assert main(["push-kernels", "--organization", org]) == 0
api = HfApi()
kernels = {}
for folder in kernel_dirs():
    repo, version = kernel_repo_id(folder.name, org), metadata(folder)["version"]
    refs = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo, repo_type="kernel").branches}
    kernels[repo] = {"name": folder.name, "version": version, "commit": refs[f"v{version}"], "main": refs["main"]}
by_default_repo = {kernel_repo_id(info["name"]): repo for repo, info in kernels.items()}
for repo, entry in spec["repos"].items():
    if entry.get("cli"):
        continue
    auto = AutoModelForCausalLM if entry["causal"] else AutoModel
    model = auto.from_pretrained(entry["dir"])
    pushed = by_default_repo.get(getattr(model.config, "kernel_repo_id", None))
    if pushed:  # the project's default kernel repository -> the one just pushed, pinned by commit
        model.config.kernel_repo_id, model.config.kernel_revision = pushed, kernels[pushed]["commit"]
        entry["kernel_repo"] = pushed
    AutoTokenizer.from_pretrained(entry["dir"]).push_to_hub(repo)
    entry["commit"] = model.push_to_hub(repo).oid
handwritten = f"{org}/handwritten-card"
api.create_repo(handwritten)
api.upload_file(path_or_fileobj=b"# My own card\n", path_in_repo="README.md", repo_id=handwritten)
model.push_to_hub(handwritten)
print("REPORT", json.dumps({"kernels": kernels, "repos": spec["repos"], "handwritten": handwritten}))
"""

# Run where memory_zoo cannot be imported: load every repository by id (online: also pipeline and Hub kernels).
LOAD_SCRIPT = r"""
import json, os, sys
import block_memory_zoo  # noqa: F401  (blocks memory_zoo before anything imports it)
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline

spec, mode = json.loads(open(sys.argv[1]).read()), sys.argv[2]
probes = load_file(spec["probes"])
try:
    import memory_zoo  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
report, models = {"blocked": blocked, "models": {}}, {}
for repo, entry in spec["repos"].items():
    auto = AutoModelForCausalLM if entry["causal"] else AutoModel
    model = models[repo] = auto.from_pretrained(repo, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
    with torch.no_grad():
        logits = model(probes[entry["key"] + ".input_ids"]).logits
    result = {"module": type(model).__module__, "class": type(model).__name__, "vocab": len(tokenizer),
              "max_diff": (logits - probes[entry["key"] + ".logits"]).abs().max().item()}
    if entry["causal"]:
        generator = pipeline("text-generation", model=repo, trust_remote_code=True)
        result["text"] = generator("The quick", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    report["models"][repo] = result

print("REPORT", json.dumps(report))
"""


# Run where memory_zoo cannot be imported, with TRITON_INTERPRET=1 from the start (triton reads it when its own
# helpers are decorated, at import): get_kernel each pushed kernel repository, then let the masked mixer's remote-code
# loader resolve the repository its config pins, and run the model through the kernel on CPU.
KERNEL_SCRIPT = r"""
import json, sys
import block_memory_zoo  # noqa: F401
import kernels
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

spec = json.loads(open(sys.argv[1]).read())
probes = load_file(spec["probes"])
report = {"kernels": {}}
for repo, info in spec["kernels"].items():
    by_version = kernels.get_kernel(repo, version=info["version"], trust_remote_code=True)
    by_commit = kernels.get_kernel(repo, revision=info["commit"], trust_remote_code=[repo])
    report["kernels"][repo] = {"by_version": sorted(getattr(by_version, "__all__", [])),
                               "by_commit": sorted(getattr(by_commit, "__all__", []))}
repo = spec["kernel_model"]
key = spec["repos"][repo]["key"]
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
loader = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".zoo_kernels"]
config = model.config
kernel = loader.load_hub_kernel("masked_mixing", config.kernel_repo_id, config.kernel_revision)
calls = []
if kernel is not None:
    original = kernel.masked_mixing
    kernel.masked_mixing = lambda *a: calls.append(1) or original(*a)
with torch.no_grad():
    logits = model(probes[key + ".input_ids"]).logits
report["loader"] = {"resolved": kernel is not None, "calls": len(calls), "repo": config.kernel_repo_id,
                    "revision": config.kernel_revision,
                    "max_diff": (logits - probes[key + ".logits"]).abs().max().item()}
print("REPORT", json.dumps(report))
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A Memory Mosaics research checkpoint converted with a tokenizer: a model folder with conversion.json."""
    from test_memory_mosaics_conversion import fixture, write_checkpoint

    from memory_zoo.conversion import convert

    tmp = tmp_path_factory.mktemp("converted")
    train_tokenizer(vocab_size=90).save_pretrained(tmp / "tokenizer")  # below the fixture's 96-token vocabulary
    state_dict, model_args, expected = fixture("linearconv_bias")
    model = convert("memory-mosaics", write_checkpoint(tmp / "run" / "ckpt.pt", state_dict, model_args),
                    tmp / "model", tokenizer=tmp / "tokenizer")
    return tmp / "model", model, expected["input_ids"]


@pytest.fixture(scope="module")
def published(hub, converted, tmp_path_factory):
    """Save a tiny model + tokenizer of every architecture, push everything, load it back in fresh processes."""
    tmp = tmp_path_factory.mktemp("published")
    tokenizer = train_tokenizer()
    repos, probes = {}, {}
    for config_class, _, causal_lm in ARCHITECTURES:
        model_type = config_class.model_type
        model = (BUILDERS.get(model_type) or AUTOENCODER_BUILDERS[model_type])().eval()
        folder = tmp / "models" / model_type
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # causal LMs: a prompt inside every tiny context; autoencoders: exactly one window
        length = 16 if causal_lm is not None else model.config.window_length
        input_ids = torch.randint(3, len(tokenizer), (2, length), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            probes[f"{model_type}.input_ids"], probes[f"{model_type}.logits"] = input_ids, model(input_ids).logits
        repos[repo_for(model_type)] = {"dir": str(folder), "key": model_type, "causal": causal_lm is not None}
    converted_dir, converted_model, converted_ids = converted
    with torch.no_grad():
        probes["converted.input_ids"], probes["converted.logits"] = converted_ids, converted_model(converted_ids).logits
    converted_repo = f"{ORG}/converted-memory-mosaics"
    repos[converted_repo] = {"dir": str(converted_dir), "key": "converted", "causal": True, "cli": True}
    save_file({k: v.contiguous() for k, v in probes.items()}, str(tmp / "probes.safetensors"))
    (tmp / "push.json").write_text(json.dumps({"org": ORG, "repos": repos}))

    # the CLI push of the converted model runs alongside the push_to_hub process
    pushing = run([sys.executable, "-c", PUSH_SCRIPT, str(tmp / "push.json")], tmp)
    command = ["memory-zoo"] if shutil.which("memory-zoo") else [sys.executable, "-m", "memory_zoo.cli"]
    cli = run([*command, "push", str(converted_dir), converted_repo, "--commit-message", "converted"], tmp)
    cli_output, pushed = finish(cli, pushing)
    pushed = report(pushed)
    spec = {**pushed, "probes": str(tmp / "probes.safetensors"), "kernel_model": repo_for("masked_mixer")}
    (tmp / "load.json").write_text(json.dumps(spec))

    # cwd = tests/ for block_memory_zoo; no folder there is named like a repository id, so ids go to the Hub
    load = [sys.executable, "-c", LOAD_SCRIPT, str(tmp / "load.json")]
    online = run([*load, "online"], TESTS)
    # side by side with the online loads, with a cache of its own (two processes never write one cache at once)
    kernel_check = run([sys.executable, "-c", KERNEL_SCRIPT, str(tmp / "load.json")], TESTS, TRITON_INTERPRET="1",
                       HF_HOME=str(tmp / "hf_home_kernels"))
    online, kernel_check = (report(output) for output in finish(online, kernel_check))
    offline = report(finish(run([*load, "offline"], TESTS, HF_HUB_OFFLINE="1"))[0])
    return {"spec": spec, "online": online, "offline": offline, "kernels": kernel_check, "cli_output": cli_output,
            "hub": hub}


def test_every_architecture_loads_from_the_hub_without_the_package(published):
    spec, online = published["spec"], published["online"]
    assert online["blocked"]
    assert set(online["models"]) == set(spec["repos"]) and len(spec["repos"]) == len(ARCHITECTURES) + 1
    for repo, entry in spec["repos"].items():
        result = online["models"][repo]
        assert result["module"].startswith("transformers_modules."), (repo, result)
        assert result["max_diff"] <= 1e-5, (repo, result)
        if entry["causal"]:
            assert result["text"].startswith("The quick"), (repo, result)
    assert {online["models"][repo_for(config.model_type)]["class"] for config, _, _ in ARCHITECTURES} == {
        (causal or base).__name__ for _, base, causal in ARCHITECTURES}


def test_every_architecture_loads_offline_from_the_cache(published):
    spec, offline = published["spec"], published["offline"]
    assert offline["blocked"] and set(offline["models"]) == set(spec["repos"])
    for repo, result in offline["models"].items():
        assert result["max_diff"] <= 1e-5, (repo, result)
        assert result.get("text") == published["online"]["models"][repo].get("text"), repo


def test_push_to_hub_publishes_weights_tokenizer_remote_code_and_our_card(published):
    state = published["hub"].state
    for config_class, _, causal_lm in ARCHITECTURES:
        repo = repo_for(config_class.model_type)
        files = state.files(repo)
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files), repo
        auto_map = json.loads(files["config.json"])["auto_map"]  # the remote code it names travelled too
        assert {f"{ref.rsplit('.', 1)[0]}.py" for ref in auto_map.values()} <= set(files), (repo, auto_map)
        card = state.file(repo, "README.md").decode()
        data = yaml.safe_load(card.split("---")[1])
        assert CARD_MARKER in card and data["library_name"] == "transformers", repo
        assert {"memory-zoo", config_class.model_type} <= set(data["tags"])
        assert data["pipeline_tag"] == ("text-generation" if causal_lm is not None else "feature-extraction")
        assert f'from_pretrained("{repo}", trust_remote_code=True)' in card
        entry = published["spec"]["repos"][repo]
        if entry.get("kernel_repo"):  # the card names the kernel repository the pushed config points at
            assert entry["kernel_repo"] in card
    # a hand-written card is left alone by push_to_hub
    assert state.file(published["spec"]["handwritten"], "README.md") == b"# My own card\n"


def test_memory_zoo_push_cli_publishes_a_converted_checkpoint_with_provenance(published, converted):
    state, repo = published["hub"].state, f"{ORG}/converted-memory-mosaics"
    assert f"-> {repo} (commit " in published["cli_output"]
    card = state.file(repo, "README.md").decode()
    conversion = json.loads(state.file(repo, "conversion.json"))
    assert conversion["checkpoint_sha256"] in card and "facebookresearch/MemoryMosaics" in card
    assert "tests/test_memory_mosaics_conversion.py" in card
    assert yaml.safe_load(card.split("---")[1])["license"] == "other"


def test_kernel_repositories_are_published_and_load_with_get_kernel(published):
    state, kernels = published["hub"].state, published["spec"]["kernels"]
    assert set(kernels) == {kernel_repo_id(d.name, ORG) for d in kernel_dirs()}
    for repo, info in kernels.items():
        stored = state.repos[("kernel", repo)]
        assert stored.branches[f"v{info['version']}"] == stored.branches["main"] == info["commit"]
        files = stored.commits[info["commit"]].files
        assert {"build.toml", "README.md", "build/torch-universal/metadata.json"} <= set(files)
        assert not any("__pycache__" in path for path in files)
        loaded = published["kernels"]["kernels"][repo]
        assert loaded["by_version"] == loaded["by_commit"] and loaded["by_version"], (repo, loaded)


def test_model_config_resolves_the_pushed_kernel_through_its_loader(published):
    """The masked mixer's config points at the pushed repository pinned by commit; its remote-code loader fetches it
    with kernels.get_kernel and, under the Triton interpreter on CPU, the forward pass uses it."""
    loader = published["kernels"]["loader"]
    info = published["spec"]["kernels"][loader["repo"]]
    assert loader["repo"] == kernel_repo_id("masked_mixing", ORG) and loader["revision"] == info["commit"]
    assert loader["resolved"] and loader["calls"] > 0, loader
    assert loader["max_diff"] <= 1e-5, loader


def test_model_card_of_a_converted_folder(converted):
    folder, model, _ = converted
    card = model_card(folder, "org/converted")
    front, body = card.split("---")[1], card.split("---", 2)[2]
    data = yaml.safe_load(front)
    conversion = json.loads((folder / "conversion.json").read_text())
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["license"] == "other" and data["license_link"] == "https://github.com/facebookresearch/MemoryMosaics"
    assert {"memory-zoo", "memory_mosaics"} <= set(data["tags"])
    assert f"**{model.num_parameters():,}** parameters" in body
    for key in ("hidden_size", "num_hidden_layers", "value_shift", "block_size"):
        assert f"| `{key}` | `{json.dumps(getattr(model.config, key))}` |" in body, key
    assert "| `architectures` |" not in body  # only the architecture's own fields
    assert conversion["checkpoint_sha256"] in body and "memory-zoo convert memory-mosaics" in body
    parity = BY_MODEL_TYPE["memory_mosaics"].parity
    assert parity.test in body and parity.tolerance in body
    assert 'AutoModelForCausalLM.from_pretrained("org/converted", trust_remote_code=True)' in body
    assert 'AutoTokenizer.from_pretrained("org/converted", trust_remote_code=True)' in body
    assert model_card(folder, "org/x", license="cc-by-nc-4.0").split("---")[1].count("license: cc-by-nc-4.0") == 1


def test_every_architecture_has_card_information():
    assert {config.model_type for config, _, _ in ARCHITECTURES} <= set(BY_MODEL_TYPE)
    assert all(record.name and record.description and record.research.repository for record in BY_MODEL_TYPE.values())


def test_config_kernel_defaults_are_the_published_repositories():
    """The configs' default kernel_repo_id values and build.toml's repo-ids are the same project-organisation ids."""
    published = {kernel_repo_id(d.name) for d in kernel_dirs()}
    ours = {repo for repo in default_kernel_repos().values() if repo.startswith("memory-zoo/")}
    assert ours and ours <= published
    for folder in kernel_dirs():
        assert kernel_repo_id(folder.name, "elsewhere") == f"elsewhere/{metadata(folder)['name']}"
        assert kernel_repo_id(folder.name) == default_kernel_repo(folder.name)  # build.toml == zoo_config


def test_push_commands_refuse_bad_input_before_touching_the_hub(tmp_path, capsys):
    assert cli_main(["push", str(tmp_path / "missing"), "org/x"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert cli_main(["push", str(tmp_path), "org/x"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert cli_main(["push-kernels", "no_such_kernel"]) == 2
    assert "Unknown kernel 'no_such_kernel'" in capsys.readouterr().err


def test_hub_server_answers_missing_things_with_hub_error_codes_and_stops_by_itself():
    import time
    import urllib.error
    import urllib.request

    urlopen = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # loopback: no proxy
    with HubServer(lifetime=0.5) as server:
        server.state.create("model", "o/r")
        for path, code in (("/o/r/resolve/main/nope.json", "EntryNotFound"), ("/o/none/resolve/main/x", "RepoNotFound"),
                           ("/o/r/resolve/v9/config.json", "RevisionNotFound")):
            with pytest.raises(urllib.error.HTTPError) as error:
                urlopen(server.url + path, timeout=5)
            assert error.value.code == 404 and error.value.headers["X-Error-Code"] == code
        with urlopen(server.url + "/o/r/resolve/main/.gitattributes", timeout=5) as response:
            assert response.headers["ETag"].startswith('"') and response.headers["X-Repo-Commit"]
        url = server.url
        time.sleep(1.0)
        with pytest.raises(urllib.error.URLError):
            urlopen(url + "/api/whoami-v2", timeout=2)
