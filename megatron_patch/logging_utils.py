"""Logging: the Megatron-style console line, the metrics file (JSON lines), tensorboard.

Report entries are Megatron's ``{name: tensor([sum, count])}``; :class:`ReportAccumulator` sums
them on the device over the micro-batches and steps of a log interval, and reduces them over the
data-parallel group once, when the line is printed (the only host sync the logging adds).
"""

import json
import math
import os

import torch

_TRAIN_KEYS = ("lm loss", "weighted loss", "reweight r", "ess", "max_weight", "min_weight", "entropy", "low_loss_mass")


class ReportAccumulator:
    """Sums report pairs over micro-batches and steps; reduces over DP on :meth:`pop`."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, reports: list[dict]) -> None:
        for report in reports:
            for key, pair in report.items():
                pair = pair.detach().float().view(-1)
                self.sums[key] = self.sums[key] + pair if key in self.sums else pair.clone()

    def pop(self, dp_group) -> dict[str, tuple[float, float]]:
        """``{key: (sum, count)}`` over the interval and the DP group; resets the accumulator."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys])  # [k, 2]
        # Non-finite values stay visible: inf is "r of a uniform warm-up", NaN a diverged loss.
        torch.distributed.all_reduce(stacked, group=dp_group)
        values = stacked.tolist()
        self.sums = {}
        return {k: tuple(v) for k, v in zip(keys, values)}


def reduce_pairs(pairs: dict, dp_group) -> dict:
    """Reduce ``{key: tensor([sum, count])}`` over DP (one collective); returns (sum, count) floats."""
    acc = ReportAccumulator()
    acc.sums = {k: v.clone() for k, v in pairs.items()}
    return acc.pop(dp_group)


def summarise_train(pairs: dict[str, tuple[float, float]], domains: list[str]) -> dict:
    """Metrics-file fields from reduced report pairs."""
    out = {}
    for key in _TRAIN_KEYS:
        if key in pairs:
            total, count = pairs[key]
            out[key] = total / count if count else None
    if "reweight r" in out and (out["reweight r"] is None or not math.isfinite(out["reweight r"])):
        out["reweight r"] = None
    if "nonfinite" in pairs:
        out["nonfinite"] = int(pairs["nonfinite"][0])
    per_domain = {}
    for d, name in enumerate(domains):
        entry = {}
        for key, field in (("loss", "loss"), ("token_share", "token_share"), ("weight_share", "weight_share")):
            pair = pairs.get(f"domain {d} {key}")
            if pair is not None and pair[1]:
                entry[field] = pair[0] / pair[1]
        if entry:
            per_domain[name] = entry
    if len(per_domain) > 1:
        out["domains"] = per_domain
    return out


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6E}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def console_line(record: dict, train_iters: int) -> str:
    """Megatron-LM's ``iteration i/ N | key: value | ...`` line."""
    parts = [
        f" iteration {record['iteration']:8d}/{train_iters:8d}",
        f"consumed samples: {record['consumed_samples']:12d}",
        f"elapsed time per iteration (ms): {record['ms_per_iter']:.1f}",
        f"tokens/s: {record['tokens_per_s']:.0f}",
        f"learning rate: {record['lr']:.6E}",
        f"lm loss: {_fmt(record.get('lm loss'))}",
    ]
    if record.get("reweight r") is not None:
        parts += [f"weighted loss: {_fmt(record.get('weighted loss'))}", f"r: {_fmt(record['reweight r'])}",
                  f"ess: {_fmt(record.get('ess'))}", f"max weight: {_fmt(record.get('max_weight'))}"]
    else:
        parts.append("r: uniform")
    parts += [f"grad norm: {_fmt(record.get('grad_norm'))}",
              f"skipped iterations: {record['skipped']}", f"nonfinite samples: {record.get('nonfinite', 0)}"]
    for name, d in record.get("domains", {}).items():
        share = f" w {d['weight_share']:.3f}" if "weight_share" in d else ""
        parts.append(f"{name}: loss {d.get('loss', float('nan')):.3f} tok {d.get('token_share', 0):.3f}{share}")
    return " | ".join(parts) + " |"


class MetricsSink:
    """Writes records to the metrics file and tensorboard (both optional)."""

    def __init__(self, metrics_file: str | None, tensorboard_dir: str | None):
        self.file = None
        if metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_file)), exist_ok=True)
            self.file = open(metrics_file, "a")
        self.writer = None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("warning: --tensorboard-dir given but tensorboard is not installed (pip install tensorboard); skipping")
            else:
                self.writer = SummaryWriter(tensorboard_dir)

    def write(self, record: dict) -> None:
        if self.file:
            self.file.write(json.dumps(record, allow_nan=False, default=_json_safe) + "\n")
            self.file.flush()
        if self.writer and record.get("kind") in ("train", "valid"):
            step = record["iteration"]
            prefix = "" if record["kind"] == "train" else "valid/"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "iteration" and math.isfinite(value):
                    self.writer.add_scalar(prefix + key, value, step)
            for name, d in record.get("domains", {}).items():
                for key, value in d.items():
                    self.writer.add_scalar(f"{prefix}{name}/{key}", value, step)

    def close(self):
        if self.file:
            self.file.close()
        if self.writer:
            self.writer.close()


def _json_safe(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value
