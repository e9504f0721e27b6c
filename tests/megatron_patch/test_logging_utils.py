"""Logging surfaces: the console line, metrics-file records and their reader, tensorboard scalars, the accumulator."""

import json
import math

import pytest
import torch

from megatron_patch.logging_utils import (MetricsSink, ReportAccumulator, _scalars, console_line, read_metrics,
                                          summarise_train, validation_line)
from megatron_patch.loss import GROUP_LOSSES

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_summarise_train_means_and_domains():
    pairs = {"lm loss": (20.0, 8.0), "weighted loss": (6.0, 2.0), "reweight r": (1.0, 2.0), "ess": (1.6, 2.0),
             "max_weight": (3.0, 2.0), "nonfinite": (1.0, 8.0),
             "domain 0 loss": (4.0, 2.0), "domain 0 token_share": (0.5, 1.0), "domain 0 weight_share": (0.25, 1.0),
             "domain 1 loss": (6.0, 2.0), "domain 1 token_share": (0.5, 1.0), "domain 1 weight_share": (0.75, 1.0)}
    out = summarise_train(pairs, ["books", "code"])
    assert out["lm loss"] == 2.5 and out["weighted loss"] == 3.0 and out["reweight r"] == 0.5
    assert out["ess"] == 0.8 and out["nonfinite"] == 1
    assert out["domains"] == {"books": {"loss": 2.0, "token_share": 0.5, "weight_share": 0.25},
                              "code": {"loss": 3.0, "token_share": 0.5, "weight_share": 0.75}}
    # Uniform warm-up: r is inf in the report, null in the record; one domain: no per-domain block.
    warmup = summarise_train({"lm loss": (2.0, 1.0), "reweight r": (math.inf, 1.0)}, ["books"])
    assert warmup == {"lm loss": 2.0, "reweight r": None}


def test_console_line_is_megatrons_plus_reweighting():
    record = {"iteration": 30, "consumed_samples": 3840, "ms_per_iter": 812.5, "tokens_per_s": 645277.0,
              "lr": 3e-4, "global_batch_size": 128, "lm loss": 2.5, "weighted loss": 2.4, "reweight r": 1.0,
              "ess": 0.81, "max_weight": 2.2, "grad_norm": 0.75, "skipped": 0, "nan_iterations": 0,
              "domains": {"books": {"loss": 2.1, "token_share": 0.4, "weight_share": 0.3}}}
    line = console_line(record, 100)
    assert line.startswith(" iteration       30/     100 | consumed samples:         3840 |")
    for part in ("elapsed time per iteration (ms): 812.5", "learning rate: 3.000000E-04", "lm loss: 2.500000E+00",
                 "weighted loss: 2.400000E+00", "r: 1 | ess: 0.8100 | max weight: 2.200", "grad norm: 0.750",
                 "number of skipped iterations:   0", "books: loss 2.100 tok 0.400 w 0.300"):
        assert part in line
    uniform = console_line(dict(record, **{"reweight r": None, "grad_norm": None}), 100)
    assert "r: uniform" in uniform and "grad norm: nan" in uniform and "ess:" not in uniform


def test_metrics_file_is_strict_json_lines(tmp_path):
    path = tmp_path / "m" / "metrics.jsonl"
    sink = MetricsSink(metrics_file=str(path), tensorboard_dir=None, wandb_project=None, wandb_name=None,
                       run_config={})
    sink.write({"kind": "train", "iteration": 1, "lm loss": math.nan, "grad_norm": math.inf})
    valid = {"kind": "valid", "iteration": 1, "loss": 2.0, "ppl": math.exp(2.0),
             "domains": {"books": {"loss": 2.0, "ppl": math.exp(2.0)}}}
    sink.write(valid)
    sink.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"kind": "train", "iteration": 1, "lm loss": None, "grad_norm": None}
    assert rows[1]["domains"]["books"]["loss"] == 2.0
    assert _scalars(valid) == {"valid/loss": 2.0, "valid/ppl": math.exp(2.0), "valid/books/loss": 2.0,
                               "valid/books/ppl": math.exp(2.0)}
    assert validation_line(valid).startswith(" validation at iteration        1 | loss: 2.000000E+00 |")
    assert read_metrics(str(path)) == rows and read_metrics(str(path), kind="valid") == [rows[1]]


def test_accumulator_sums_pairs_and_leaves_the_group_out():
    reports = [{"lm loss": torch.tensor([4.0, 2.0]), GROUP_LOSSES: torch.tensor([1.0, 2.0, 3.0])},
               {"lm loss": torch.tensor([6.0, 3.0]), GROUP_LOSSES: torch.tensor([4.0, 5.0, 6.0])}, {}]
    acc = ReportAccumulator()
    acc.add(reports)
    acc.add(reports[:1])
    assert {k: [t.tolist() for t in v.unbind(0)] for k, v in acc.blocks.items()} == {("lm loss",): [[14.0, 7.0]]}
