"""The redundancy experiment's report: per share, LinUpper against uniform over seeds, and a verdict.

Input: the runs of tools/experiments/redundancy.py (``{"share", "label", "seed", "metrics",
"wall_s"}``), each with its metrics file. Every number is read from those files through
tools/compare_runs.py (means, sample standard deviations, differences with standard errors) or
computed from them here; the verdict applies the rules written in docs/redundancy.md before the
first full run. Written to ``out``: ``summary.md``, ``summary.json`` and the plots.
"""

import math
import os

from megatron_patch.files import write_atomically, write_json_atomically
from tools import compare_runs
from tools.compare_runs import fmt, fmt_diff, table
from tools.build_corpus import REDUNDANT

BASELINE = "uniform"
SIGNIFICANT = 2.0  # a difference "exceeds the seed spread" when it is above this many standard errors


def _redundant(record: dict, key: str):
    """The redundant stream's ``key`` (``token_share``, ``weight_share``) in one train record, or None."""
    return record.get("domains", {}).get(REDUNDANT, {}).get(key)


def run_numbers(seed: compare_runs.Seed) -> dict:
    """One run's final mean validation loss and the redundant stream's mean token and weight shares."""
    token = [v for v in (_redundant(r, "token_share") for r in seed.train) if v is not None]
    weight = compare_runs.weight_shares(seed.train).get(REDUNDANT, {}).get("weight_share")
    return {"final_valid_loss": seed.valid[-1]["loss"], "tokens": seed.train[-1]["tokens"],
            "redundant_token_share": sum(token) / len(token) if token else 0.0, "redundant_weight_share": weight}


def share_summary(seeds: dict) -> dict:
    """compare_runs' summary of one share's ``{label: [Seed]}``, the paired per-seed differences and
    the redundant stream's shares (mean and spread over seeds) of every label."""
    summary = {"comparison": compare_runs.summarise(seeds, BASELINE), "paired": {}, "redundant": {}}
    for label, runs in seeds.items():
        numbers = [run_numbers(s) for s in runs]
        summary["redundant"][label] = {key: compare_runs.mean_spread([n[key] for n in numbers])
                                       for key in ("redundant_token_share", "redundant_weight_share")}
        if label != BASELINE:  # each label's runs are in seed order: pairs share data order and initial model
            summary["paired"][label] = compare_runs.mean_spread([s.valid[-1]["loss"] - b.valid[-1]["loss"]
                                                                 for s, b in zip(runs, seeds[BASELINE])])
    return summary


def verdict(shares: dict) -> tuple:
    """``(facts, lines)``: per LinUpper label, the advantage (uniform - LinUpper) by share, whether it
    grows with the share and exceeds the seed spread, by the rules of docs/redundancy.md."""
    order = sorted(shares, key=float)
    labels = [label for label in shares[order[0]]["comparison"]["differences"]]
    facts, lines = {}, []
    for label in labels:
        diffs = [shares[s]["comparison"]["differences"][label]["final_valid_loss"] for s in order]
        advantage = [-d["diff"] for d in diffs]
        se = [d["se"] for d in diffs]
        exceeds = [None if e is None else abs(a) > SIGNIFICANT * e for a, e in zip(advantage, se)]
        grows = all(b > a for a, b in zip(advantage, advantage[1:])) if len(order) > 1 else None
        growth = advantage[-1] - advantage[0]
        growth_se = math.sqrt(se[-1] ** 2 + se[0] ** 2) if None not in (se[0], se[-1]) else None
        if len(order) < 2 or growth_se is None:
            outcome = "untested (needs two shares and two seeds)"
        elif grows and exceeds[-1] and advantage[-1] > 0:
            outcome = "supports the paper's mechanism"
        elif growth < -SIGNIFICANT * growth_se:
            outcome = "against the paper's mechanism"
        else:
            outcome = "inconclusive"
        facts[label] = {"shares": order, "advantage": advantage, "se": se, "exceeds_spread": exceeds,
                        "grows": grows, "growth": growth, "growth_se": growth_se, "outcome": outcome}
        per_share = ", ".join(f"{s}%: {-a:+.4f}" + (f" ± {e:.4f}" if e is not None else "")
                              for s, a, e in zip(order, advantage, se))
        lines.append(f"{label} - uniform, final mean validation loss: {per_share}.")
        ahead = [s for s, a, x in zip(order, advantage, exceeds) if x and a > 0]
        behind = [s for s, a, x in zip(order, advantage, exceeds) if x and a < 0]
        trend = {True: "grows", False: "does not grow", None: "has one share, so no trend"}[grows]
        lines.append(f"{label}: the advantage {trend} with the redundant share; "
                     f"beyond {SIGNIFICANT:g} standard errors LinUpper is ahead at "
                     f"{', '.join(f'{s}%' for s in ahead) or 'no share'} and behind at "
                     f"{', '.join(f'{s}%' for s in behind) or 'no share'}; from {order[0]}% to {order[-1]}% the "
                     f"advantage changes by {growth:+.4f}" + (f" ± {growth_se:.4f}" if growth_se is not None else "")
                     + f": {outcome}.")
    return facts, lines


