"""Does it learn? The quality benchmark: `latent-combo sweep` (Ray Tune) with the benchmark's defaults.

    python bench/quality.py --env walker-walk --dataset medium-replay --obs state --preset cpu \
        --algos combo lmbpo bc --seeds 0 1 2 [--workers 1] [--sweep agent.beta=0.5,1,5] [key=value ...]

A thin caller of latent_combo.sweep: one world model per seed, every algorithm's agent trained on a copy
of it, one table of final scores (mean ± 95% interval over seeds), the first algorithm read against every
other row and the dataset's Batch Mean (intervals apart or overlapping), the world model's probe per seed, and
with `--sweep KEY=V1,V2` (the sweep's --grid; repeat for more keys) each setting of the algorithms it
concerns, with the paper's offline pick (lowest final regulariser, averaged over seeds) marked.
`--workers N` runs N trials at once (the cores shared among them). Finished runs are read, not retrained,
so an interrupted benchmark resumes. Writes sweep.json and sweep.csv into the logdir.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse(argv=None) -> argparse.Namespace:
    from latent_combo.sweep import add_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="the sweep's --grid")
    p.add_argument("--workers", type=int, default=1, help="trials at once (cores shared among them)")
    p.set_defaults(obs="state", logdir="runs/quality")
    a = p.parse_args(argv)
    a.grid = a.grid + a.sweep
    a.cpus_per_trial = max(1.0, (os.cpu_count() or 1) / max(1, a.workers))
    return a


def main(argv=None) -> dict:
    from data_collection.collect import ensure_dataset
    from latent_combo.sweep import prepare, run_sweep

    a = parse(argv)
    prepare(a, ensure_dataset)
    return run_sweep(a)


if __name__ == "__main__":
    main()
