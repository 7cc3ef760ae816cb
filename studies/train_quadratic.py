"""A tiny training script for the example studies: gradient descent with momentum on a
badly conditioned quadratic bowl, in pure Python so it runs anywhere in about a second.

    python train_quadratic.py --lr 0.1 --momentum 0.9 --epochs 20 --out RUN_DIR

Reports `METRICS: step=N loss=... grad_norm=...` each epoch (with hypd.report; --plain
prints only `epoch N: loss X` lines, for studies that read metrics with a regex) and writes
the final weights to RUN_DIR/weights.txt, as a checkpoint would be.
"""

import argparse
import math
import random
import time
from pathlib import Path

from hypd import report


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="a file of targets (from the study's prepare step)")
    p.add_argument("--out", required=True)
    p.add_argument("--seconds-per-epoch", type=float, default=0.05)
    p.add_argument("--plain", action="store_true", help="no METRICS lines: only a plain log")
    args = p.parse_args()

    rng = random.Random(args.seed)
    dims = 8
    curvature = [10 ** (i / (dims - 1) * 2 - 1) for i in range(dims)]  # 0.1 ... 10
    if args.data:  # targets prepared once per host ([prepare]); the seed starts the weights
        target = [float(x) for x in Path(args.data).read_text().split()][:dims]
        w = [rng.gauss(0.0, 0.5) for _ in range(dims)]
    else:
        target = [rng.uniform(-1, 1) for _ in range(dims)]
        w = [0.0] * dims
    velocity = [0.0] * dims
    loss = float("nan")
    for epoch in range(1, args.epochs + 1):
        grad = [2 * c * (wi - ti) for c, wi, ti in zip(curvature, w, target)]
        velocity = [args.momentum * v - args.lr * g for v, g in zip(velocity, grad)]
        w = [wi + v for wi, v in zip(w, velocity)]
        loss = sum(c * (wi - ti) ** 2 for c, wi, ti in zip(curvature, w, target))
        if not math.isfinite(loss) or loss > 1e12:
            print(f"epoch {epoch}: diverged (loss {loss:.3g})", flush=True)
            if not args.plain:
                report(step=epoch, loss=1e12)
            break
        print(f"epoch {epoch}: loss {loss:.5f}", flush=True)
        if not args.plain:
            report(step=epoch, loss=loss, grad_norm=math.sqrt(sum(g * g for g in grad)))
        time.sleep(args.seconds_per_epoch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "weights.txt").write_text(" ".join(f"{x:.6f}" for x in w) + "\n")
    print(f"done: final loss {loss:.5f}, weights in {out / 'weights.txt'}", flush=True)


if __name__ == "__main__":
    main()
