"""The demo's report: plots and a markdown + JSON summary from the runs' metrics files.

Input: ``{strategy: metrics file or [one per seed]}``, the files ``--metrics-file`` wrote (see
docs/architecture.md, "The metrics file"), read with
:func:`megatron_patch.logging_utils.read_metrics` into a *run*: ``{"train": [...], "valid":
[...], "group": [...]}`` records. The single-run summary is the first seed's; the loss and
perplexity plots and, with several seeds, the means with their spreads and differences come from
tools/compare_runs.py. Every number is read from the records or computed from them; nothing is
estimated.
"""

import math
import os

import torch

from megatron_patch.files import write_atomically, write_json_atomically
from megatron_patch.logging_utils import read_metrics
from reweighting import normalise_losses, sample_weights, strategy_score
from tools import compare_runs

REDUNDANT = "redundant"  # tools/build_corpus.py's opt-in domain of near and exact duplicates
KINDS = ("train", "valid", "group")


def load_runs(metrics_files: dict) -> dict:
    """``{strategy: {kind: records}}`` for each ``{strategy: metrics file}``."""
    return {name: {kind: read_metrics(path, kind) for kind in KINDS} for name, path in metrics_files.items()}


def domain_names(manifest: dict) -> list:
    """Training domain names by domain id: the order of the prefixes in the training blend."""
    by_prefix = {d["splits"]["train"]["prefix"]: name for name, d in manifest["domains"].items()}
    return [by_prefix[p] for p in manifest["train_data_path"].split()[1::2]]


def weight_share_vs_data_share(train_records) -> dict:
    """Per domain: mean weight share and mean token share over the reweighting iterations."""
    return compare_runs.weight_shares(train_records)


def summarise(runs: dict) -> dict:
    """Final losses and perplexities of every run; for ``linupper``, where its weight went."""
    summary = {"final_train_loss": {}, "final_valid_loss": {}, "final_valid_ppl": {}}
    for name, run in runs.items():
        train, valid = run["train"], run["valid"]
        summary["final_train_loss"][name] = train[-1]["lm loss"]
        summary["final_valid_loss"][name] = valid[-1]["loss"]
        summary["final_valid_ppl"][name] = {d: v["ppl"] for d, v in valid[-1]["domains"].items()}
        summary["tokens"] = train[-1]["tokens"]
    if "uniform" in runs and "linupper" in runs:
        loss = summary["final_valid_loss"]
        summary["valid_loss_difference"] = loss["linupper"] - loss["uniform"]
        ppl = summary["final_valid_ppl"]
        summary["valid_ppl_change"] = {d: ppl["linupper"][d] / ppl["uniform"][d] - 1 for d in ppl["uniform"]}
    if "linupper" in runs:
        summary["weight_vs_data_share"] = weight_share_vs_data_share(runs["linupper"]["train"])
        stats = [r for r in runs["linupper"]["train"] if r.get("ess") is not None]
        if stats:
            summary["mean_ess"] = sum(r["ess"] for r in stats) / len(stats)
            summary["mean_max_weight"] = sum(r["max_weight"] for r in stats) / len(stats)
    return summary


def _verdict(summary: dict) -> list:
    """Plain sentences read off the numbers, whichever way they point."""
    lines = []
    if "valid_loss_difference" in summary:
        diff = summary["valid_loss_difference"]
        side = "below" if diff < 0 else "above"
        lines.append(f"- LinUpper's final mean validation loss is {abs(diff):.4f} nats {side} uniform's "
                     f"({'LinUpper' if diff < 0 else 'uniform'} is ahead at this scale).")
        change = summary["valid_ppl_change"]
        better = sorted(d for d, c in change.items() if c < 0)
        worse = sorted(d for d, c in change.items() if c >= 0)
        lines.append(f"- Validation perplexity under LinUpper: lower on {', '.join(better) or 'no domain'}; "
                     f"higher or equal on {', '.join(worse) or 'no domain'}.")
    share = summary.get("weight_vs_data_share", {}).get(REDUNDANT)
    if share and share["token_share"]:
        ratio = share["weight_share"] / share["token_share"]
        how = "down-weighted" if ratio < 1 else "not down-weighted"
        lines.append(f"- The redundant domain was {how}: {share['weight_share']:.3f} of the weight for "
                     f"{share['token_share']:.3f} of the tokens (ratio {ratio:.3f}).")
    return lines


def _markdown(summary: dict) -> str:
    names = list(summary["final_valid_loss"])
    context = summary.get("context", {})
    lines = ["# Demo: uniform vs LinUpper", ""]
    if context:
        recipe = context["recipe"]
        lines += [f"{context['date']}, `{context['command']}` on {context['machine']}.",
                  f"Recipe: {recipe['iters']} iterations, sequence {recipe['seq']}, micro batch {recipe['micro']} "
                  f"x DP 2 (a group of {2 * recipe['micro']} samples), LinUpper r = {recipe['r']} after "
                  f"{recipe['warmup']} uniform warm-up iterations, seed {context['seed']}.",
                  "Wall time per run: " + ", ".join(f"{k} {v:.0f} s" for k, v in context["wall_s"].items()) + ".", ""]
        if len(context.get("seeds", [])) > 1:
            lines += [f"The tables below are seed {context['seed']}'s; the means over seeds "
                      f"{', '.join(map(str, context['seeds']))} follow them.", ""]
    lines += [f"Tokens per run: {summary['tokens']:,}", "",
              "| run | final train lm loss | final mean validation loss |", "|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {summary['final_train_loss'][n]:.4f} | {summary['final_valid_loss'][n]:.4f} |")
    domains = sorted(summary["final_valid_ppl"][names[0]])
    change = summary.get("valid_ppl_change")
    lines += ["", "Validation perplexity per domain (held-out, fixed, unweighted):", "",
              "| domain | " + " | ".join(names) + (" | change |" if change else " |"),
              "|---" * (len(names) + 1 + bool(change)) + "|"]
    for d in domains:
        cells = [f"{summary['final_valid_ppl'][n][d]:.2f}" for n in names] + ([f"{100 * change[d]:+.1f}%"] if change else [])
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
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
    verdict = _verdict(summary)
    if verdict:
        lines += ["", "What the numbers say:", "", *verdict]
    return "\n".join(lines) + "\n"


