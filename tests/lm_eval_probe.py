"""Run lm-evaluation-harness on saved models the way its users do: where memory_zoo cannot be imported, so each model
loads as the remote code saved beside its weights (`lm_eval --model hf --model_args pretrained=DIR,
trust_remote_code=True`), offline, on the local tasks of tests/lm_eval_tasks.

Usage: python lm_eval_probe.py SPEC.json OUT.json, with the working directory holding the task YAMLs (their data
files are relative to it). SPEC is a list of runs, `{"id", "model_args", "tasks", "batch_size"}`. OUT gets, per run
id, what each logged sample asked and got (`arguments`, `resps`) and the metrics, or the error that stopped the run;
and under "printed" every Python warning a user would see (and any the models' code raises), log record of level
WARNING and above, and line on stderr other than a progress bar that the runs produced.
"""

import json
import logging
import re
import sys
import warnings

import block_memory_zoo  # noqa: F401  (blocks memory_zoo before anything imports it)

records: list[str] = []


class Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        records.append(f"{record.name}: {record.getMessage()}")


logging.getLogger().addHandler(Collect(level=logging.WARNING))
for name in ("transformers", "transformers_modules", "lm_eval", "lm-eval", "datasets"):
    logging.getLogger(name).addHandler(Collect(level=logging.WARNING))
    logging.getLogger(name).propagate = False  # counted once, by the handler above


class Tee:
    """stderr, also kept, so that what lm-eval and transformers print there (not only log) is checked too."""

    def __init__(self, stream) -> None:
        self.stream, self.text = stream, []

    def write(self, text: str) -> int:
        self.text.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


PROGRESS_BAR = re.compile(r"(\d+%\|.*\||\d+/\d+ \[|it/s\]|s/it\]|examples/s\])")  # tqdm's bars, not messages

spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
sys.stderr = tee = Tee(sys.stderr)
report: dict = {"runs": {}}
with warnings.catch_warnings(record=True) as caught:
    # Python's own filters, as a user has them (other libraries' DeprecationWarnings stay hidden), and every warning
    # the models' code itself raises.
    warnings.filterwarnings("always", module=r"transformers_modules\.")
    import lm_eval
    from lm_eval.tasks import TaskManager

    try:
        import memory_zoo  # noqa: F401

        report["blocked"] = False
    except ImportError:
        report["blocked"] = True
    manager = TaskManager(include_path=".", include_defaults=False)
    for run in spec:
        try:
            results = lm_eval.simple_evaluate(model="hf", model_args=run["model_args"], tasks=run["tasks"],
                                              batch_size=run["batch_size"], device="cpu", task_manager=manager,
                                              log_samples=True, bootstrap_iters=0, verbosity="WARNING", limit=8)
        except Exception as error:  # noqa: BLE001  (the test asserts which error, and its words)
            report["runs"][run["id"]] = {"error": type(error).__name__, "message": " ".join(str(error).split())}
            continue
        report["runs"][run["id"]] = {
            task: {"metrics": {key: value for key, value in results["results"][task].items()
                               if isinstance(value, (int, float))},
                   "samples": [{"arguments": sample["arguments"], "resps": sample["resps"]}
                               for sample in results["samples"][task]]}
            for task in run["tasks"]
        }
sys.stderr = tee.stream
lines = [line for chunk in tee.text for line in re.split(r"[\r\n]", chunk) if line.strip()]
report["printed"] = ([f"{w.category.__name__}: {w.message}" for w in caught] + records
                     + [f"stderr: {line}" for line in lines if not PROGRESS_BAR.search(line)])
with open(sys.argv[2], "w", encoding="utf-8") as handle:
    json.dump(report, handle, default=float)
