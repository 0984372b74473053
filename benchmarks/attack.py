"""Training-set attacks (paper section 5.2): flip fractions when 1, 2 and 10 training images are perturbed.

MNIST 4 vs 9 (the built-in 5,000 digits: 814 training, 186 test images of the two
classes); frozen CNN trained on the other eight digits (3 epochs, seed 0, cached in
benchmarks/out/cache); Linear top layer, l2 = 0.01 (--l2). For each of --tests correctly
classified test images (drawn with seed 0), the top 1, 2, 10 training images by
||I_pert,loss||_1 are attacked with --steps signed steps (step = radius x --step-fraction, default 1/4), retraining
the top layer exactly after each step, once per budget in --radii (in 1/255 units;
0.5 = the paper's 8-bit-unchanged images). Prints the flip fractions.

    python benchmarks/attack.py --tests 30 --radii 0.5 8 --steps 10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from infl.attack import EIGHT_BIT, Budget, HeadAttack, flip_fractions
from infl.attack_report import flip_fraction
from infl.data import load_builtin
from infl.frozen import binary_task, load_extractor, predict

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=30)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.5, 8.0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--l2", type=float, default=0.01, help="the head's weight decay")
    parser.add_argument("--step-fraction", type=float, default=0.25,
                        help="each signed step as a fraction of the radius (the authors' code: 0.04, 100 steps)")
    args = parser.parse_args()
    if not 0 < args.step_fraction <= 1:
        parser.error("--step-fraction must lie in (0, 1]: a step is that fraction of the radius")
    split = load_builtin("mnist")
    task = binary_task(split, (4, 9))
    net, _ = load_extractor(split, task.digits, cache=OUT / "cache", seed=0, epochs=3)
    attacker = HeadAttack(net, task.X_train, task.y_train, args.l2)
    correct = np.flatnonzero(predict(attacker.model(), task.X_test) == task.y_test)
    tests = sorted(np.random.default_rng(0).choice(correct, size=min(args.tests, len(correct)), replace=False))
    print(f"{task.name}: {len(task.y_train)} train, {len(task.y_test)} test, head l2 {args.l2:g}, accuracy {len(correct) / len(task.y_test):.4f}; "
          f"{len(tests)} correctly classified test images attacked, {args.steps} steps of {args.step_fraction:g} x the radius")
    print("| budget (L-inf, pixels in [0,1]) | 1 image | 2 images | 10 images | mean test-loss rise (1 / 2 / 10) | seconds |")
    print("|---|---|---|---|---|---|")
    for r in args.radii:
        radius = EIGHT_BIT if r == 0.5 else r / 255
        began = time.perf_counter()
        res = flip_fractions(attacker, task.X_test, task.y_test, tests, (1, 2, 10), Budget(radius=radius, steps=args.steps, step=args.step_fraction * radius))
        rise = " / ".join(f"{np.mean([a.losses[-1] - a.losses[0] for a in v]):.3g}" for v in res.values())
        name = "8-bit unchanged (0.499/255)" if r == 0.5 else f"{r:g}/255"
        print(f"| {name} | {flip_fraction(res[1]):.1%} | {flip_fraction(res[2]):.1%} | {flip_fraction(res[10]):.1%} "
              f"| {rise} | {time.perf_counter() - began:.0f} |", flush=True)


if __name__ == "__main__":
    main()