def _plot_weight_stats(plt, train_records):
    t = train_records
    its = [r["iteration"] for r in t]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(its, [r["reweight r"] if r.get("reweight r") is not None else math.nan for r in t])
    axes[0].set_title("r (gap: uniform warm-up)")
    axes[1].plot(its, [r.get("ess", math.nan) for r in t]), axes[1].set_title("effective sample size / N")
    axes[2].plot(its, [r.get("max_weight", math.nan) for r in t]), axes[2].set_title("N x max weight")
    for ax in axes:
        ax.set_xlabel("iteration")
    return fig


def _plot_group_weights(plt, groups, names):
    """N x weight against normalised loss for up to three logged groups, one colour per domain.

    The line is the strategy's weight curve for that group: N exp(s(h)/r) / sum_j exp(s_j/r).
    """
    picks = [groups[i] for i in sorted({0, len(groups) // 2, len(groups) - 1})]
    fig, axes = plt.subplots(1, len(picks), figsize=(5 * len(picks), 4), sharey=True, squeeze=False)
    for ax, g in zip(axes[0], picks):
        losses = torch.tensor(g["losses"])
        h = normalise_losses(losses, g["delta"])
        w = sample_weights(losses, g["strategy"], g["r"], g["delta"]) * len(losses)
        scores = strategy_score(h, g["strategy"], g["delta"])
        grid = torch.linspace(-g["delta"], g["delta"], 101)
        curve = len(losses) * torch.exp(strategy_score(grid, g["strategy"], g["delta"]) / g["r"]) \
            / torch.exp(scores / g["r"]).sum()
        ax.plot(grid.tolist(), curve.tolist(), color="grey", lw=1)
        ids = g.get("domain_ids") or [0] * len(losses)
        for d in sorted(set(ids)):
            keep = [i for i, x in enumerate(ids) if x == d]
            label = names[d] if d < len(names) else f"domain {d}"
            ax.scatter([h[i].item() for i in keep], [w[i].item() for i in keep], s=24, label=label,
                       color=f"C{d}", marker="x" if label == REDUNDANT else "o")
        ax.axhline(1.0, color="grey", lw=0.5, ls=":")  # the uniform weight
        ax.set_title(f"iteration {g['iteration']} (r = {g['r']:g})"), ax.set_xlabel("normalised loss h")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("N x weight")
    return fig


def _plots(runs: dict, seeds: dict, comparison: dict, names: list, out: str) -> list:
    plt = compare_runs.pyplot()
    figures = {"loss.png": compare_runs.plot_losses(plt, seeds),
               "domain_perplexity.png": compare_runs.plot_domain_perplexity(plt, comparison)}
    if "linupper" in runs:
        figures["weights_over_time.png"] = _plot_weight_stats(plt, runs["linupper"]["train"])
        groups = [g for g in runs["linupper"]["group"] if g.get("r")]
        if groups:
            figures["weights_vs_loss.png"] = _plot_group_weights(plt, groups, names)
    for name, fig in figures.items():
        compare_runs.save_figure(plt, fig, os.path.join(out, name))
    return list(figures)


def write_report(metrics_files: dict, manifest: dict, out: str, context: dict = None) -> dict:
    """Write plots, ``summary.md`` and ``summary.json`` to ``out`` from ``{strategy: metrics file}``
    (or ``{strategy: [metrics file of each seed]}``); return the summary.

    ``context`` (recipe, seed, wall times, machine, date, command) is copied into the summary.
    The single-run numbers are the first seed's; ``comparison`` holds tools/compare_runs.py's
    means and spreads over all seeds, and the markdown shows them when there are several.
    """
    os.makedirs(out, exist_ok=True)
    files = {name: [paths] if isinstance(paths, str) else list(paths) for name, paths in metrics_files.items()}
    runs = load_runs({name: paths[0] for name, paths in files.items()})
    seeds = {name: [compare_runs.load_seed(p) for p in paths] for name, paths in files.items()}
    summary = summarise(runs)
    summary["data_tokens"] = manifest.get("tokens")
    if context:
        summary["context"] = context
    comparison = compare_runs.summarise(seeds, "uniform" if "uniform" in seeds else next(iter(seeds)))
    summary["comparison"] = comparison
    summary["plots"] = _plots(runs, seeds, comparison, domain_names(manifest), out)
    several = max(len(paths) for paths in files.values()) > 1
    text = _markdown(summary) + ("\n" + compare_runs.markdown(comparison, level=2) if several else "")
    write_json_atomically(os.path.join(out, "summary.json"), summary, indent=1, allow_nan=False)
    write_atomically(os.path.join(out, "summary.md"), text + "\nPlots: " + ", ".join(summary["plots"]) + "\n")
    return summary
