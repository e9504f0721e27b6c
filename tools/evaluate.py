"""Downstream evaluation with lm-evaluation-harness, offline: by default the paper's tasks, 5-shot.

    python tools/evaluate.py --model runs/llama                # our checkpoint (latest iteration)
    python tools/evaluate.py --model hf/llama --out eval/llama  # a Hugging Face model directory
    python tools/evaluate.py --fetch-datasets                   # where there is network: cache the datasets

``--model`` is our checkpoint directory (exported with tools/convert_checkpoint.py into a
temporary HF directory first, ``--iteration`` to pick one) or an HF model directory. The tasks
(default LogiQA, LogiQA 2, SciQ, PIQA, as the paper evaluates them; ``--include-path`` adds task
YAMLs of your own) run through lm-eval's ``hf`` model on ``--device`` with ``--num-fewshot``
examples (default 5). Nothing is downloaded: every task's dataset must be in the Hugging Face
datasets cache (``HF_DATASETS_CACHE``, ``HF_HOME``); one that is not is named in one ``error:``
line with the command that caches it. Results: ``downstream.json`` (scores by task and metric,
their standard errors, sample counts, settings and versions) and ``downstream.md`` in ``--out``
(default: the checkpoint directory, where tools/compare_runs.py finds them).
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import contextlib
import importlib.metadata
import logging
import os
import sys
import tempfile
import time

from megatron_patch.errors import ArgumentError, one_line
from megatron_patch.files import write_atomically, write_json_atomically
from tools.cli import ToolParser, run_tool

PAPER_TASKS = ("logiqa", "logiqa2", "sciq", "piqa")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MARKER = "latest_checkpointed_iteration.txt"  # megatron_patch.checkpointing.MARKER, without importing megatron


def log(message: str) -> None:
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


def go_offline() -> None:
    """No hub access from here on, also for Hugging Face libraries this process imported already."""
    os.environ.update(OFFLINE)
    for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        if module in sys.modules:
            for name in names:
                setattr(sys.modules[module], name, True)


def _require_libraries() -> None:
    for module in ("lm_eval", "transformers", "datasets"):
        try:
            __import__(module)
        except ImportError:
            raise ArgumentError(f"tools/evaluate.py needs {module}: pip install -e '.[eval]' (or -r "
                                "requirements-cpu.txt)") from None


def task_manager(tasks: list, include_path: str | None):
    """lm-eval's ``TaskManager``, indexing only the folders named after ``tasks`` (and ``--include-path``)
    when they hold them all: parsing all of lm-eval's ~14,000 task YAML files takes a while."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    root = os.path.dirname(lm_eval.tasks.__file__)
    folders = [os.path.join(root, t) for t in tasks if os.path.isdir(os.path.join(root, t))]
    paths = ([include_path] if include_path else []) + folders
    if paths:
        manager = TaskManager(include_path=paths, include_defaults=False)
        if all(t in manager.task_index for t in tasks):
            return manager
    return TaskManager(include_path=include_path)


def task_datasets(manager, tasks: list) -> list:
    """``(task, dataset_path, dataset_name, dataset_kwargs)`` of each task that loads a dataset by name."""
    found = []
    for task in tasks:
        entry = manager.task_index.get(task)
        if entry is None:
            raise ArgumentError(f"--tasks {task}: no such lm-eval task (nor in --include-path); "
                                "`lm_eval ls tasks` lists them")
        config = entry.cfg or {}
        if config.get("dataset_path") and not config.get("custom_dataset"):
            found.append((task, config["dataset_path"], config.get("dataset_name"), config.get("dataset_kwargs") or {}))
    return found


def _dataset_label(path: str, name: str | None) -> str:
    return path + (f" ({name})" if name else "")


