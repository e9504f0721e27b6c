"""The paper's toy experiment (Sow et al., ICLR 2025, Fig. 7): reweighted SGD on linear regression.

The paper gives no dimensions, so the setup is ours (docs/toy_regression.md): a realisable
linear model ``y = <x, w*> + noise`` with ``x ~ N(0, I)``, per-sample squared loss, minibatch
SGD with a fixed step. The four strategies train side by side from the same init on the same
batches; only the weights inside each batch differ, and those come from
``reweighting.sample_weights``. Test loss is the expected squared loss on a fresh sample, in
closed form: ``E[(<x, w> - y)^2] / 2 = (|w - w*|^2 + noise^2) / 2`` since ``x ~ N(0, I)``.

    python tools/experiments/toy_regression.py --out runs/toy --seeds 0 1 2 3 4
"""

if not __package__:  # run as a file: the repository root, not tools/experiments/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from reweighting import STRATEGIES, sample_weights


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """One run's setup; the fields are the CLI flags (``--d``, ``--lr``, ...)."""

    d: int = 100
    """Input dimension."""
    n: int = 1000
    """Training samples (fixed set, reshuffled every epoch)."""
    noise: float = 0.1
    """Standard deviation of the label noise."""
    batch: int = 32
    """Minibatch size, also the reweighting group."""
    lr: float = 0.05
    """Fixed SGD step."""
    steps: int = 300
    """SGD steps (about 10 epochs with the defaults)."""
    r: float = 1.0
    """Softmax temperature of the weights (the paper's figure uses 1)."""
    target: float = 0.01
    """Speed metric: steps until the excess test loss falls to this fraction of its initial value."""
    eval_every: int = 1
    """Steps between two test-loss points of the curve."""


def make_problem(cfg: ToyConfig, seed: int):
    """Draw ``w_star`` [d], training set ``x`` [n, d], ``y`` [n] and the shared init ``w0`` [d]."""
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(cfg.d, generator=g, dtype=torch.float64) / cfg.d**0.5  # |w*| ~ 1
    x = torch.randn(cfg.n, cfg.d, generator=g, dtype=torch.float64)
    y = x @ w_star + cfg.noise * torch.randn(cfg.n, generator=g, dtype=torch.float64)
    w0 = torch.randn(cfg.d, generator=g, dtype=torch.float64) / cfg.d**0.5
    return w_star, x, y, w0


def expected_test_loss(w: torch.Tensor, w_star: torch.Tensor, noise: float) -> torch.Tensor:
    """Expected squared loss (halved) of each row of ``w`` [S, d] on fresh data -> [S]."""
    return 0.5 * (((w - w_star) ** 2).sum(-1) + noise**2)


def batch_order(n: int, batch: int, steps: int, seed: int) -> torch.Tensor:
    """Indices [steps, batch]: a fresh permutation per epoch, the tail that does not fill a batch dropped."""
    g = torch.Generator().manual_seed(seed + 1_000_003)  # independent of the data draw
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    perms = [torch.randperm(n, generator=g)[: per_epoch * batch] for _ in range(epochs)]
    return torch.cat(perms).view(-1, batch)[:steps]


def train(cfg: ToyConfig, seed: int, strategies=STRATEGIES) -> dict:
    """Train one model per strategy on the same data, init and batches.

    Returns ``{"steps": [T], "test_loss": {strategy: [T]}}``, the curve sampled every
    ``eval_every`` steps and at the last step.
    """
    w_star, x, y, w0 = make_problem(cfg, seed)
    w = w0.expand(len(strategies), -1).clone()  # [S, d], one row per strategy
    order = batch_order(cfg.n, cfg.batch, cfg.steps, seed)
    steps, curve = [0], [expected_test_loss(w, w_star, cfg.noise)]
    for t, idx in enumerate(order, start=1):
        xb, yb = x[idx], y[idx]  # [B, d], [B]
        resid = w @ xb.T - yb  # [S, B]
        losses = 0.5 * resid**2
        # The weighted objective sum_i p_i l_i: with p = 1/B this is plain minibatch SGD.
        p = torch.stack([sample_weights(row, s, cfg.r).double() for row, s in zip(losses, strategies)])
        w -= cfg.lr * (p * resid) @ xb
        if t % cfg.eval_every == 0 or t == cfg.steps:
            steps.append(t)
            curve.append(expected_test_loss(w, w_star, cfg.noise))
    curve = torch.stack(curve)  # [T, S]
    return {"steps": steps, "test_loss": {s: curve[:, i].tolist() for i, s in enumerate(strategies)}}


