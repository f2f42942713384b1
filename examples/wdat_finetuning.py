"""WDAT as its paper uses it: fine-tuning robust networks, against the control of more of the same.

For each seed the script pre-trains the digits MLP (point estimate, plain SVI) with AT, TRADES and
ARMOR for ``--epochs`` epochs, then fine-tunes the AT and TRADES runs for ``--finetune-epochs``
epochs at ``--lr`` with each arm:

* ``control``: the parent's own loss (the fair control: the same extra epochs);
* ``wdat``: WDAT per the paper (W-PGD-Budget on ReDLR, CE plus ``beta`` times TRADES' KL at the
  attacked inputs);
* ``wdat-adversarial``: CE at the attacked inputs instead;
* ``wdat-kl``: the KL ascent with the budget from CE (a departure from the paper);
* ``wdat-reinit``: WDAT after re-initialising the last linear layer (the paper's protocol a);
* ``wdat-noise``: WDAT after small random weight perturbations (the paper's protocol b);
* ``wdat-beta6``: WDAT with TRADES' CIFAR-10 weight ``beta=6``.

Every finished run is attacked on the test split at ``--budget`` (W-PGD-50 with ReDLR in the W2
ball with the linf cost; PGD-50 in the linf ball), and, when the ``autoattack`` extra is
installed, the pre-trained runs and the control, ``wdat`` and ``wdat-beta6`` arms by AutoAttack linf
(``--autoattack``). Run it with one thread per process (``OMP_NUM_THREADS=1``): AutoAttack's
many tiny passes are several times slower with two. The script prints one markdown table (mean
± std over the seeds) and writes ``results.md``, ``results.json`` and ``results.png`` under
``--out``. Runs already finished in ``--out`` are kept, so an interrupted study resumes.

Usage::

    OMP_NUM_THREADS=1 python examples/wdat_finetuning.py --seeds 5 --out runs/wdat-finetuning
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
from pathlib import Path

from tqdm import tqdm

from pyro_otmdr.experiments.cli import main as otmdr

BASES = ("at", "trades", "armor")
PARENTS = ("at", "trades")  # the runs that are fine-tuned
ARMS: dict[str, list[str]] = {
    "control": [],
    "wdat": ["--data-robust", "wdat"],
    "wdat-adversarial": ["--data-robust", "wdat", "--outer", "adversarial"],
    "wdat-kl": ["--data-robust", "wdat", "--attack-loss", "kl"],
    "wdat-reinit": ["--data-robust", "wdat", "--reinit-last"],
    "wdat-noise": ["--data-robust", "wdat", "--weight-noise", "0.01"],
    "wdat-beta6": ["--data-robust", "wdat", "--beta", "6"],
}
THREATS = "w2-linf,linf"
AUTOATTACK = "autoattack-linf"
COLUMNS = {
    "accuracy": "accuracy",
    "nll": "NLL",
    "ece": "ECE",
    "w2-linf": "robust acc W2-linf",
    "linf": "robust acc linf",
    "autoattack-linf": "AutoAttack linf",
}


def _has_autoattack() -> bool:
    return importlib.util.find_spec("pyautoattack") is not None


def _call(argv: list[str]) -> None:
    code = otmdr(argv)
    if code != 0:
        raise SystemExit(f"otmdr {' '.join(argv)} failed with exit code {code}")


def _shared(args: argparse.Namespace) -> list[str]:
    return ["--eps", str(args.budget), "--delta", str(args.budget), "--beta", str(args.beta)]


def _pretrain(base: str, seed: int, args: argparse.Namespace) -> Path:
    out = args.out / f"{base}-seed{seed}"
    if not (out / "metrics.json").is_file():
        flags = ["--guide", "delta", "--method", "svi", "--data-robust", base, *_shared(args)]
        flags += ["--epochs", str(args.epochs), "--seed", str(seed), "--quiet"]
        _call(["train", *flags, "--out", str(out), "--overwrite"])
    return out


def _finetune(parent: Path, base: str, arm: str, seed: int, args: argparse.Namespace) -> Path:
    out = args.out / f"{base}-{arm}-seed{seed}"
    if not (out / "metrics.json").is_file():
        flags = [*_shared(args), *(ARMS[arm] or ["--data-robust", base])]  # the arm's last
        flags += ["--epochs", str(args.finetune_epochs)]
        flags += ["--lr", str(args.lr), "--seed", str(seed), "--quiet"]
        _call(["finetune", str(parent), *flags, "--out", str(out), "--overwrite"])
    return out


def _attacked(run: Path, threats: str, args: argparse.Namespace) -> dict[str, float]:
    """Robust accuracy of ``run`` under ``threats``, attacked once (kept in its own file)."""
    path = run / f"robustness-{threats.replace(',', '+')}.json"
    if not path.is_file():
        flags = ["--threat", threats, "--budget", str(args.budget), "--quiet"]
        _call(["attack", str(run), *flags])
        shutil.copyfile(run / "robustness.json", path)
    robustness = json.loads(path.read_text())
    accuracy = robustness.get("robust_accuracy_fresh") or robustness["robust_accuracy"]
    return {threat: values[0] for threat, values in accuracy.items()}


def _metrics(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    return {key: metrics[key] for key in ("accuracy", "nll", "ece")}


def _autoattacked(name: str, args: argparse.Namespace) -> bool:
    main_arms = name.endswith(("-control", "-wdat", "-wdat-beta6"))
    return (
        args.autoattack == "all"
        or (args.autoattack != "none" and name in BASES)
        or (args.autoattack == "main" and main_arms)
    )


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def _table(rows: dict[str, list[dict[str, float]]], columns: dict[str, str]) -> str:
    lines = ["| run | " + " | ".join(columns.values()) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for name, seeds in rows.items():
        cells = [_mean_std([r[key] for r in seeds if key in r]) for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    colours = plt.get_cmap("tab20").colors
    markers = {"at": "o", "trades": "s", "armor": "^"}
    for colour, (name, seeds) in zip(colours, rows.items(), strict=False):
        w2 = [r["w2-linf"] for r in seeds]
        linf = [r["linf"] for r in seeds]
        ax.errorbar(
            statistics.mean(linf),
            statistics.mean(w2),
            xerr=statistics.stdev(linf) if len(linf) > 1 else 0,
            yerr=statistics.stdev(w2) if len(w2) > 1 else 0,
            fmt=markers[name.partition("-")[0]],
            color=colour,
            capsize=3,
            label=name,
        )
    ax.set_xlabel("robust accuracy, linf PGD-50")
    ax.set_ylabel("robust accuracy, W2-linf W-PGD-50")
    ax.set_title("Fine-tuning robust digits MLPs (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="pre-training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    parser.add_argument("--budget", type=float, default=0.1, help="eps, delta and the threats'")
    parser.add_argument("--beta", type=float, default=1.0, help="TRADES' and WDAT's KL weight")
    parser.add_argument("--out", type=Path, default=Path("runs/wdat-finetuning"))
    parser.add_argument(
        "--autoattack",
        choices=("parents", "main", "all", "none"),
        default="main",
        help="runs also attacked by AutoAttack linf, when the extra is installed: the "
        "pre-trained ones, those and the control, wdat and wdat-beta6 arms (default), all, or "
        "none (about 40 s a run on 360 digits and one thread)",
    )
    args = parser.parse_args()
    if not _has_autoattack():
        args.autoattack = "none"
    columns = {k: v for k, v in COLUMNS.items() if args.autoattack != "none" or k != AUTOATTACK}
    names = [*BASES, *(f"{p}-{arm}" for p in PARENTS for arm in ARMS)]
    runs: dict[str, list[Path]] = {name: [] for name in names}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    jobs = [(seed, name) for seed in range(args.seeds) for name in names]
    for seed, name in tqdm(jobs, desc="train and attack", unit="run"):
        base, _, arm = name.partition("-")
        parent = _pretrain(base, seed, args)
        run = _finetune(parent, base, arm, seed, args) if arm else parent
        runs[name].append(run)
        rows[name].append({**_metrics(run), **_attacked(run, THREATS, args)})
    strong = [(n, i) for n in names for i in range(args.seeds) if _autoattacked(n, args)]
    for name, i in tqdm(strong, desc="AutoAttack", unit="run"):
        rows[name][i].update(_attacked(runs[name][i], AUTOATTACK, args))
    table = _table(rows, columns)
    print(table)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, args.out / "results.png")
    print(f"wrote {args.out / 'results.md'}, results.json and results.png")


if __name__ == "__main__":
    main()