def check_cached(datasets_needed: list) -> None:
    """Refuse, in one line, the first dataset that is not in the local Hugging Face datasets cache."""
    import datasets

    for task, path, name, kwargs in datasets_needed:
        try:
            with _quiet():
                datasets.load_dataset(path, name, **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure offline means "not cached" to the user
            raise ArgumentError(
                f"--tasks {task}: dataset {_dataset_label(path, name)} is not in the Hugging Face datasets cache "
                f"{datasets.config.HF_DATASETS_CACHE} ({one_line(err, 100)}); cache it where there is network with "
                f"`python tools/evaluate.py --fetch-datasets --tasks {task}`, then copy that cache here "
                "(or point HF_HOME at it)") from None


def fetch(datasets_needed: list) -> None:
    """Download every dataset into the cache (needs network)."""
    import datasets

    for task, path, name, kwargs in datasets_needed:
        datasets.load_dataset(path, name, **kwargs)
        log(f"cached {_dataset_label(path, name)} for {task} in {datasets.config.HF_DATASETS_CACHE}")


@contextlib.contextmanager
def _quiet():
    """lm-eval and datasets log every step at INFO; keep warnings and errors only."""
    loggers = [logging.getLogger(name) for name in ("lm_eval", "lm-eval", "datasets", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def scores(results: dict) -> tuple[dict, dict, dict]:
    """lm-eval's ``results`` -> ``(scores, stderr, samples)``: ``{task: {metric: value}}`` (filter ``none``)."""
    values, errors = {}, {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if filter_name != "none" or not isinstance(value, (int, float)):
                continue
            if metric.endswith("_stderr"):
                errors.setdefault(task, {})[metric[:-len("_stderr")]] = value
            else:
                values.setdefault(task, {})[metric] = value
    samples = {task: n.get("effective", n.get("original")) for task, n in results.get("n-samples", {}).items()}
    return values, errors, samples


def markdown(record: dict) -> str:
    """The results table: one row per task and metric, value ± standard error."""
    limit = f", at most {record['limit']} samples a task" if record["limit"] else ""
    lines = [f"# Downstream: {record['model']}", "",
             f"lm-evaluation-harness {record['versions'].get('lm-eval')}, {record['num_fewshot']}-shot{limit}, "
             f"{record['device']}, {record['seconds']:.0f} s.", "",
             "| task | samples | metric | value | stderr |", "|---|---|---|---|---|"]
    for task, metrics in record["scores"].items():
        for metric, value in metrics.items():
            stderr = record["stderr"].get(task, {}).get(metric)
            lines.append(f"| {task} | {record['samples'].get(task, '-')} | {metric} | {value:.4f} | "
                         f"{'-' if stderr is None or isinstance(stderr, str) else f'{stderr:.4f}'} |")
    return "\n".join(lines) + "\n"


def _versions() -> dict:
    out = {}
    for package in ("lm-eval", "transformers", "datasets", "torch"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def evaluate(model: str, *, tasks=PAPER_TASKS, num_fewshot: int = 5, out: str | None = None, iteration=None,
             include_path=None, tokenizer=None, device: str = "cpu", dtype: str = "float32", batch_size=1,
             limit=None) -> dict:
    """Run the tasks on ``model`` (our checkpoint or an HF directory); write and return the results record."""
    go_offline()
    _require_libraries()
    from lm_eval import simple_evaluate

    started = time.perf_counter()
    ours = os.path.exists(os.path.join(model, MARKER))
    if not ours and not os.path.exists(os.path.join(model, "config.json")):
        raise ArgumentError(f"--model {model}: neither a checkpoint of ours ({MARKER}) nor a Hugging Face model "
                            "directory (config.json)")
    out = out or (model if ours else None)
    if out is None:
        raise ArgumentError(f"--model {model}: a Hugging Face directory needs --out DIR for the results")
    manager = task_manager(list(tasks), include_path)
    check_cached(task_datasets(manager, list(tasks)))
    os.makedirs(out, exist_ok=True)
    # The export of a checkpoint goes beside the results (as large as the model; /tmp may be small).
    with tempfile.TemporaryDirectory(prefix=".evaluate-hf-", dir=out) as scratch:
        hf_dir, source = model, {}
        if ours:
            from tools.convert_checkpoint import export

            hf_dir = os.path.join(scratch, "hf")
            source = export(model, hf_dir, iteration)
        tokenizer = tokenizer or hf_dir
        if not any(os.path.exists(os.path.join(tokenizer, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
            raise ArgumentError(f"--model {model}: no tokenizer files (the run's tokenizer is not one the export "
                                "writes); pass --tokenizer DIR, a Hugging Face tokenizer directory")
        with _quiet():
            results = simple_evaluate(model="hf", model_args={"pretrained": hf_dir, "tokenizer": tokenizer,
                                                              "dtype": dtype, "device": device},
                                      tasks=list(tasks), num_fewshot=num_fewshot, batch_size=batch_size,
                                      limit=limit, task_manager=manager, log_samples=False)
    values, errors, samples = scores(results)
    record = {"model": os.path.abspath(model), "checkpoint_iteration": source.get("iteration"), "tasks": list(tasks),
              "num_fewshot": num_fewshot, "limit": limit, "device": device, "dtype": dtype,
              "scores": values, "stderr": errors, "samples": samples, "versions": _versions(),
              "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomically(os.path.join(out, "downstream.json"), record, indent=1)
    write_atomically(os.path.join(out, "downstream.md"), markdown(record))
    log(f"wrote {os.path.join(out, 'downstream.json')} and downstream.md ({record['seconds']:.0f} s)")
    return record


def _main(argv: list) -> None:
    parser = ToolParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="our checkpoint directory or a Hugging Face model directory")
    parser.add_argument("--iteration", type=int, help="with a checkpoint: this iteration (default: the latest)")
    parser.add_argument("--tasks", default=",".join(PAPER_TASKS), help="lm-eval tasks, comma-separated")
    parser.add_argument("--num-fewshot", type=int, default=5, help="examples before each question")
    parser.add_argument("--include-path", help="a directory of task YAMLs of your own")
    parser.add_argument("--tokenizer", help="a Hugging Face tokenizer directory (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--batch-size", default="1", help="a number, or auto")
    parser.add_argument("--limit", type=int, help="at most this many samples a task (a quick look, not a score)")
    parser.add_argument("--out", help="directory for downstream.json and .md (default: the checkpoint directory)")
    parser.add_argument("--fetch-datasets", action="store_true",
                        help="download the tasks' datasets into the Hugging Face cache (needs network) and exit")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if args.num_fewshot < 0 or (args.limit is not None and args.limit < 1):
        raise ArgumentError("--num-fewshot must be >= 0 and --limit >= 1")
    if args.fetch_datasets:
        _require_libraries()
        fetch(task_datasets(task_manager(tasks, args.include_path), tasks))
        return
    if not args.model:
        raise ArgumentError("--model is not set; pass our checkpoint directory or a Hugging Face model directory")
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    evaluate(args.model, tasks=tasks, num_fewshot=args.num_fewshot, out=args.out, iteration=args.iteration,
             include_path=args.include_path, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype,
             batch_size=batch, limit=args.limit)


def main(argv=None) -> None:
    run_tool(_main, argv)


if __name__ == "__main__":
    main()