def _markdown(summary: dict) -> str:
    context, shares = summary["context"], summary["shares"]
    grid, stream = context["grid"], context["redundant_stream"]
    lines = ["# Redundancy experiment: LinUpper against uniform as repeated data grows", "",
             f"{context['date']}, `{context['command']}` on {context['machine']}; "
             f"{context['wall_s'] / 60:.1f} minutes for data and runs.",
             f"Grid: shares {', '.join(f'{s:g}%' for s in grid['shares'])} of the training tokens; uniform and LinUpper "
             f"r = {', '.join(f'{r:g}' for r in grid['rs'])} (uniform warm-up {grid['warmup']} iterations); seeds "
             f"{', '.join(map(str, grid['seeds']))}. {grid['iters']} iterations of {2 * grid['micro']} sequences of "
             f"{grid['seq']} tokens; validation every {grid['eval']} iterations on {grid['eval_iters']} batches per domain.",
             f"Redundant stream: {len(stream['documents'])} training documents ({', '.join(stream['documents'])}), "
             f"{stream['tokens']:,} tokens, repeated.", "",
             "## LinUpper - uniform, final mean validation loss on the ordinary domains", "",
             "Means ± sample standard deviation over seeds; a difference ± its standard error (compare_runs); "
             "paired: the mean ± standard deviation of the per-seed differences (same data order).", ""]
    rows = []
    for share, s in sorted(shares.items(), key=lambda kv: float(kv[0])):
        labels = s["comparison"]["labels"]
        for label, d in s["comparison"]["differences"].items():
            paired = s["paired"][label]
            rows.append([f"{share}%", label, fmt(labels[BASELINE]["final_valid_loss"]),
                         fmt(labels[label]["final_valid_loss"]), fmt_diff(d["final_valid_loss"]),
                         fmt_diff({"diff": paired["mean"], "se": paired["std"]})])
    lines += table(["share", "LinUpper", "uniform loss", "LinUpper loss", "LinUpper - uniform", "paired"], rows)
    lines += ["", "## The redundant stream: weight share against token share", "",
              "Means over the iterations that reweighted, then over seeds.", ""]
    rows = []
    for share, s in sorted(shares.items(), key=lambda kv: float(kv[0])):
        for label, r in s["redundant"].items():
            if label != BASELINE and float(share) > 0:
                token, weight = r["redundant_token_share"], r["redundant_weight_share"]
                ratio = weight["mean"] / token["mean"] if weight["mean"] is not None and token["mean"] else None
                shown = "-" if ratio is None else f"{ratio:.3f}"
                rows.append([f"{share}%", label, fmt(token, 3), fmt(weight, 3), shown])
    lines += table(["share", "run", "token share", "weight share", "ratio"], rows)
    lines += ["", "## Verdict (the rules of docs/redundancy.md)", "", *(f"- {line}" for line in summary["verdict"]),
              "", "## Every run", ""]
    lines += table(["share", "run", "seed", "final mean validation loss", "redundant token share",
                     "redundant weight share", "wall s"],
                    [[f"{r['share']:g}%", r["label"], str(r["seed"]), f"{r['final_valid_loss']:.4f}",
                      f"{r['redundant_token_share']:.3f}",
                      "-" if r["redundant_weight_share"] is None else f"{r['redundant_weight_share']:.3f}",
                      f"{r['wall_s']:.0f}"] for r in summary["runs"]])
    for share, s in sorted(shares.items(), key=lambda kv: float(kv[0])):
        lines += ["", compare_runs.markdown(s["comparison"], level=2).replace("## Runs compared",
                                                                              f"## Share {share}%: runs compared")]
    return "\n".join(lines) + "\n"


