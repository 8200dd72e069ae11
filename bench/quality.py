"""Does it learn? Train each (algo, seed) on one dataset and print one table of final scores.

    python bench/quality.py --env walker-walk --dataset medium-replay --obs state --preset cpu \
        --algos combo lmbpo bc --seeds 0 1 2 [--workers 2] [key=value ...]

`--sweep agent.beta=0.5,1,5` (repeat the flag for more keys; their grid) also trains COMBO at each setting
on the same world model and prints the paper's offline selection rule next to the evaluated scores: the pick
(lowest final regulariser, averaged over seeds) and the setting that scored best.

Per seed, the first algo trains the world model and the others reuse it (`--world-model`), so the
algorithms differ only in what the issue compares. Each run is an independent `latent-combo train`
process; `--workers` runs several seeds at once. Finished runs are not retrained (their results.json is
read), so an interrupted benchmark resumes. Writes quality.json and quality.csv into the logdir
(quality-sweep.* with --sweep).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latent_combo.evaluate import ci95  # noqa: E402


def run_dir(a, algo, seed, logdir=None) -> Path:
    return Path(logdir or a.logdir) / a.env / Path(a.data_path).name / f"{algo}-{a.obs}-{a.preset}-s{seed}"


def train(a, algo, seed, world_model=None, setting=None) -> dict:
    """One `latent-combo train` process (or its finished results.json); `setting` = sweep overrides."""
    logdir = sweep_logdir(a, setting) if setting else a.logdir
    out = run_dir(a, algo, seed, logdir)
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())
    extra = [f"{k}={v}" for k, v in (setting or {}).items()]
    cmd = [sys.executable, "-m", "latent_combo.cli", "train", "--env", a.env, "--dataset", a.data_path, "--algo", algo,
           "--preset", a.preset, "--obs", a.obs, "--seed", str(seed), "--logdir", logdir, *a.overrides, *extra]
    if world_model:
        cmd += ["--world-model", str(world_model)]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.log", "a") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed; see {out / 'bench.log'}")
    return json.loads((out / "results.json").read_text())


def sweep_logdir(a, setting: dict) -> str:
    return str(Path(a.logdir) / "sweep" / ",".join(f"{k}={v}" for k, v in setting.items()))


def parse_sweep(items) -> list[dict]:
    """['agent.beta=0.5,1,5', 'agent.real_ratio=0.5,0.8'] -> the grid of their settings."""
    keys, values = [], []
    for item in items:
        key, sep, vals = item.partition("=")
        if not sep or not vals:
            raise SystemExit(f"--sweep {item!r}: expected key=v1,v2,..., e.g. agent.beta=0.5,1,5")
        keys.append(key)
        values.append([yaml.safe_load(v) for v in vals.split(",")])
    # No --sweep is no setting at all (itertools.product() of nothing would be one empty setting).
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)] if items else []


def seed_runs(a, seed) -> list[dict]:
    first, *rest = a.algos
    results = [train(a, first, seed)]
    results += [train(a, algo, seed, run_dir(a, first, seed)) for algo in rest]
    for setting in a.settings:
        # The setting the main combo run already has is not trained twice.
        same = "combo" in a.algos and all(a.base.get(k) == v for k, v in setting.items())
        r = results[a.algos.index("combo")] if same else train(a, "combo", seed, run_dir(a, first, seed), setting)
        results.append({**r, "setting": setting})
    return results


def base_values(a) -> dict:
    """Dotted key -> value of the config every run starts from (preset, obs and overrides)."""
    from latent_combo.config import parse_overrides, resolve, to_dict
    from latent_combo.utils import flatten

    cfg = to_dict(resolve(a.preset, a.env, {"obs": a.obs, **parse_overrides(a.overrides)}))
    return {".".join(path): value for path, value in flatten(cfg).items()}


PROBE_KEYS = ("state_r2", "open_loop_r2_h1", "open_loop_r2_h5", "open_loop_r2_h15", "separability")


def print_probes(rows: list[dict], first_algo: str) -> dict:
    """The world model's probe figures (latent_combo.probe), one world model per seed, mean ± interval."""
    probes = [r["probe"] for r in rows if r["algo"] == first_algo and "state_r2" in (r.get("probe") or {})]
    if not probes:
        return {}
    out = {k: {"mean": float(np.mean([p[k] for p in probes])), "ci95": ci95([p[k] for p in probes]),
               "per_seed": [p[k] for p in probes]} for k in PROBE_KEYS if all(k in p for p in probes)}
    print("\nworld model probe (held-out episodes; one world model per seed)")
    for k, v in out.items():
        print(f"  {k:<18} {v['mean']:.3f} ±{v['ci95']:.3f}   per seed {' '.join(f'{x:.3f}' for x in v['per_seed'])}")
    return out


