"""tools/demo/run.py: its progress lines and the torchrun command of one run of the recipe."""

import math

import pytest

from megatron_patch.logging_utils import console_line, validation_line
from tools.demo import run as demo

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_progress_lines_parse_the_loop_output(capsys):
    record = {"iteration": 10, "consumed_samples": 160, "ms_per_iter": 1400.0, "tokens_per_s": 2900, "lr": 1e-3,
              "global_batch_size": 16, "lm loss": 6.5, "weighted loss": 6.4, "reweight r": None, "grad_norm": 1.0,
              "skipped": 0, "nan_iterations": 0}
    progress = demo.Progress(iters_per_run=100, runs=2)
    progress.start_run(0)
    progress.run_start -= 50.0  # with the shift below: 30 s before the first line, at iteration 10
    progress.line("uniform", console_line(record, 100))  # no pace yet: no ETA
    progress.first = (10, progress.first[1] - 20.0)  # 10 more iterations in 20 s: 2 s each
    progress.line("uniform", console_line(dict(record, iteration=20), 100))
    progress.line("uniform", validation_line({"iteration": 20, "loss": 5.0, "ppl": math.exp(5.0),
                                              "domains": {"a": {"loss": 5.0, "ppl": math.exp(5.0)}}}))
    progress.line("uniform", "some other line\n")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0] == "[demo] uniform: iteration 10/100, lm loss 6.5000"
    # 80 iterations left here, then the second run: 10 s of start-up (30 s to iteration 10 at
    # 2 s each) and 100 iterations: 160 + 10 + 200 = 370 s
    assert lines[1] == "[demo] uniform: iteration 20/100, lm loss 6.5000, 2.00 s/iteration, ETA 6m10s"
    assert lines[2] == "[demo] uniform: validation at iteration 20: mean loss 5.0000, perplexity 148.41"


def test_training_command_is_the_recipe():
    recipe = dict(demo.FULL, warmup=50, eval=62)
    manifest = {"train_data_path": "0.5 /d/a 0.5 /d/b", "valid_data_path": "0.5 /d/a_v 0.5 /d/b_v",
                "tokenizer_model": "/d/tok.model"}
    cmd = demo.training_command("linupper", manifest, recipe, "/r/metrics.jsonl", seed=3)
    flags = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert flags["--nproc_per_node"] == "2"  # DP = 2: the real all-gather
    assert cmd[cmd.index("--data-path") + 1:cmd.index("--valid-data-path")] == ["0.5", "/d/a", "0.5", "/d/b"]
    assert flags["--global-batch-size"] == str(2 * recipe["micro"])  # one micro-batch per rank and step
    assert (flags["--reweight-strategy"], flags["--reweight-r"], flags["--reweight-warmup-iters"]) == ("linupper", "1.0", "50")
    assert (flags["--train-iters"], flags["--eval-interval"], flags["--seed"]) == ("250", "62", "3")
    assert flags["--metrics-file"] == "/r/metrics.jsonl"
