"""Logging: the Megatron-style console line, the metrics file (JSON lines), tensorboard, wandb.

Report entries are Megatron's ``{name: tensor([sum, count])}``; :class:`ReportAccumulator` sums
them on the device over the micro-batches and steps of a log interval and reduces them over the
data-parallel group once, when the line is printed (the only host sync the logging adds).
tensorboard and wandb are optional: a missing package is one warning, never a failed run.
"""

import json
import math
import os

import torch

from .loss import GROUP_DOMAINS, GROUP_LOSSES

GROUP_KEYS = (GROUP_LOSSES, GROUP_DOMAINS)

_TRAIN_KEYS = ("lm loss", "weighted loss", "reweight r", "ess", "max_weight", "min_weight", "entropy", "low_loss_mass")


class ReportAccumulator:
    """Sums report pairs over micro-batches and steps; reduces over DP on :meth:`pop`."""

    def __init__(self):
        # One [k, 2] block per set of keys: the key set changes only when reweighting turns on.
        self.blocks: dict[tuple[str, ...], torch.Tensor] = {}

    def add(self, reports: list[dict]) -> None:
        for report in filter(None, reports):  # a stage without the loss reports nothing
            keys = tuple(sorted(k for k in report if k not in GROUP_KEYS))  # the group is not a pair
            block = torch.stack([report[k].detach().float().view(2) for k in keys])  # one op per report
            self.blocks[keys] = self.blocks[keys] + block if keys in self.blocks else block

    def pop(self, dp_group) -> dict[str, tuple[float, float]]:
        """``{key: (sum, count)}`` over the interval and the DP group; resets the accumulator."""
        if not self.blocks:
            return {}
        sums: dict[str, torch.Tensor] = {}
        for keys, block in self.blocks.items():
            for key, pair in zip(keys, block.unbind(0)):
                sums[key] = sums[key] + pair if key in sums else pair
        keys = sorted(sums)
        stacked = torch.stack([sums[k] for k in keys])  # [k, 2]
        # Non-finite values stay visible: inf is "r of a uniform warm-up", NaN a diverged loss.
        torch.distributed.all_reduce(stacked, group=dp_group)
        values = stacked.tolist()
        self.blocks = {}
        return {k: tuple(v) for k, v in zip(keys, values)}


def summarise_train(pairs: dict[str, tuple[float, float]], domains: list[str]) -> dict:
    """Metrics-file fields from reduced report pairs (``sum / count`` each; per domain when >1)."""
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
        for key in ("loss", "token_share", "weight_share"):
            pair = pairs.get(f"domain {d} {key}")
            if pair is not None and pair[1]:
                entry[key] = pair[0] / pair[1]
        if entry:
            per_domain[name] = entry
    if len(per_domain) > 1:
        out["domains"] = per_domain
    return out


def _sci(value) -> str:
    return "nan" if value is None else f"{value:.6E}"


def console_line(record: dict, train_iters: int) -> str:
    """Megatron-LM's ``iteration i/ N | key: value | ...`` line, plus the reweighting fields."""
    parts = [
        f" iteration {record['iteration']:8d}/{train_iters:8d}",
        f"consumed samples: {record['consumed_samples']:12d}",
        f"elapsed time per iteration (ms): {record['ms_per_iter']:.1f}",
        f"tokens/s: {record['tokens_per_s']:.0f}",
        f"learning rate: {record['lr']:.6E}",
        f"global batch size: {record['global_batch_size']:5d}",
        f"lm loss: {_sci(record.get('lm loss'))}",
        f"weighted loss: {_sci(record.get('weighted loss'))}",
    ]
    if record.get("reweight r") is not None:
        parts += [f"r: {record['reweight r']:.4g}", f"ess: {record['ess']:.4f}", f"max weight: {record['max_weight']:.3f}"]
        if "group_size" in record:
            parts.append(f"group: {record['group_size']}")
    else:
        parts.append("r: uniform")
    grad_norm = record.get("grad_norm")
    parts += [f"grad norm: {'nan' if grad_norm is None else f'{grad_norm:.3f}'}",
              f"number of skipped iterations: {record['skipped']:3d}",
              f"number of nan iterations: {record['nan_iterations']:3d}",
              f"nonfinite samples: {record.get('nonfinite', 0)}"]
    for name, d in record.get("domains", {}).items():
        share = f" w {d['weight_share']:.3f}" if "weight_share" in d else ""
        parts.append(f"{name}: loss {d.get('loss', math.nan):.3f} tok {d.get('token_share', 0):.3f}{share}")
    return " | ".join(parts) + " |"


def validation_line(record: dict) -> str:
    domains = " | ".join(f"{name} loss: {d['loss']:.6E} ppl: {d['ppl']:.3f}" for name, d in record["domains"].items())
    return f" validation at iteration {record['iteration']:8d} | loss: {record['loss']:.6E} | ppl: {record['ppl']:.3f} | {domains} |"


class MetricsSink:
    """Writes records to the metrics file, tensorboard and wandb (each optional)."""

    def __init__(self, *, metrics_file: str | None, tensorboard_dir: str | None, wandb_project: str | None,
                 wandb_name: str | None, run_config: dict):
        self.file = None
        if metrics_file:
            os.makedirs(os.path.dirname(os.path.abspath(metrics_file)), exist_ok=True)
            self.file = open(metrics_file, "a")
        self.writer = None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("warning: --tensorboard-dir given but tensorboard is not installed (pip install tensorboard); "
                      "not writing tensorboard events", flush=True)
            else:
                self.writer = SummaryWriter(tensorboard_dir)
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                print("warning: --wandb-project given but wandb is not installed (pip install wandb); "
                      "not logging to wandb", flush=True)
            else:
                self.wandb = wandb.init(project=wandb_project, name=wandb_name, config=run_config)

    def write(self, record: dict) -> None:
        if self.file:
            self.file.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")
            self.file.flush()
        if record.get("kind") in ("train", "valid") and (self.writer or self.wandb):
            scalars = _scalars(record)
            if self.writer:
                for key, value in scalars.items():
                    self.writer.add_scalar(key, value, record["iteration"])
                self.writer.flush()
            if self.wandb:
                self.wandb.log(scalars, step=record["iteration"])

    def close(self):
        if self.file:
            self.file.close()
        if self.writer:
            self.writer.close()
        if self.wandb:
            self.wandb.finish()


def _scalars(record: dict) -> dict[str, float]:
    """Flat ``{tag: value}`` of a record's finite numbers; per-domain as ``{prefix}{domain}/{key}``."""
    prefix = "" if record["kind"] == "train" else "valid/"
    out = {}
    for key, value in record.items():
        if isinstance(value, (bool, int, float)) and key != "iteration" and math.isfinite(value):
            out[prefix + key] = float(value)
    for name, d in record.get("domains", {}).items():
        for key, value in d.items():
            if math.isfinite(value):
                out[f"{prefix}{name}/{key}"] = value
    return out


def _json_safe(value):
    """``record`` with non-finite floats as null (strict JSON; a NaN loss must not stop the run)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path: str, kind: str | None = None) -> list[dict]:
    """The records of a metrics file (JSON lines), or only those of ``kind`` (train, valid, group)."""
    with open(path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
