"""``--reweight-group global-batch`` through the real loop (2 processes, the fixture corpus)."""

from megatron_patch.logging_utils import read_metrics
from tests.helpers.e2e import TINY, data_flags, torchrun

COMPARED = ("lm loss", "weighted loss", "grad_norm", "ess", "max_weight")


def _run(tmp_path, fixture_data, name, *flags):
    metrics = tmp_path / f"{name}.jsonl"
    args = [*TINY, *data_flags(fixture_data), "--train-iters", "4", "--reweight-strategy", "linupper",
            "--reweight-r", "0.5", "--metrics-file", str(metrics), *flags]
    out = torchrun("pretrain_gpt.py", args)
    return out.stdout, read_metrics(str(metrics), "train"), read_metrics(str(metrics), "group")


def test_one_micro_batch_per_step_is_the_same_in_both_modes_even_with_dropout(fixture_data, tmp_path):
    # pretrain_gpt.py's family has dropout 0.1: the first pass must leave the random states as it found them.
    _, micro, _ = _run(tmp_path, fixture_data, "micro", "--global-batch-size", "4")
    _, whole, _ = _run(tmp_path, fixture_data, "global", "--global-batch-size", "4", "--reweight-group", "global-batch")
    assert [[r[k] for k in COMPARED] for r in whole] == [[r[k] for k in COMPARED] for r in micro]
    assert {r["group_size"] for r in micro} == {r["group_size"] for r in whole} == {4}


def test_the_whole_step_is_one_group(fixture_data, tmp_path):
    stdout, train, groups = _run(tmp_path, fixture_data, "global", "--global-batch-size", "8",
                                 "--reweight-group", "global-batch")
    assert [r["group_size"] for r in train] == [8, 8, 8, 8] and "| group: 8 |" in stdout
    assert all(len(g["losses"]) == 8 for g in groups)  # 2 micro-batches x 2 ranks x 2 samples
    _, micro, micro_groups = _run(tmp_path, fixture_data, "micro", "--global-batch-size", "8")
    assert all(len(g["losses"]) == 4 for g in micro_groups) and micro[0]["group_size"] == 4
    # The first step sees the same samples and weights in both modes only through different groups.
    assert train[0]["lm loss"] == micro[0]["lm loss"] and train[0]["weighted loss"] != micro[0]["weighted loss"]
