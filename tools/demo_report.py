"""The demo's report: plots and a markdown + JSON summary from two runs' metrics files.

Input: ``{strategy: [metrics records]}`` as written by ``--metrics-file`` (see
docs/architecture.md). Every number in the summary is read from those records; nothing is
estimated here.
"""

import json
import math
import os

import torch

from reweighting import normalise_losses, sample_weights


def _train(records):
    return [r for r in records if r["kind"] == "train"]


def _valid(records):
    return [r for r in records if r["kind"] == "valid"]


def weight_share_vs_data_share(records) -> dict:
    """Per domain: mean weight share and mean token share over the reweighting iterations."""
    rows = [r for r in _train(records) if r.get("reweight r") is not None and "domains" in r]
    out = {}
    for r in rows:
        for name, d in r["domains"].items():
            entry = out.setdefault(name, {"weight_share": 0.0, "token_share": 0.0, "n": 0})
            entry["weight_share"] += d.get("weight_share", 0.0)
            entry["token_share"] += d.get("token_share", 0.0)
            entry["n"] += 1
    return {k: {"weight_share": v["weight_share"] / v["n"], "token_share": v["token_share"] / v["n"]}
            for k, v in out.items() if v["n"]}


def summarise(runs: dict) -> dict:
    summary = {"final_train_loss": {}, "final_valid_loss": {}, "final_valid_ppl": {}, "domains": {}}
    for name, records in runs.items():
        train, valid = _train(records), _valid(records)
        summary["final_train_loss"][name] = train[-1]["lm loss"]
        summary["final_valid_loss"][name] = valid[-1]["loss"]
        summary["final_valid_ppl"][name] = {d: v["ppl"] for d, v in valid[-1]["domains"].items()}
        summary["tokens"] = train[-1]["tokens"]
    if "linupper" in runs:
        summary["weight_vs_data_share"] = weight_share_vs_data_share(runs["linupper"])
        stats = [r for r in _train(runs["linupper"]) if r.get("ess") is not None]
        if stats:
            summary["mean_ess"] = sum(r["ess"] for r in stats) / len(stats)
            summary["mean_max_weight"] = sum(r["max_weight"] for r in stats) / len(stats)
    return summary


def _markdown(summary: dict) -> str:
    names = list(summary["final_valid_loss"])
    lines = ["# Demo: uniform vs LinUpper", "",
             f"Tokens per run: {summary['tokens']:,}", "",
             "| run | final train lm loss | final mean validation loss |", "|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {summary['final_train_loss'][n]:.4f} | {summary['final_valid_loss'][n]:.4f} |")
    domains = sorted(summary["final_valid_ppl"][names[0]])
    lines += ["", "Validation perplexity per domain (held-out, fixed, unweighted):", "",
              "| domain | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for d in domains:
        lines.append(f"| {d} | " + " | ".join(f"{summary['final_valid_ppl'][n][d]:.2f}" for n in names) + " |")
    if "weight_vs_data_share" in summary:
        lines += ["", "LinUpper: share of the weight each domain received vs its share of the tokens "
                  "(means over the reweighting iterations):", "",
                  "| domain | token share | weight share | ratio |", "|---|---|---|---|"]
        for d, v in sorted(summary["weight_vs_data_share"].items()):
            ratio = v["weight_share"] / v["token_share"] if v["token_share"] else math.nan
            lines.append(f"| {d} | {v['token_share']:.3f} | {v['weight_share']:.3f} | {ratio:.3f} |")
    if "mean_ess" in summary:
        lines += ["", f"LinUpper mean effective sample size / N: {summary['mean_ess']:.3f}; "
                  f"mean N x max weight: {summary['mean_max_weight']:.3f}."]
    return "\n".join(lines) + "\n"


def _plots(runs: dict, out: str) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in runs.items():
        t = _train(records)
        axes[0].plot([r["tokens"] for r in t], [r["lm loss"] for r in t], label=name)
        v = _valid(records)
        axes[1].plot([r["tokens"] for r in v], [r["loss"] for r in v], marker="o", label=name)
    for ax, title in zip(axes, ("training lm loss (unweighted)", "mean validation loss")):
        ax.set_xlabel("tokens"), ax.set_title(title), ax.legend()
    files.append(_save(fig, out, "loss.png"))

    if "linupper" in runs:
        t = [r for r in _train(runs["linupper"])]
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        its = [r["iteration"] for r in t]
        axes[0].plot(its, [r["reweight r"] if r.get("reweight r") is not None else math.nan for r in t])
        axes[0].set_title("r (gap: uniform warm-up)")
        axes[1].plot(its, [r.get("ess", math.nan) for r in t]), axes[1].set_title("effective sample size / N")
        axes[2].plot(its, [r.get("max_weight", math.nan) for r in t]), axes[2].set_title("N x max weight")
        for ax in axes:
            ax.set_xlabel("iteration")
        files.append(_save(fig, out, "weights_over_time.png"))

        groups = [r for r in runs["linupper"] if r["kind"] == "group" and r.get("r")]
        if groups:
            picks = [groups[0], groups[len(groups) // 2], groups[-1]]
            fig, ax = plt.subplots(figsize=(6, 4))
            for g in picks:
                losses = torch.tensor(g["losses"])
                h = normalise_losses(losses, g["delta"])
                w = sample_weights(losses, g["strategy"], g["r"], g["delta"]) * len(losses)
                ax.scatter(h.tolist(), w.tolist(), label=f"iteration {g['iteration']}", s=14)
            ax.set_xlabel("normalised loss h"), ax.set_ylabel("N x weight"), ax.legend()
            ax.set_title("LinUpper weights against normalised loss")
            files.append(_save(fig, out, "weights_vs_loss.png"))

    names = list(runs)
    last = {n: _valid(runs[n])[-1]["domains"] for n in names}
    domains = sorted(last[names[0]])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([j + i * width for j in range(len(domains))], [last[n][d]["ppl"] for d in domains], width, label=n)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(domains))], domains)
    ax.set_ylabel("validation perplexity"), ax.legend()
    files.append(_save(fig, out, "domain_perplexity.png"))
    return files


def _save(fig, out, name) -> str:
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(runs: dict, manifest: dict, out: str) -> dict:
    """Write plots, ``summary.md`` and ``summary.json`` to ``out``; return the summary."""
    os.makedirs(out, exist_ok=True)
    summary = summarise(runs)
    summary["plots"] = [os.path.basename(p) for p in _plots(runs, out)]
    summary["data_tokens"] = manifest.get("tokens")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, allow_nan=False)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(_markdown(summary) + "\nPlots: " + ", ".join(summary["plots"]) + "\n")
    return summary
