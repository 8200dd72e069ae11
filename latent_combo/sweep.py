"""`latent-combo sweep`: algorithms x seeds x a grid of agent settings as Ray Tune trials, then one table.

Two Tune runs: first one world model per seed (`train --world-model-only`: the world model and its
probe), then every agent trial of that seed starting from a copy of it, so the algorithms differ only in
the agent. A trial is one `pipeline.run` in its own run folder; it reports the agent's logged metrics to
Tune as it goes and, at the end, a Tune checkpoint holding the run's results.json and the run folder's
path. Run folders resume from their own checkpoints, so a trial that dies is retried where it stopped
(FailureConfig), and rerunning the same sweep skips every finished run. Ray is imported only here.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from latent_combo import selection
from latent_combo.evaluate import ci95

# Which algorithms a grid key means something to; a key not listed applies to every algorithm but bc.
RELEVANT = {"agent.beta": ("combo", "cql"), "agent.penalty_form": ("combo", "cql"),
            "agent.penalty_grad": ("combo", "cql"), "agent.penalty_actions": ("combo", "cql"),
            "agent.rho_dataset": ("combo",),
            "agent.real_ratio": ("combo", "lompo", "lmbpo"), "agent.lompo_lambda": ("lompo",),
            "agent.rollout_length": ("combo", "lompo", "lmbpo")}
PROBE_KEYS = ("state_r2", "open_loop_r2_h1", "open_loop_r2_h5", "open_loop_r2_h15", "separability")


def parse_grid(items: list[str]) -> dict[str, list]:
    """['agent.beta=0.1,0.3,1', 'cql:agent.beta=0.3', ...] -> {'agent.beta': [0.1, 0.3, 1], 'cql:agent.beta': [0.3]};
    agent keys only (a world-model key would need one world model per setting: pass it as a key=value override
    instead). An `ALGO:` prefix gives that algorithm its own values, so that each algorithm of one table runs at
    its own offline pick (e.g. combo:agent.beta=0.3 cql:agent.beta=0.1)."""
    from latent_combo.config import ALGOS

    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid {item!r}: expected [algo:]key=v1,v2,..., e.g. agent.beta=0.1,0.3,1")
        algo, _, bare = key.rpartition(":")
        if algo and algo not in ALGOS:
            raise ValueError(f"--grid {item!r}: unknown algorithm {algo!r} before ':' (expected one of {ALGOS})")
        if not bare.startswith("agent."):
            raise ValueError(f"--grid {bare}: only agent.* keys are swept over a shared world model; "
                             "give world-model keys as key=value overrides")
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def settings_for(algo: str, grid: dict[str, list]) -> list[dict]:
    """The grid restricted to the keys that matter to `algo` (its own `algo:` keys, and the unprefixed keys
    RELEVANT to it), as settings with unprefixed keys: [{}] when none applies."""
    keys, names = [], []
    for key in grid:
        owner, _, bare = key.rpartition(":")
        if owner == algo or (not owner and algo in RELEVANT.get(bare, ("combo", "cql", "lompo", "lmbpo"))):
            if bare in names:
                raise ValueError(f"--grid gives {bare} to {algo} twice (with and without '{algo}:')")
            keys.append(key)
            names.append(bare)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[k] for k in keys))]


def setting_name(setting: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "preset"


def trial_configs(a) -> tuple[list[dict], list[dict]]:
    """The world-model trials (one per seed) and the agent trials (seed x algo x its settings)."""
    base = {"env": a.env, "dataset": a.data_path, "obs": a.obs, "preset": a.preset, "overrides": a.overrides}
    # The world model does not depend on the algorithm: its folder is named for combo whichever algorithms a
    # sweep lists, so a later sweep of other algorithms on the same logdir reuses it instead of retraining it.
    wms = [{**base, "phase": "world-model", "seed": s, "algo": "combo", "setting": {},
            "logdir": str(Path(a.logdir) / "world-models")} for s in a.seeds]
    agents = [{**base, "phase": "agent", "seed": s, "algo": algo, "setting": st,
               "logdir": str(Path(a.logdir) / setting_name(st)),
               "world_model": run_folder(wms[i])}
              for i, s in enumerate(a.seeds) for algo in a.algos for st in settings_for(algo, a.grid)]
    return wms, agents


def resolved(c: dict):
    from latent_combo.config import parse_overrides, resolve

    overrides = {**parse_overrides(c["overrides"]), **c["setting"], "algo": c["algo"], "seed": c["seed"],
                 "obs": c["obs"], "dataset": c["dataset"], "logdir": c["logdir"]}
    if c.get("threads"):  # set per phase by tune_run, from the CPUs Ray gives each trial
        overrides["threads"] = c["threads"]
    return resolve(c["preset"], c["env"], overrides)


def run_folder(c: dict) -> str:
    from latent_combo.runs import run_dir_for

    return str(run_dir_for(resolved(c), Path(c["dataset"])))


def trial(c: dict) -> None:
    """One Tune trial: a world model (phase 'world-model') or an agent run, reported to Tune."""
    from ray import tune

    from latent_combo.pipeline import run

    folder = Path(run_folder(c))
    if c["phase"] == "world-model":
        probe = run(resolved(c), world_model_only=True)["probe"]
        tune.report({k: v for k, v in probe.items() if isinstance(v, float)})
        return
    done = folder / "results.json"
    results = json.loads(done.read_text()) if done.exists() else \
        run(resolved(c), world_model_from=c["world_model"], on_log=lambda step, m: tune.report({**m, "step": step}))
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "results.json").write_text(json.dumps(results, indent=1))
        Path(tmp, "run_dir.txt").write_text(str(folder))
        final = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tune.report({**final, "done": True}, checkpoint=tune.Checkpoint.from_directory(tmp))


def cpus_for(n_trials: int, cpus_per_trial: float, total: float) -> float:
    """CPUs per trial: the asked share, or the whole cores split evenly when fewer trials than the share allows
    run at once (a tuning seed's lone world model would otherwise train on one of two cores)."""
    if n_trials >= max(1, int(total // cpus_per_trial)):
        return cpus_per_trial
    return max(cpus_per_trial, float(int(total // n_trials)))


def phase_cpus(n_trials: int, a) -> float:
    """CPUs per trial of one phase: on this machine, cpus_for its cores; on a cluster, the asked share (a
    cluster's CPUs are not one machine's)."""
    return cpus_for(n_trials, a.cpus_per_trial, os.cpu_count() or 1) if a.address is None else a.cpus_per_trial


def omp_env(shared: bool) -> dict:
    """OpenMP's idle threads for a phase's trials: sharing the cores, they sleep at once (a spinning thread steals
    the other trial's core); holding every core, they spin briefly as the CLI's do, 15-43% faster (cli.py)."""
    return {"OMP_WAIT_POLICY": "PASSIVE"} if shared else {"GOMP_SPINCOUNT": "10000"}


def tune_run(configs: list[dict], name: str, a, cpus: float) -> None:
    from ray import tune

    configs = [{**c, "threads": max(1, int(cpus))} for c in configs]
    resources = {"cpu": cpus, "gpu": a.gpus_per_trial}
    tuner = tune.Tuner(tune.with_resources(_trial_entry, resources),
                       param_space={"c": tune.grid_search(configs)},
                       run_config=tune.RunConfig(name=name, storage_path=str(Path(a.storage).resolve()),
                                                 failure_config=tune.FailureConfig(max_failures=a.retries),
                                                 verbose=a.verbose))
    grid = tuner.fit()
    errors = [str(e) for e in grid.errors]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) of {name} failed after {a.retries} retries; first: {errors[0]}")


def _trial_entry(config: dict) -> None:
    """Tune's trainable: the grid searches over whole trial configs, under the key "c"."""
    trial(config["c"])


def run_sweep(a) -> dict:
    """Both Tune runs on a local Ray (or the cluster at a.address), then the table."""
    import ray
    from ray import tune  # noqa: F401  (fail here, not inside a trial, if Ray Tune is missing)

    wms, agents = trial_configs(a)
    t0 = time.time()
    for configs, phase in ((wms, "world-models"), (agents, "agents")):
        cpus = phase_cpus(len(configs), a)
        omp = omp_env(a.address is not None or cpus < (os.cpu_count() or 1))
        ray.init(address=a.address, include_dashboard=False, log_to_driver=a.verbose > 0, ignore_reinit_error=True,
                 runtime_env={"env_vars": {**omp, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
        try:
            tune_run(configs, f"{a.name}-{phase}", a, cpus)
        finally:
            ray.shutdown()
    rows = [json.loads((Path(run_folder(c)) / "results.json").read_text()) | {"setting": c["setting"]}
            for c in agents]
    return summarise(rows, a, time.time() - t0)


def with_estimate(row: dict) -> dict:
    """A run's results with the world model's return estimate: its own, else its run folder's estimate.json, else
    computed now (runs finished before the estimate was part of every run)."""
    if "model_return" in row:
        return row
    from latent_combo.estimate import estimate_run

    cached = Path(row["run_dir"]) / "estimate.json"
    return {**row, **(json.loads(cached.read_text()) if cached.exists() else estimate_run(row["run_dir"]))}


def q_floor_of(row: dict, stats: dict) -> float | None:
    """selection.q_floor for a run: its config's gamma and the dataset's smallest reward."""
    gamma = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())["agent"]["gamma"]
    return selection.q_floor(stats.get("reward_min"), gamma)


def summarise(rows: list[dict], a, wall: float) -> dict:
    """The table (algo x setting, mean ± 95% interval over seeds), the offline pick per algorithm (selection.py:
    the lowest final regulariser, averaged over seeds, among settings whose Q on data is above the floor and
    level; never a return), the probe per seed; printed and written."""
    success = "eval_success_rate" in rows[0]
    key = "eval_success_rate" if success else "eval_normalized_score"
    stats = rows[0]["dataset_stats"]
    if "reward_min" not in stats:  # runs finished before the statistic existed
        from latent_combo.data import OfflineDataset

        stats = {**stats, "reward_min": OfflineDataset(a.data_path, check=False).stats()["reward_min"]}
    rows = [with_estimate(r) for r in rows]
    groups = {}
    for r in rows:
        groups.setdefault((r["algo"], setting_name(r["setting"])), []).append(r)
    table = []
    for (algo, name), rs in groups.items():
        scores = [r[key] for r in rs]
        q_data = selection.mean_of([selection.final_q(r.get("q_data_trace")) for r in rs])
        q_rise = selection.mean_of([r.get("q_data_rise_last_fifth") for r in rs])
        table.append({"algo": algo, "setting": name, "mean": float(np.mean(scores)), "ci95": ci95(scores),
                      "scores": scores, "seeds": [r["seed"] for r in rs],
                      "regulariser": selection.mean_of([r.get("final_regulariser") for r in rs]),
                      "model_return": selection.mean_of([r.get("model_return") for r in rs]),
                      "q_data": q_data, "q_rise": q_rise,
                      "excluded": selection.exclusions(q_data, q_rise, q_floor_of(rs[0], stats)),
                      "wall_s": float(np.mean([r["wall_time_s"] for r in rs]))})
    picks = {}
    for algo in dict.fromkeys(t["algo"] for t in table):
        mine = [t for t in table if t["algo"] == algo and t["regulariser"] is not None]
        if len(mine) > 1:
            i, fallback = selection.pick(mine)
            picks[algo] = None if i is None else mine[i]["setting"]
            if i is not None:
                mine[i]["offline_pick"] = "fallback: no setting levelled off" if fallback else True
            # Shown beside the pick to judge the rule, never used to choose.
            max(mine, key=lambda t: t["mean"])["best_evaluated"] = True
    # The world model's return estimate ranks every row, whatever its algorithm (latent_combo.estimate).
    estimated = [t for t in table if t["model_return"] is not None]
    if len(estimated) > 1:
        max(estimated, key=lambda t: t["model_return"])["model_return_pick"] = True
    print(f"\n{a.env} {Path(a.data_path).name} obs={a.obs} preset={a.preset} seeds={a.seeds}  ({wall:.0f}s)")
    print(f"dataset: {stats['episodes']} episodes, Batch Mean {stats['return_mean']:.1f}, "
          f"Batch Max {stats['return_max']:.1f}" + (f", success {stats['success_rate']:.0%}" if success else ""))
    print(f"{'algo':<7} {'setting':<24} {'success' if success else 'score':>16} {'per seed':<24} "
          f"{'regulariser':>12} {'model ret':>9} {'Q data':>7} {'Q rise':>7} {'wall':>7}")
    for t in table:
        reg = "-" if t["regulariser"] is None else f"{t['regulariser']:.3f}"
        q = "-" if t["q_data"] is None else f"{t['q_data']:.3g}"
        rise = "-" if t["q_rise"] is None else f"{t['q_rise']:+.1%}"
        fmt = (lambda v: f"{v:.0%}") if success else (lambda v: f"{v:.1f}")
        model = "-" if t["model_return"] is None else f"{t['model_return']:.1f}"
        print(f"{t['algo']:<7} {t['setting']:<24} {fmt(t['mean']):>8} ±{fmt(t['ci95']):<7} "
              f"{' '.join(fmt(s) for s in t['scores']):<24} {reg:>12} {model:>9} {q:>7} {rise:>7} {t['wall_s']:>6.0f}s"
              + ("  <- regulariser pick" if t.get("offline_pick") else "")
              + ("  <- model-return pick" if t.get("model_return_pick") else "")
              + (f" ({t['offline_pick']})" if isinstance(t.get("offline_pick"), str) else "")
              + ("  <- best evaluated" if t.get("best_evaluated") else "")
              + (f"  (not pickable: {'; '.join(t['excluded'])})" if t["excluded"] and t["regulariser"] is not None
                 else ""))
    for algo in (k for k, v in picks.items() if v is None):
        print(f"offline pick for {algo}: none (every setting's Q on data is below the floor)")
    batch_mean = stats["success_rate"] if success else stats["return_mean"] / 10  # in the table's units
    readings = compare(table, batch_mean)
    if readings:
        print(f"{table[0]['algo']} ({table[0]['setting']}) against the others, 95% intervals over seeds:")
        print("\n".join(f"  {line}" for line in readings))
    probes = {}
    per_seed = {r["seed"]: r.get("probe") or {} for r in rows}
    if all("state_r2" in p for p in per_seed.values()):
        print("world model probe (held-out episodes; one world model per seed)")
        for k in PROBE_KEYS:
            vals = [per_seed[s][k] for s in sorted(per_seed) if k in per_seed[s]]
            if vals:
                probes[k] = {"mean": float(np.mean(vals)), "ci95": ci95(vals), "per_seed": vals}
                print(f"  {k:<18} {np.mean(vals):.3f} ±{ci95(vals):.3f}   per seed "
                      + " ".join(f"{v:.3f}" for v in vals))
    out = Path(a.logdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "func"},
                                                "dataset": stats, "table": table, "picks": picks,
                                                "readings": readings,
                                                "probe": probes,
                                                "wall_s": wall, "runs": rows}, indent=1, default=str))
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["algo", "setting", "mean", "ci95", "regulariser", "model_return", "q_data", "q_rise",
                               "wall_s", "offline_pick", "model_return_pick", "best_evaluated"], extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    print(f"\ntable: {out / 'sweep.json'}, {out / 'sweep.csv'}; Tune results: {Path(a.storage) / a.name}-*")
    return {"table": table, "probe": probes, "rows": rows}


def compare(table: list[dict], batch_mean: float) -> list[str]:
    """The table's first row (the first algorithm's first setting) against every other row and the dataset's
    Batch Mean: above or below, and whether the 95% intervals over seeds are apart (the issue's test) or
    overlap. With one seed there is no interval, so nothing is read."""
    first = table[0]
    if len(first["scores"]) < 2:
        return []

    def reading(mean, lo, hi):
        side = "above" if first["mean"] > mean else "below" if first["mean"] < mean else "level"
        apart = first["mean"] - first["ci95"] > hi or first["mean"] + first["ci95"] < lo
        return f"{side}, {'intervals apart' if apart else 'intervals overlap'}"

    lines = [f"vs {t['algo']} ({t['setting']}) {t['mean']:.3g} ±{t['ci95']:.2g}: "
             + reading(t["mean"], t["mean"] - t["ci95"], t["mean"] + t["ci95"]) for t in table[1:]]
    side = "above" if first["mean"] - first["ci95"] > batch_mean else (
        "below" if first["mean"] + first["ci95"] < batch_mean else "level (the Batch Mean is inside its interval)")
    return lines + [f"vs the dataset's Batch Mean {batch_mean:.3g}: {side}"]


def add_arguments(s) -> None:
    from latent_combo.config import ALGOS, PRESETS
    from latent_combo.envs import ENV_IDS

    s.add_argument("--env", default="walker-walk", choices=ENV_IDS)
    s.add_argument("--dataset", default="medium-replay", help="flavour or folder")
    s.add_argument("--algos", nargs="+", default=["combo", "lmbpo", "bc"], choices=ALGOS)
    s.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="agent setting to sweep (repeat for a grid), e.g. agent.beta=0.1,0.3,1; "
                        "cql:agent.beta=0.3 gives one algorithm its own values")
    s.add_argument("--obs", default="image", choices=("image", "state"))
    s.add_argument("--preset", default="cpu", choices=PRESETS)
    s.add_argument("--address", default=None, help="an existing Ray cluster (default: a local Ray)")
    s.add_argument("--cpus-per-trial", type=float, default=1)
    s.add_argument("--gpus-per-trial", type=float, default=0, help="fractions share a GPU between trials")
    s.add_argument("--storage", default="runs/tune", help="Tune's results (shared storage on a cluster)")
    s.add_argument("--name", default=None, help="sweep name (default: ENV-DATASET-OBS-PRESET)")
    s.add_argument("--logdir", default="runs/sweep", help="run folders (shared storage on a cluster)")
    s.add_argument("--retries", type=int, default=2, help="times a failed trial is retried from its checkpoint")
    s.add_argument("--verbose", type=int, default=0, help="Tune's verbosity (0-3)")
    s.add_argument("overrides", nargs="*", help="config overrides for every run, key=value")


def prepare(a, build_dataset=None) -> None:
    """Resolve paths once in the driver: the dataset (built if missing), absolute folders, the grid."""
    from latent_combo.config import resolve
    from latent_combo.runs import dataset_dir

    a.grid = parse_grid(a.grid)
    cfg = resolve(a.preset, a.env, {"dataset": a.dataset, "obs": a.obs})
    a.data_path = str(dataset_dir(cfg, build_dataset).resolve())
    a.logdir = str(Path(a.logdir).resolve())
    a.name = a.name or f"{a.env}-{Path(a.data_path).name}-{a.obs}-{a.preset}"