def _plot_weight_share(plt, grouped: dict):
    """The redundant stream's weight share against tokens (mean ± spread over seeds), token share dashed."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for share, seeds in grouped.items():
        for label, runs in seeds.items():
            if label == BASELINE or not float(share):
                continue
            tokens, mean, std = compare_runs.curve(runs, "train", lambda r: _redundant(r, "weight_share"))
            line, = ax.plot(tokens, mean, label=f"{share}%: {label}")
            ax.fill_between(tokens, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.2)
            tokens, mean, _ = compare_runs.curve(runs, "train", lambda r: _redundant(r, "token_share"))
            ax.plot(tokens, mean, ls="--", lw=1, color=line.get_color())
    ax.set_xlabel("tokens"), ax.set_ylabel("share of the redundant stream")
    ax.set_title("weight share (solid) against token share (dashed)"), ax.legend(fontsize=8)
    return fig


def _plot_advantage(plt, facts: dict):
    """LinUpper - uniform final mean validation loss against the redundant share, ± standard error."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, f in facts.items():
        shares = [float(s) for s in f["shares"]]
        ax.errorbar(shares, [-a for a in f["advantage"]], yerr=[e or 0.0 for e in f["se"]], marker="o",
                    capsize=3, label=label)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("redundant share of the training tokens (%)"), ax.set_ylabel("LinUpper - uniform (nats)")
    ax.set_title("final mean validation loss, ordinary domains"), ax.legend()
    return fig


def write_report(runs: list, out: str, context: dict) -> dict:
    """Write ``summary.md``, ``summary.json`` and the plots of the experiment's ``runs``; return the summary."""
    os.makedirs(out, exist_ok=True)
    grouped, rows = {}, []
    for run in runs:
        seed = compare_runs.load_seed(run["metrics"])
        grouped.setdefault(f"{run['share']:g}", {}).setdefault(run["label"], []).append(seed)
        rows.append(dict(run, **run_numbers(seed)))
    shares = {share: share_summary(seeds) for share, seeds in grouped.items()}
    facts, lines = verdict(shares)
    summary = {"context": context, "runs": rows, "shares": shares, "facts": facts, "verdict": lines}
    plt = compare_runs.pyplot()
    figures = {f"loss_share_{share}.png": compare_runs.plot_losses(plt, seeds) for share, seeds in grouped.items()}
    figures["advantage.png"] = _plot_advantage(plt, facts)
    if any(float(share) for share in grouped):
        figures["redundant_weight_share.png"] = _plot_weight_share(plt, grouped)
    for name, fig in figures.items():
        compare_runs.save_figure(plt, fig, os.path.join(out, name))
    summary["plots"] = list(figures)
    write_json_atomically(os.path.join(out, "summary.json"), summary, indent=1, allow_nan=False)
    write_atomically(os.path.join(out, "summary.md"), _markdown(summary) + "\nPlots: " + ", ".join(figures) + "\n")
    return summary
