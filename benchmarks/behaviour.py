"""Paper section 5.1 over many test images: what the RBF SVM and the CNN-feature model lean on.

MNIST 4 vs 9 (the built-in 5,000 digits: 814 training, 186 test images), the models of
`infl behaviour` (RBF SVM on the smooth hinge, l2 1e-3; frozen CNN trained on the other
eight digits + Linear head, l2 0.01), each fitted once; for each of the first --tests
test images: Spearman(|I_up,loss|, pixel distance), the mean pixel distance of the 10 most
helpful training images, and the share of them with the test label. Prints the mean and
10th / 90th percentiles over test images per model, and on how many test images the SVM's
most helpful images lie closer in pixel space than the CNN's.

    python benchmarks/behaviour.py [--tests 186] [--top 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from infl.behaviour import compare_behaviours
from infl.data import load_builtin
from infl.frozen import binary_task, load_extractor

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=186)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    split = load_builtin("mnist")
    task = binary_task(split, (4, 9))
    net, _ = load_extractor(split, task.digits, cache=OUT / "cache", seed=0, epochs=3)
    results = compare_behaviours(task, net, list(range(min(args.tests, len(task.y_test)))))
    summaries = [r.summary(args.top) for r in results]
    names = list(summaries[0])
    print(f"{task.name}: {len(task.y_train)} training images; {len(results)} test images; top {args.top} helpful")
    print("| model | Spearman(abs influence, distance) | mean distance of top helpful | same label among top | "
          "test accuracy |")
    print("|---|---|---|---|---|")
    for k, name in enumerate(names):
        cols = []
        for key in ("spearman |influence| vs distance", f"mean distance of top {args.top} helpful",
                    f"top {args.top} helpful with the test label"):
            v = np.array([s[name][key] for s in summaries])
            cols.append(f"{v.mean():.3f} ({np.percentile(v, 10):.3f} / {np.percentile(v, 90):.3f})")
        acc = np.mean([r.views[k].predicted == r.label for r in results])
        print(f"| {name} | {' | '.join(cols)} | {acc:.3f} |")
    near = [s[names[0]][f"mean distance of top {args.top} helpful"] < s[names[1]][f"mean distance of top {args.top} helpful"]
            for s in summaries]
    print(f"mean pixel distance of all training images to a test image: "
          f"{np.mean([s[names[0]]['mean distance of all'] for s in summaries]):.3f}; the {names[0]}'s top "
          f"{args.top} lie closer than the {names[1]}'s on {sum(near)} of {len(near)} test images")


if __name__ == "__main__":
    main()
