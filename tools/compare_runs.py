"""Compare runs, several seeds per label: a markdown report, a JSON summary and plots.

    python tools/compare_runs.py --out reports/cmp uniform=runs/u1 uniform=runs/u2 linupper=runs/l1 linupper=runs/l2

Each ``LABEL=PATH`` is one seed of a run: a metrics file (``--metrics-file``, JSON lines) or a
run directory holding ``metrics.jsonl`` (and ``downstream.json`` from tools/evaluate.py, if it
was evaluated). Repeat a label for its seeds. Written to ``--out``: ``report.md``,
``summary.json`` and ``loss.png`` (training and mean validation loss against tokens),
``domain_perplexity.png`` (final validation perplexity per domain), ``weight_shares.png`` (each
domain's weight share against its token share, runs that reweight) and ``downstream.png``
(downstream scores, where present).

Every number is a mean over a label's seeds with its spread, the sample standard deviation
(n - 1; none for one seed); each difference to ``--baseline`` (default: the first label) is the
difference of the means with its standard error, sqrt(s1^2/n1 + s2^2/n2).
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import dataclasses
import json
import math
import os
import statistics

from megatron_patch.errors import ArgumentError, one_line
from megatron_patch.files import write_atomically, write_json_atomically
from megatron_patch.logging_utils import read_metrics
from tools.cli import ToolParser, run_tool

DOWNSTREAM = "downstream.json"  # tools/evaluate.py's results in a run directory


@dataclasses.dataclass
class Seed:
    """One run (one seed of a label): its records by kind and its downstream scores."""

    path: str
    train: list
    valid: list
    downstream: dict  # task -> metric -> value (tools/evaluate.py's "scores")


def _last_per_iteration(records: list) -> list:
    """One record per iteration, the last written: a resumed run re-logs the iterations after its checkpoint."""
    by_iteration = {r["iteration"]: r for r in records}
    return [by_iteration[i] for i in sorted(by_iteration)]


def load_seed(path: str) -> Seed:
    """A metrics file, or a run directory with ``metrics.jsonl`` (and ``downstream.json``)."""
    metrics, downstream = path, {}
    if os.path.isdir(path):
        metrics = os.path.join(path, "metrics.jsonl")
        if os.path.exists(os.path.join(path, DOWNSTREAM)):
            with open(os.path.join(path, DOWNSTREAM)) as handle:
                downstream = json.load(handle)["scores"]
    try:
        records = read_metrics(metrics)
    except (OSError, ValueError) as err:
        raise ArgumentError(f"run {path}: no readable metrics file ({one_line(err)}); pass LABEL=METRICS.jsonl "
                            "or LABEL=RUN_DIR holding metrics.jsonl") from None
    train = _last_per_iteration([r for r in records if r.get("kind") == "train"])
    valid = _last_per_iteration([r for r in records if r.get("kind") == "valid"])
    if not train and not valid:
        raise ArgumentError(f"run {path}: {metrics} has no train or valid records; is it a --metrics-file?")
    return Seed(path, train, valid, downstream)


def load_runs(specs: list) -> dict:
    """``{label: [Seed, ...]}`` from ``LABEL=PATH`` strings, labels in their first order."""
    runs = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise ArgumentError(f"run {spec!r}: expected LABEL=PATH (a metrics file or a run directory)")
        runs.setdefault(label, []).append(load_seed(path))
    return runs


def mean_spread(values: list) -> dict:
    """``{"mean", "std", "n"}`` of ``values`` (std: sample standard deviation; None for one value)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def difference(a: dict, b: dict) -> dict:
    """``a - b`` of two :func:`mean_spread` results, with the standard error of the difference."""
    if a["mean"] is None or b["mean"] is None:
        return {"diff": None, "se": None}
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"]) if a["std"] is not None and \
        b["std"] is not None else None
    return {"diff": a["mean"] - b["mean"], "se": se}


def weight_shares(train: list) -> dict:
    """Per domain: mean weight share and token share over the iterations that reweighted."""
    rows = [r for r in train if r.get("reweight r") is not None and "domains" in r]
    shares = {}
    for record in rows:
        for name, d in record["domains"].items():
            if "weight_share" in d:
                shares.setdefault(name, []).append((d["weight_share"], d.get("token_share", math.nan)))
    return {name: {"weight_share": statistics.fmean(w for w, _ in v), "token_share": statistics.fmean(t for _, t in v)}
            for name, v in shares.items()}


