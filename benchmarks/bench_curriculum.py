"""Reward weightings compared on the embedded default: static, staged and utility curricula.

Each weighting trains from the same base with the same budget (configs/selfpaced.yaml with the
weighting switched by overrides) for each seed, and the table reports held-out vq, mq, ta and
composite after training, and whether any component fell below the base model — the shortcut
failure Self-Paced GRPO describes (one reward traded for another).

    python benchmarks/bench_curriculum.py --seeds 0 1 2 --iterations 40 --out runs/curriculum
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from videogrpo.runs.train import train

WEIGHTINGS: dict[str, list[str]] = {
    "static 1/1/1": ["reward.curriculum=static", "reward.weights={vq: 1, mq: 1, ta: 1}"],
    "static 0.5/0.5/1": ["reward.curriculum=static", "reward.weights={vq: 0.5, mq: 0.5, ta: 1}"],
    "staged": ["reward.curriculum=staged"],
    "utility": ["reward.curriculum=utility", "reward.temperature=1.0"],
}
COMPONENTS = ("vq", "mq", "ta", "composite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/selfpaced.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--out", default="runs/curriculum")
    parser.add_argument(
        "--weightings", nargs="+", choices=list(WEIGHTINGS), default=list(WEIGHTINGS),
        help="a subset, e.g. to split the comparison over two processes",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="an override for every weighting, e.g. reward.aggregation=normalize_then_sum",
    )  # fmt: skip
    args = parser.parse_args()

    rows = []
    for label in args.weightings:
        for seed in args.seeds:
            name = f"{label.replace(' ', '_').replace('/', '-')}-seed{seed}"
            result = train(
                args.config,
                [
                    *args.set,
                    *WEIGHTINGS[label],
                    f"run.threads={args.threads}",
                    f"run.seed={seed}",
                    f"run.iterations={args.iterations}",
                    f"run.output_dir={args.out}",
                    f"run.name={name}",
                    "run.videos_every=0",
                ],
                progress=False,
            )
            before, after = result.summary["eval_before"], result.summary["eval_after"]
            fell = [c for c in ("vq", "mq", "ta") if after[c] < before[c]]
            rows.append(
                {
                    "weighting": label,
                    "seed": seed,
                    "before": before,
                    "after": after,
                    "fell_below_base": fell,
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    print(f"\n{'weighting':<18}" + "".join(f"{c:>12}" for c in COMPONENTS) + "  fell below base")
    for label in args.weightings:
        mine = [r for r in rows if r["weighting"] == label]
        means = [statistics.mean(r["after"][c] for r in mine) for c in COMPONENTS]
        fell = sorted({c for r in mine for c in r["fell_below_base"]})
        print(f"{label:<18}" + "".join(f"{m:>12.3f}" for m in means) + f"  {fell or 'none'}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "curriculum_comparison.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
