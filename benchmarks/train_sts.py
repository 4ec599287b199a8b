"""Fine-tuning with and without MatryoshkaLoss, after the Hugging Face blog's STS experiment.

all-MiniLM-L6-v2 is fine-tuned on the STS Benchmark train split with CoSENTLoss twice, with the
same data, order, seed, steps and learning rate: once plainly, once inside MatryoshkaLoss at
384, 192, 96, 48, 24, 12. Both (and the untouched model) are scored on the STSb test split at
every one of those dims: Spearman, and Spearman as a share of the model's own full-dim score.
Training time per step is reported for both, so the cost of the Matryoshka terms is visible.

Run:  python benchmarks/train_sts.py                       (2 x ~4 minutes on 2 CPU cores)
      python benchmarks/train_sts.py --epochs 2 --lr 5e-5 --weights 1,1,1,1,2,2
Writes benchmarks/results/train_sts.json and train_sts.png, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from common import machine  # noqa: E402

from matryoshka.data import read_sts  # noqa: E402
from matryoshka.evaluate import evaluate_sts  # noqa: E402
from matryoshka.models import load_model  # noqa: E402
from matryoshka.train import TrainSettings, read_training_data, train  # noqa: E402

STSB = ROOT.parent / "shared" / "data" / "stsb"
DIMS = [384, 192, 96, 48, 24, 12]


def score(model_path: str, test) -> dict[int, float]:
    report = evaluate_sts(load_model(model_path), test, DIMS, ["truncate"], data_name="stsb", split="test")
    return {dim: report.score("truncate", dim, "spearman") for dim in DIMS}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (absolute, relative) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        scores = [row["spearman"][str(d)] for d in DIMS]
        absolute.plot(DIMS, scores, marker="o", label=row["name"])
        relative.plot(DIMS, [100 * s / scores[0] for s in scores], marker="o", label=row["name"])
    for ax, label in ((absolute, "Spearman (STSb test)"), (relative, "% of own 384-dim Spearman")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(DIMS, [str(d) for d in DIMS])
        ax.set_xlabel("dimensions")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("all-MiniLM-L6-v2 fine-tuned on STSb: CoSENT vs MatryoshkaLoss(CoSENT)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--weights", default=None, help="MatryoshkaLoss weights for 384,192,96,48,24,12")
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--rotation",
        default="none",
        choices=["none", "pca", "orthogonal"],
        help="start both models from an adapter's rotation fitted on the train sentences "
        "(the product's default is orthogonal; none reproduces the blog's experiment)",
    )
    parser.add_argument("--skip-plain", action="store_true", help="train only the Matryoshka model (for tuning runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_sts.json")
    args = parser.parse_args()
    data = read_training_data(STSB)
    test = read_sts(STSB, "test")
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    rows = [
        {
            "name": "all-MiniLM-L6-v2 (no fine-tuning)",
            "spearman": {str(d): s for d, s in score("default", test).items()},
        }
    ]
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("CoSENT", False), ("MatryoshkaLoss(CoSENT)", True)][1 if args.skip_plain else 0 :]
        for name, matryoshka in variants:
            settings = TrainSettings(
                dims=DIMS,
                weights=weights,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                matryoshka=matryoshka,
                max_steps=args.max_steps,
                seed=args.seed,
                save_steps=10**9,
                rotation=args.rotation,
            )
            result = train("default", data, Path(tmp) / name, settings)
            scores = score(str(Path(tmp) / name), test)
            rows.append(
                {
                    "name": name,
                    "steps": result.steps,
                    "seconds": round(result.seconds, 1),
                    "seconds_per_step": result.seconds / result.steps,
                    "spearman": {str(d): s for d, s in scores.items()},
                }
            )
    trained = {row["name"]: row for row in rows[1:]}
    cost = (
        trained["MatryoshkaLoss(CoSENT)"]["seconds_per_step"] / trained["CoSENT"]["seconds_per_step"]
        if "CoSENT" in trained
        else None
    )
    print(f"\n{'model':<36}" + "".join(f"{d:>9}" for d in DIMS) + f"{'s/step':>9}")
    for row in rows:
        scores = [row["spearman"][str(d)] for d in DIMS]
        print(
            f"{row['name']:<36}"
            + "".join(f"{s:>9.4f}" for s in scores)
            + f"{row.get('seconds_per_step', float('nan')):>9.3f}"
        )
        print(f"{'  % of own 384':<36}" + "".join(f"{100 * s / scores[0]:>8.1f}%" for s in scores))
    if cost is not None:
        print(f"MatryoshkaLoss step cost: {cost:.2f}x the plain CoSENT step")
    payload = {
        "machine": machine(),
        "settings": vars(args) | {"out": str(args.out)},
        "dims": DIMS,
        "rows": rows,
        "matryoshka_step_cost": cost,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(f"machine: {machine()}\nwritten: {args.out}")


if __name__ == "__main__":
    main()