def summarise(runs: dict, baseline: str) -> dict:
    """Means, spreads and differences to ``baseline`` of every label (the report's numbers)."""
    out = {"baseline": baseline, "labels": {}}
    for label, seeds in runs.items():
        finals = [s.valid[-1] for s in seeds if s.valid]
        domains = sorted({d for f in finals for d in f.get("domains", {})})
        shares = [weight_shares(s.train) for s in seeds]
        share_domains = sorted({d for sh in shares for d in sh})
        tasks = {(t, m) for s in seeds for t, ms in s.downstream.items() for m in ms}
        out["labels"][label] = {
            "seeds": [s.path for s in seeds],
            "tokens": mean_spread([s.train[-1]["tokens"] for s in seeds if s.train]),
            "final_train_loss": mean_spread([s.train[-1].get("lm loss") for s in seeds if s.train]),
            "final_valid_loss": mean_spread([f["loss"] for f in finals]),
            "valid_ppl": {d: mean_spread([f["domains"][d]["ppl"] for f in finals if d in f["domains"]]) for d in domains},
            "weight_share": {d: mean_spread([sh[d]["weight_share"] for sh in shares if d in sh]) for d in share_domains},
            "token_share": {d: mean_spread([sh[d]["token_share"] for sh in shares if d in sh]) for d in share_domains},
            "downstream": {f"{t}/{m}": mean_spread([s.downstream.get(t, {}).get(m) for s in seeds])
                           for t, m in sorted(tasks)},
        }
    base = out["labels"][baseline]
    out["differences"] = {}
    for label, numbers in out["labels"].items():
        if label == baseline:
            continue
        out["differences"][label] = {
            "final_valid_loss": difference(numbers["final_valid_loss"], base["final_valid_loss"]),
            "valid_ppl": {d: difference(v, base["valid_ppl"][d]) for d, v in numbers["valid_ppl"].items()
                          if d in base["valid_ppl"]},
            "downstream": {k: difference(v, base["downstream"][k]) for k, v in numbers["downstream"].items()
                           if k in base["downstream"]},
        }
    return out


def fmt(stat: dict, digits: int = 4) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else "")


def fmt_diff(d: dict, digits: int = 4) -> str:
    if d["diff"] is None:
        return "-"
    return f"{d['diff']:+.{digits}f}" + (f" ± {d['se']:.{digits}f}" if d["se"] is not None else "")


def table(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(summary: dict, level: int = 1) -> str:
    """The report: final losses, per-domain perplexity, weight shares and downstream scores, with differences."""
    labels, base = summary["labels"], summary["baseline"]
    others = [label for label in labels if label != base]
    h = "#" * level
    lines = [f"{h} Runs compared", "",
             "Mean ± sample standard deviation over seeds (none shown for one seed); differences are to "
             f"`{base}`, ± the standard error of the difference of means.", ""]
    lines += table(["label", "seeds", "tokens", "final train lm loss", "final mean validation loss",
                     f"difference to {base}"],
                    [[label, str(len(n["seeds"])), f"{n['tokens']['mean'] or 0:,.0f}", fmt(n["final_train_loss"]),
                      fmt(n["final_valid_loss"]),
                      fmt_diff(summary["differences"][label]["final_valid_loss"]) if label != base else ""]
                     for label, n in labels.items()])
    domains = sorted({d for n in labels.values() for d in n["valid_ppl"]})
    if domains:
        lines += ["", f"{h}# Final validation perplexity per domain", ""]
        lines += table(["domain", *labels, *(f"{o} - {base}" for o in others)],
                        [[d, *(fmt(n["valid_ppl"][d], 2) if d in n["valid_ppl"] else "-" for n in labels.values()),
                          *(fmt_diff(summary["differences"][o]["valid_ppl"].get(d, {"diff": None}), 2) for o in others)]
                         for d in domains])
    for label, n in labels.items():
        if n["weight_share"]:
            lines += ["", f"{h}# Weight share against token share: {label}", "",
                      "Means over the iterations that reweighted; ratio = weight share / token share.", ""]
            lines += table(["domain", "token share", "weight share", "ratio"],
                            [[d, fmt(n["token_share"][d], 3), fmt(n["weight_share"][d], 3),
                              f"{n['weight_share'][d]['mean'] / n['token_share'][d]['mean']:.3f}"
                              if n["token_share"][d]["mean"] else "-"] for d in sorted(n["weight_share"])])
    keys = sorted({k for n in labels.values() for k in n["downstream"]})
    if keys:
        lines += ["", f"{h}# Downstream (tools/evaluate.py)", ""]
        lines += table(["task/metric", *labels, *(f"{o} - {base}" for o in others)],
                        [[k, *(fmt(n["downstream"][k]) if k in n["downstream"] else "-" for n in labels.values()),
                          *(fmt_diff(summary["differences"][o]["downstream"].get(k, {"diff": None})) for o in others)]
                         for k in keys])
    return "\n".join(lines) + "\n"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def curve(seeds: list, kind: str, key):
    """tokens, mean, std of ``key`` over the seeds, at the token counts every seed logged.

    ``key`` is a record's key, or a function of the record that returns its value or None.
    """
    value = key if callable(key) else (lambda record: record.get(key))
    tables = [{r["tokens"]: value(r) for r in getattr(s, kind) if value(r) is not None} for s in seeds]
    tokens = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    stats = [mean_spread([t[x] for t in tables]) for x in tokens]
    return tokens, [s["mean"] for s in stats], [s["std"] or 0.0 for s in stats]


def plot_losses(plt, runs: dict):
    """Training lm loss and mean validation loss against tokens: the mean over seeds, ± its spread shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, seeds in runs.items():
        for ax, kind, key, marker in ((axes[0], "train", "lm loss", None), (axes[1], "valid", "loss", "o")):
            tokens, mean, std = curve(seeds, kind, key)
            line, = ax.plot(tokens, mean, marker=marker, label=f"{label} (n={len(seeds)})")
            if len(seeds) > 1:
                ax.fill_between(tokens, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=line.get_color(), alpha=0.2)
    for ax, title in zip(axes, ("training lm loss (unweighted)", "mean validation loss")):
        ax.set_xlabel("tokens"), ax.set_title(title), ax.legend()
    return fig


def _bars(plt, groups: list, series: dict, ylabel: str):
    """Grouped bars: one group per entry of ``groups``, one bar per series, error bars from the spreads."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * max(1, len(series))), 4))
    width = 0.8 / max(1, len(series))
    for i, (name, stats) in enumerate(series.items()):
        means = [stats[g]["mean"] if g in stats and stats[g]["mean"] is not None else math.nan for g in groups]
        errors = [(stats[g]["std"] or 0.0) if g in stats else 0.0 for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], means, width, yerr=errors, capsize=3, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups, rotation=20)
    ax.set_ylabel(ylabel), ax.legend()
    return fig