def steps_to_reach(steps, curve, level: float):
    """First step at which ``curve`` is <= ``level``, or None if it never gets there."""
    return next((t for t, v in zip(steps, curve) if v <= level), None)


def run(cfg: ToyConfig, seeds) -> dict:
    """All seeds. Returns ``{"config", "runs": {seed: train(...)}, "final", "speed"}`` where
    ``final[strategy][seed]`` is the last test loss and ``speed[strategy][seed]`` the steps
    until the excess test loss is ``target`` times its initial value (None if never)."""
    runs = {seed: train(cfg, seed) for seed in seeds}
    final = {s: {seed: runs[seed]["test_loss"][s][-1] for seed in seeds} for s in STRATEGIES}
    # Speed is measured above the noise floor, which no model beats: a fraction of the raw test
    # loss would be unreachable once the noise is large.
    floor = 0.5 * cfg.noise**2
    speed = {
        s: {seed: steps_to_reach(run["steps"], [v - floor for v in run["test_loss"][s]],
                                 cfg.target * (run["test_loss"][s][0] - floor))
            for seed, run in runs.items()}
        for s in STRATEGIES
    }
    return {"config": dataclasses.asdict(cfg), "runs": runs, "final": final, "speed": speed}


def _table(by_strategy: dict, fmt, mean: bool) -> list:
    """Rows strategy x seed; the last column counts the seeds where it is below uniform."""
    def rank(v):  # "never reached" (None) loses every comparison
        return float("inf") if v is None else v

    base = by_strategy["uniform"]
    seeds = list(base)
    header = "| strategy | " + " | ".join(f"seed {s}" for s in seeds) + (" | mean" if mean else "")
    lines = [header + " | < uniform |", "|---" * (len(seeds) + 2 + mean) + "|"]
    for strat, by_seed in by_strategy.items():
        vals = [by_seed[s] for s in seeds]
        below = sum(rank(by_seed[s]) < rank(base[s]) for s in seeds)
        cells = " | ".join("never" if v is None else fmt(v) for v in vals)
        avg = f" | {fmt(sum(vals) / len(vals))}" if mean else ""
        score = "-" if strat == "uniform" else f"{below}/{len(seeds)}"
        lines.append(f"| {strat} | {cells}{avg} | {score} |")
    return lines


def markdown_table(result: dict) -> str:
    """Two tables, strategy x seed: steps to reach the target, then the final test loss."""
    cfg = result["config"]
    lines = [f"Steps until the excess test loss (above the noise floor) is {cfg['target']:g} x its "
             "initial value (fewer is faster):", ""]
    lines += _table(result["speed"], str, mean=False)
    lines += ["", f"Test loss after {cfg['steps']} steps (noise floor {0.5 * cfg['noise'] ** 2:.3e}):", ""]
    lines += _table(result["final"], lambda v: f"{v:.4e}", mean=True)
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Mean over seeds against steps, log scale: test loss (as in the paper's figure) and the
    excess above the noise floor, where the strategies' floors can be told apart."""
    import matplotlib  # lazy: only the plot needs it (extra "plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    floor = 0.5 * cfg["noise"] ** 2
    runs = list(result["runs"].values())
    fig, (ax_loss, ax_excess) = plt.subplots(1, 2, figsize=(10, 4))
    for strat in STRATEGIES:
        mean = torch.tensor([run["test_loss"][strat] for run in runs]).mean(0)  # [T]
        ax_loss.plot(runs[0]["steps"], mean, label=strat)
        ax_excess.plot(runs[0]["steps"], mean - floor, label=strat)
    if floor > 0:
        ax_loss.axhline(floor, color="grey", linestyle=":", label="noise floor")
    ax_loss.set(xlabel="SGD step", ylabel="test loss", yscale="log")
    ax_excess.set(xlabel="SGD step", ylabel="test loss - noise floor", yscale="log")
    ax_loss.legend()
    fig.suptitle(f"linear regression d={cfg['d']} n={cfg['n']} noise={cfg['noise']} B={cfg['batch']} "
                 f"lr={cfg['lr']} r={cfg['r']}, mean of {len(runs)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    """Flags: ``--out``, ``--seeds`` and one flag per :class:`ToyConfig` field."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for results.json/.md and the PNG")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    for f in dataclasses.fields(ToyConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=f.type, default=f.default)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # The tensors are tiny: extra intra-op threads only spin, and on busy cores slow it ~10x.
    torch.set_num_threads(1)
    cfg = ToyConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ToyConfig)})
    result = run(cfg, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    table = markdown_table(result)
    (args.out / "results.md").write_text(table)
    if not args.no_plot:
        plot(result, args.out / "toy_regression.png")
    print(table, end="")
    return result


if __name__ == "__main__":
    main()
