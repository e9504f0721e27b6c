"""Non-finite losses in the real training loop (2 ranks, in-process): which samples get weight 0,
which steps are skipped, and what the metrics file reports.

The run is built as ``pretrain`` builds it (``resolve_config``, ``build_run``, ``train``), with a
forward step that wraps the entry point's and poisons chosen samples' losses.
"""

import collections
import math

import torch

from megatron_patch.logging_utils import read_metrics


def nonfinite_in_rank(metrics_file: str) -> dict:
    """Train 6 steps through the real loop with NaN/Inf injected into chosen samples' losses.

    Each step has 2 micro-batches of 2 samples per rank (groups of 4). ``loss`` injection replaces
    the per-token losses (their gradient path stays finite, as for a loss that overflows on its
    own); ``model`` injection multiplies them by NaN, as when the model's activations are NaN:
    backward then carries NaN whatever the sample's weight.
    """
    import pretrain_gpt
    from megatron.core import parallel_state as ps

    from megatron_patch import training
    from megatron_patch.arguments import resolve_config
    from megatron_patch.distributed import set_seeds

    config, tokenizer = resolve_config(
        ["--model", "tiny", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "512",
         "--seq-length", "32", "--max-position-embeddings", "32", "--micro-batch-size", "2",
         "--global-batch-size", "8", "--train-iters", "6", "--log-interval", "1", "--eval-interval", "1000",
         "--reweight-strategy", "linupper", "--reweight-warmup-iters", "1", "--metrics-file", metrics_file],
        family="llama", world_size=2)
    set_seeds(config.training.seed)
    run = training.build_run(config, pretrain_gpt.model_provider, pretrain_gpt.datasets_provider, tokenizer)
    # (step, micro-batch) -> (injection, which samples): "rank0" is the first sample of rank 0.
    plan = {(0, 0): ("model", "rank0"),  # uniform warm-up: the step's loss and gradients are NaN
            (1, 0): ("loss", "rank0"),   # weight 0, the other samples train
            (2, 0): ("loss", "all"),     # a whole group without a finite loss; the other group trains
            (3, 0): ("loss", "all"), (3, 1): ("loss", "all"),  # nothing finite in the step
            (4, 1): ("loss-inf", "rank0"),
            (5, 0): ("model", "rank0")}  # weight 0 cannot stop NaN activations' gradients
    calls, params = collections.Counter(), []

    def forward_step(data_iterator, chunk, *, loss):
        micro = calls[loss.iteration]
        calls[loss.iteration] += 1
        if micro == 0 and chunk.training:  # not for the final evaluation's forward steps
            params.append(torch.cat([p.detach().flatten().clone() for p in chunk.parameters()]))
        output, loss_func = pretrain_gpt.forward_step(data_iterator, chunk, loss=loss)
        kind, who = plan.get((loss.iteration, micro), (None, None))
        bad = torch.zeros_like(output, dtype=torch.bool)
        if who == "all" or (who == "rank0" and ps.get_data_parallel_rank() == 0):
            bad[0 if who == "rank0" else slice(None)] = True
        if kind == "model":
            output = output * torch.where(bad, math.nan, 1.0)
        elif kind is not None:
            output = torch.where(bad, math.inf if kind == "loss-inf" else math.nan, output)
        return output, loss_func

    training.train(run, forward_step)
    params.append(torch.cat([p.detach().flatten().clone() for p in run.model.parameters()]))
    return {"skipped": run.state.skipped_iterations, "finite": bool(torch.isfinite(params[-1]).all()),
            "updated": [not torch.equal(a, b) for a, b in zip(params, params[1:])]}


def test_nonfinite_losses(run_distributed, tmp_path):
    results = run_distributed(nonfinite_in_rank, world_size=2, metrics_file=str(tmp_path / "m.jsonl"))
    updated = [False, True, True, False, True, False]
    for out in results:
        assert out == {"skipped": 3, "finite": True, "updated": updated}
    train = read_metrics(tmp_path / "m.jsonl", "train")
    assert [r["nonfinite"] for r in train] == [1, 1, 4, 8, 1, 1]
    assert [r["skipped"] for r in train] == [int(not u) for u in updated]
    assert [r["nan_iterations"] for r in train] == [1, 0, 0, 0, 0, 1]
    assert [r["reweight r"] for r in train] == [None, 1.0, 1.0, 1.0, 1.0, 1.0]
    norms = [r["grad_norm"] for r in train]  # the metrics file writes non-finite numbers as null
    assert norms[0] is None and norms[5] is None and norms[3] == 0.0
    assert all(math.isfinite(n) and n > 0 for n in (norms[1], norms[2], norms[4]))
    # The unweighted lm loss shows a NaN sample; the weighted loss leaves it out.
    assert train[1]["lm loss"] is None and math.isfinite(train[1]["weighted loss"])
