"""Does it learn? The quality benchmark: `latent-combo sweep` (Ray Tune) with the benchmark's defaults.

    python bench/quality.py --env walker-walk --dataset medium-replay --obs state --preset cpu \
        --algos combo lmbpo bc --seeds 0 1 2 [--workers 1] [--sweep agent.beta=0.5,1,5] \
        [--reference td3bc,iql,bc,cql] [key=value ...]

A thin caller of latent_combo.sweep: one world model per seed, every algorithm's agent trained on a copy
of it, one table of final scores (mean ± 95% interval over seeds), the first algorithm read against every
other row and the dataset's Batch Mean (intervals apart or overlapping), the world model's probe per seed, and
with `--sweep KEY=V1,V2` (the sweep's --grid; repeat for more keys) each setting of the algorithms it
concerns, with the paper's offline pick (lowest final regulariser, averaged over seeds) marked.
`--workers N` runs N trials at once (the cores shared among them; a phase with fewer trials, such as one seed's
world model, splits all the cores among those). With `--obs state`, `--reference ALGO ...` adds
rows trained by d3rlpy on the dataset's raw states at the same updates, seeds and evaluation episodes. Finished runs
are read, not retrained, so an interrupted benchmark resumes. Writes sweep.json and sweep.csv into the logdir.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def reference_algos(value: str) -> list[str]:
    """--reference td3bc,iql,bc -> ['td3bc', 'iql', 'bc'], each checked against bench/d3rlpy_reference.py's."""
    from d3rlpy_reference import ALGOS

    names = [v for v in value.split(",") if v]
    bad = [n for n in names if n not in ALGOS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a comma-separated list of {', '.join(ALGOS)}")
    return names


def parse(argv=None) -> argparse.Namespace:
    from latent_combo.sweep import add_arguments

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="the sweep's --grid")
    p.add_argument("--workers", type=int, default=1, help="trials at once (cores shared among them)")
    # One comma-separated value, not nargs="+": a list flag would swallow the key=value overrides that follow it.
    p.add_argument("--reference", type=reference_algos, default=[], metavar="ALGO,ALGO",
                   help="d3rlpy reference rows on the dataset's raw states (some of td3bc,cql,iql,bc), --obs state "
                        "only: the same seeds, updates and evaluation episodes as the agents")
    p.set_defaults(obs="state", logdir="runs/quality")
    a = p.parse_args(argv)
    a.grid = a.grid + a.sweep
    a.cpus_per_trial = max(1.0, (os.cpu_count() or 1) / max(1, a.workers))
    return a


def main(argv=None) -> dict:
    from data_collection.collect import ensure_dataset
    from latent_combo.sweep import prepare, run_sweep

    a = parse(argv)
    if a.reference and a.obs != "state":
        raise SystemExit("--reference: the d3rlpy rows read the dataset's raw states; use it with --obs state")
    prepare(a, ensure_dataset)
    out = run_sweep(a)
    if a.reference:
        out["reference"] = reference_rows(a)
    return out


def reference_rows(a) -> list[dict]:
    """bench/d3rlpy_reference.py's rows for this benchmark's dataset, seeds, updates and evaluation episodes."""
    import json

    import d3rlpy_reference as ref

    from latent_combo.config import parse_overrides, resolve

    cfg = resolve(a.preset, a.env, {**parse_overrides(a.overrides), "obs": a.obs})
    results = ref.run_all(a.reference, a.seeds, a.data_path, a.env, cfg.agent.steps, cfg.final_eval_episodes,
                          str(Path(a.logdir) / "d3rlpy"), a.workers)
    rows = ref.table(results)
    ref.print_table(rows)
    sweep = Path(a.logdir) / "sweep.json"
    sweep.write_text(json.dumps({**json.loads(sweep.read_text()), "reference": rows}, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
