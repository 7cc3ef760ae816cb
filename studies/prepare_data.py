"""The prepare step of studies/quadratic_seeds.toml: makes the 'dataset' every run of the
study on a host then reads (here, the targets of the quadratic bowl), once per host."""

import os
import random
import sys
import time

out = os.environ["HYPD_PREPARE_DIR"]
rng = random.Random(0)
time.sleep(1)  # as a download would take a while
with open(os.path.join(out, "targets.txt"), "w") as f:
    f.write(" ".join(f"{rng.uniform(-1, 1):.6f}" for _ in range(8)))
print(f"prepared {out}/targets.txt", file=sys.stderr)
