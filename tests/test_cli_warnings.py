"""What a user runs first prints no warning: the README's example, the quickstart, every `memory-zoo` command, and a
saved folder loaded as remote code where memory-zoo is not installed.

Each runs in a process of its own, as a user runs it (Python's default warning filters, transformers' default
verbosity), and its whole stderr is read: what may be there is a progress bar (tqdm's) or the command's own progress
line, nothing else. tests/test_lm_eval.py does the same for lm-evaluation-harness runs of every architecture.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, TEXT, tiny_model, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROGRESS_BAR = re.compile(r"(\d+%\|.*\||\d+/\d+ \[|it/s\]|s/it\]|examples/s\])")  # tqdm's bars, not messages


def printed(stderr: str, command: str | None = None) -> list[str]:
    """The lines of `stderr` other than progress bars (and `memory-zoo COMMAND:` progress lines, not errors)."""
    lines = [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not PROGRESS_BAR.search(line)]
    if command is not None:
        ours = f"memory-zoo {command}: "
        lines = [line for line in lines if not line.startswith(ours) or line.startswith(ours + "error:")]
    return lines


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    environment.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false", **env)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=environment,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_the_readme_example(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"## A first model in Python\n.*?```python\n(.*?)```", readme, re.S).group(1)
    result = run(["-c", example], tmp_path)
    assert printed(result.stderr) == []


def test_the_quickstart(tmp_path):
    result = run([str(ROOT / "examples" / "quickstart.py"), "--steps", "3", "--output-dir", str(tmp_path / "model")],
                 tmp_path)
    assert printed(result.stderr) == []


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Masked Mixer with its tokenizer, a text, a JSON-lines dataset."""
    import datasets

    root = tmp_path_factory.mktemp("quiet")
    tokenizer = train_tokenizer()
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "text.txt").write_text(TEXT[:600], encoding="utf-8")
    datasets.Dataset.from_dict({"text": TEXT[:600].split(". ")}).to_json(str(root / "rows.jsonl"))
    # The research fixture's config holds notes of the fixture generator too (ffn_expansion_factor, source_file, ...),
    # which convert rightly reports as unused: a user's --config holds the research hyperparameters alone.
    research = json.loads((FIXTURES / "masked_mixer" / "plain" / "research_config.json").read_text())
    keys = ("n_vocab", "dim", "depth", "tokenized_length", "expand_conv", "tie_weights")
    (root / "research.json").write_text(json.dumps({key: research[key] for key in keys}))
    return root


COMMANDS = {  # name -> arguments of `memory-zoo` (FOLDER: the fixture's folder, FIXTURE: the research fixture)
    "convert": ["convert", "masked-mixer", "FIXTURE", "OUT/converted", "--config", "FOLDER/research.json",
                "--reference", "FIXTURE/expected.safetensors", "--tokenizer", "FOLDER/model"],
    "generate": ["generate", "FOLDER/model", "The quick", "--max-new-tokens", "8"],
    "generate-sampled-beams": ["generate", "FOLDER/model", "The quick", "--max-new-tokens", "8", "--num-beams", "2",
                               "--do-sample", "--seed", "0"],
    "eval": ["eval", "FOLDER/model", "FOLDER/text.txt", "--stride", "12"],
    "eval-dataset": ["eval", "FOLDER/model", "--dataset", "FOLDER/rows.jsonl"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command(name, folders, tmp_path):
    fixture = FIXTURES / "masked_mixer" / "plain"
    argv = [a.replace("FOLDER", str(folders)).replace("FIXTURE", str(fixture)).replace("OUT", str(tmp_path))
            for a in COMMANDS[name]]
    # The console script: memory_zoo_cli.main with the command line.
    result = run(["-c", "import sys; from memory_zoo_cli import main; sys.exit(main())", *argv], tmp_path)
    assert result.stdout.strip()
    assert printed(result.stderr, argv[0]) == []


REMOTE_LOAD = r"""
import sys
sys.path.insert(0, sys.argv[2])
import block_memory_zoo  # memory-zoo is not installed here
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline

folder = sys.argv[1]
AutoConfig.from_pretrained(folder, trust_remote_code=True)
AutoModel.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    model.generate(**tokenizer("The quick", return_tensors="pt"), max_new_tokens=4, do_sample=False)
print(pipeline("text-generation", model=folder, trust_remote_code=True)("The quick", max_new_tokens=3)[0])
"""


def test_a_remote_code_load(folders, tmp_path):
    environment = {"PYTHONPATH": ""}
    result = run(["-c", REMOTE_LOAD, str(folders / "model"), str(Path(__file__).parent)], tmp_path, **environment)
    assert "generated_text" in result.stdout
    assert printed(result.stderr) == []


TOY_CONFIG = '''
from transformers import PretrainedConfig


class ToyConfig(PretrainedConfig):
    model_type = "toy_lm"

    def __init__(self, vocab_size=128, hidden_size=8, num_hidden_layers=1, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        super().__init__(**kwargs)
'''
TOY_MODEL = '''
import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_toy import ToyConfig


class ToyForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):  # each token predicts from itself alone
        return CausalLMOutput(logits=self.head(self.embed(input_ids)))
'''
SAVE_TOY = '''
import sys
from toy.configuration_toy import ToyConfig
from toy.modeling_toy import ToyForCausalLM

ToyConfig.register_for_auto_class()
ToyForCausalLM.register_for_auto_class("AutoModelForCausalLM")
ToyForCausalLM(ToyConfig(pad_token_id=0, bos_token_id=1, eos_token_id=2)).save_pretrained(sys.argv[1])
'''


def test_trust_remote_code_for_an_architecture_memory_zoo_does_not_know(folders, tmp_path):
    """`--trust-remote-code` reaches the tokenizer too: AutoTokenizer reads the config first, and without it would
    stop to ask "Do you wish to run the custom code? [y/N]" (then warn about a model of type '')."""
    (tmp_path / "toy").mkdir()
    for name, text in (("__init__.py", ""), ("configuration_toy.py", TOY_CONFIG), ("modeling_toy.py", TOY_MODEL)):
        (tmp_path / "toy" / name).write_text(text)
    run(["-c", SAVE_TOY, str(tmp_path / "saved")], tmp_path, PYTHONPATH=str(tmp_path))
    train_tokenizer().save_pretrained(tmp_path / "saved")
    launcher = ["-c", "import sys; from memory_zoo_cli import main; sys.exit(main())"]
    for argv in (["generate", str(tmp_path / "saved"), "The quick", "--max-new-tokens", "4", "--trust-remote-code"],
                 ["eval", str(tmp_path / "saved"), str(folders / "text.txt"), "--context", "8", "--trust-remote-code"]):
        result = run([*launcher, *argv], tmp_path)
        assert "custom code" not in result.stdout, result.stdout  # input()'s question goes to stdout
        assert result.stdout.strip() and printed(result.stderr, argv[0]) == [], result.stderr