def print_sweep(rows: list[dict], key: str) -> list[dict]:
    """The offline rule's pick against the evaluated best, over the sweep's settings."""
    table = {}
    for r in rows:
        if "setting" in r:
            table.setdefault(json.dumps(r["setting"]), []).append(r)
    out = []
    for name, rs in table.items():
        scores = [r[key] for r in rs]
        out.append({"setting": json.loads(name), "regulariser": float(np.mean([r["final_regulariser"] for r in rs])),
                    "mean": float(np.mean(scores)), "ci95": ci95(scores), "scores": scores,
                    "run_dirs": [r["run_dir"] for r in rs]})
    pick = min(out, key=lambda r: r["regulariser"])
    best = max(out, key=lambda r: r["mean"])
    print("\nsweep (combo): offline pick = lowest regulariser, averaged over seeds")
    print(f"{'setting':<28} {'regulariser':>12} {'score':>16} {'per seed':<24}")
    for r in sorted(out, key=lambda r: r["regulariser"]):
        name = ",".join(f"{k}={v}" for k, v in r["setting"].items())
        mark = " <- pick" if r is pick else ""
        mark += " <- best score" if r is best else ""
        print(f"{name:<28} {r['regulariser']:>12.3f} {r['mean']:>8.1f} ±{r['ci95']:<6.1f} "
              f"{' '.join(f'{s:.1f}' for s in r['scores']):<24}{mark}")
    print("the pick " + ("agrees with" if pick is best else "differs from") + " the best evaluated score")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="walker-walk")
    p.add_argument("--dataset", default="medium-replay")
    p.add_argument("--obs", default="state", choices=("image", "state"))
    p.add_argument("--preset", default="cpu")
    p.add_argument("--algos", nargs="+", default=["combo", "lmbpo", "bc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--logdir", default="runs/quality")
    # One KEY=V1,V2 per flag: with nargs="*" a trailing `threads=1` override was swallowed into the grid.
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="also train combo at each setting (repeat for a grid), e.g. agent.beta=0.5,1,5")
    p.add_argument("overrides", nargs="*", help="config overrides for every run, key=value")
    a = p.parse_args(argv)
    a.settings = parse_sweep(a.sweep)
    a.base = base_values(a)
    t0 = time.time()
    # Resolve (and build, if missing) the dataset once, so every run trains on the same folder.
    from data_collection.collect import ensure_dataset
    from latent_combo.config import resolve
    from latent_combo.runs import dataset_dir

    cfg = resolve(a.preset, a.env, {"dataset": a.dataset, "obs": a.obs})
    a.data_path = str(dataset_dir(cfg, ensure_dataset))
    with ThreadPoolExecutor(a.workers) as pool:
        rows = [r for rs in pool.map(lambda s: seed_runs(a, s), a.seeds) for r in rs]
    success = a.env.startswith("sawyer")
    key = "eval_success_rate" if success else "eval_normalized_score"
    sweep_rows = [r for r in rows if "setting" in r]
    rows = [r for r in rows if "setting" not in r]
    stats = rows[0]["dataset_stats"]
    print(f"\n{a.env} {a.dataset} obs={a.obs} preset={a.preset} seeds={a.seeds}  "
          f"({time.time() - t0:.0f}s)")
    print(f"dataset: {stats['episodes']} episodes, Batch Mean {stats['return_mean']:.1f}, "
          f"Batch Max {stats['return_max']:.1f}" + (f", success {stats['success_rate']:.0%}" if success else
                                                     f" (normalised {stats['return_mean'] / 10:.1f} / "
                                                     f"{stats['return_max'] / 10:.1f})"))
    print(f"{'algo':<7} {'score' if not success else 'success':>16} {'per seed':<28} {'regulariser':>12} {'wall':>8}")
    table = []
    for algo in a.algos:
        rs = [r for r in rows if r["algo"] == algo]
        scores = [r[key] for r in rs]
        regs = [r["final_regulariser"] for r in rs if r.get("final_regulariser") is not None]
        row = {"algo": algo, "mean": float(np.mean(scores)), "ci95": ci95(scores), "scores": scores,
               "regulariser": float(np.mean(regs)) if regs else None,
               "wall_s": float(np.mean([r["wall_time_s"] for r in rs]))}
        table.append(row)
        per_seed = " ".join(f"{s:.1f}" for s in scores)
        reg = "-" if row["regulariser"] is None else f"{row['regulariser']:.3f}"
        print(f"{algo:<7} {row['mean']:>8.1f} ±{row['ci95']:<6.1f} {per_seed:<28} {reg:>12} {row['wall_s']:>7.0f}s")
    probes = print_probes(rows, a.algos[0])
    sweep = print_sweep(sweep_rows, key) if sweep_rows else []
    out, name = Path(a.logdir), "quality-sweep" if a.settings else "quality"
    (out / f"{name}.json").write_text(json.dumps({"args": vars(a), "dataset": stats, "table": table,
                                                  "probe": probes, "sweep": sweep, "runs": rows + sweep_rows},
                                                 indent=1))
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["algo", "mean", "ci95", "regulariser", "wall_s"], extrasaction="ignore")
        w.writeheader()
        w.writerows(table)


if __name__ == "__main__":
    main()