def plot_domain_perplexity(plt, summary: dict):
    labels = summary["labels"]
    domains = sorted({d for n in labels.values() for d in n["valid_ppl"]})
    return _bars(plt, domains, {label: n["valid_ppl"] for label, n in labels.items()}, "final validation perplexity")


def _plots(runs: dict, summary: dict, out: str) -> list:
    plt = pyplot()
    labels = summary["labels"]
    figures = {"loss.png": plot_losses(plt, runs)}
    if any(n["valid_ppl"] for n in labels.values()):
        figures["domain_perplexity.png"] = plot_domain_perplexity(plt, summary)
    shares = {f"{label}: {what}": n[f"{what}_share"] for label, n in labels.items() if n["weight_share"]
              for what in ("token", "weight")}
    if shares:
        domains = sorted({d for s in shares.values() for d in s})
        figures["weight_shares.png"] = _bars(plt, domains, shares, "share (mean over reweighting iterations)")
    keys = sorted({k for n in labels.values() for k in n["downstream"]})
    if keys:
        figures["downstream.png"] = _bars(plt, keys, {label: n["downstream"] for label, n in labels.items()}, "score")
    for name, fig in figures.items():
        save_figure(plt, fig, os.path.join(out, name))
    return list(figures)


def save_figure(plt, fig, path: str) -> None:
    """``fig`` as a PNG at ``path``, written atomically."""
    fig.tight_layout()
    temporary = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(temporary, dpi=100)
    plt.close(fig)
    os.replace(temporary, path)


def compare(specs: list, out: str, baseline: str | None = None) -> dict:
    """Write ``report.md``, ``summary.json`` and the plots of the runs ``specs`` (``LABEL=PATH``) to ``out``."""
    runs = load_runs(specs)
    baseline = baseline or next(iter(runs))
    if baseline not in runs:
        raise ArgumentError(f"--baseline {baseline}: no run has that label ({', '.join(runs)})")
    os.makedirs(out, exist_ok=True)
    summary = summarise(runs, baseline)
    summary["plots"] = _plots(runs, summary, out)
    write_json_atomically(os.path.join(out, "summary.json"), summary, indent=1, allow_nan=False)
    write_atomically(os.path.join(out, "report.md"), markdown(summary) + "\nPlots: " + ", ".join(summary["plots"]) + "\n")
    return summary


def _main(argv: list) -> None:
    parser = ToolParser(prog="compare_runs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=PATH", help="a metrics file or run directory; one per seed")
    parser.add_argument("--out", required=True, help="directory for report.md, summary.json and the plots")
    parser.add_argument("--baseline", help="the label the differences are to (default: the first)")
    args = parser.parse_args(argv)
    summary = compare(args.runs, args.out, args.baseline)
    print(f"[compare_runs] {sum(len(n['seeds']) for n in summary['labels'].values())} runs in "
          f"{len(summary['labels'])} labels; report: {os.path.join(args.out, 'report.md')}")


def main(argv=None) -> None:
    run_tool(_main, argv)


if __name__ == "__main__":
    main()
