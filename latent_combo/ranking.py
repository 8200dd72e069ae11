"""Offline selection over finished runs (`latent-combo select`) and how well each rule ranks (`latent-combo rank`).

The rules, none of which reads a return:
- `model-return`: the highest return the run's own world model predicts for its policy (latent_combo.estimate), or
  `model-return-pessimistic`, the heads' mean less their spread;
- `cross-model-return`: the same estimate in another seed's world model (`latent-combo estimate --evaluator`), which
  the policy never trained against; runs without it are left out of that rule;
- `fqe-return`: fitted Q evaluation of the policy on the dataset's real latent transitions (`latent-combo estimate
  --fqe`, latent_combo.fqe), which uses the world model only to encode real frames; runs without it are left out;
- `regulariser`: the paper's lowest final E_rho[Q] - E_D[Q], among settings whose Q on data is above the floor and
  level (latent_combo.selection); only algorithms with a conservative regulariser (COMBO, CQL) have one.
A setting is a run's config less its seed and where it ran; its figures are means over its seeds.
`rank` reads the evaluated returns too, only to say how well each rule would have chosen: Spearman's rank correlation
between the rule's figure and the evaluated score over the settings, and the regret of its pick (the grid's best
evaluated score minus the pick's), also as a share of the grid's spread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from latent_combo import selection
from latent_combo.utils import flatten

# Config keys that do not make a setting: the seed and where and how a run was executed.
NOT_SETTING = {("seed",), ("logdir",), ("threads",), ("device",), ("dataset",)}
# Rule name -> (results key, +1 when higher is better, -1 when lower is).
RULES = {"model-return": ("model_return", 1), "model-return-pessimistic": ("model_return_pessimistic", 1),
         "cross-model-return": ("cross_return", 1), "fqe-return": ("fqe_return", 1),
         "regulariser": ("final_regulariser", -1)}


def finished_runs(paths) -> list[Path]:
    """Finished run folders (results.json and config.yaml) at or below each path, in order, without repeats."""
    found = []
    for p in paths:
        # A run folder holds config.yaml beside results.json (bench/d3rlpy_reference.py's folders hold no config).
        found += sorted(r.parent for r in Path(p).rglob("results.json") if (r.parent / "config.yaml").exists())
    if not found:
        raise FileNotFoundError(f"{', '.join(map(str, paths))}: no finished run (a folder with results.json) at or "
                                "below it")
    return list(dict.fromkeys(found))


def run_row(run_dir: Path, estimate: bool = True) -> dict:
    """A finished run's figures: results.json, updated by estimate.json where `latent-combo estimate` wrote one (it
    also holds the cross-model figures), else the estimate computed now (and cached) when results.json has none and
    `estimate`."""
    results = json.loads((run_dir / "results.json").read_text())
    cfg = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
    cached = run_dir / "estimate.json"
    if cached.exists():
        results.update(json.loads(cached.read_text()))
    elif "model_return" not in results and estimate:
        from latent_combo.estimate import estimate_run

        results.update(estimate_run(run_dir))
    score = "eval_success_rate" if "eval_success_rate" in results else "eval_normalized_score"
    setting = {k: v for k, v in cfg.items() if k not in NOT_SETTING}
    return {**results, "dir": str(run_dir), "score": results.get(score), "setting": setting,
            "q_data": selection.final_q(results.get("q_data_trace")),
            "floor": selection.q_floor(results.get("dataset_stats", {}).get("reward_min"), cfg[("agent", "gamma")])}


def settings(rows: list[dict]) -> list[dict]:
    """Rows grouped by setting: each rule's figure, Q on data's checks and the score, averaged over seeds; `name`
    lists the keys in which the setting differs from the others."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(sorted(r["setting"].items(), key=str)), []).append(r)
    # A setting is named by its algorithm and the keys where it departs from the grid's most common value.
    values = {}
    for rs in groups.values():
        for k, v in rs[0]["setting"].items():
            values.setdefault(k, []).append(repr(v))
    common = {}  # key -> its most common value (None: no value is more common than the others, so always named)
    for k, vs in values.items():
        counts = sorted((vs.count(v), v) for v in set(vs))
        if len(counts) > 1:
            common[k] = counts[-1][1] if counts[-1][0] > counts[-2][0] else None
    out = []
    for key, rs in groups.items():
        mean = {k: selection.mean_of([r.get(k) for r in rs]) for k in
                ("model_return", "model_return_pessimistic", "cross_return", "fqe_return", "final_regulariser",
                 "q_data", "score")}
        rise = selection.mean_of([r.get("q_data_rise_last_fifth") for r in rs])
        setting = dict(key)
        name = ",".join([f"{setting[('algo',)]}"] + [f"{'.'.join(k)}={v}" for k, v in sorted(setting.items(), key=str)
                                                     if k in common and k != ("algo",) and repr(v) != common[k]])
        out.append({**mean, "name": name, "seeds": len(rs),
                    "excluded": selection.exclusions(mean["q_data"], rise, rs[0]["floor"])})
    return out


def pick(table: list[dict], rule: str) -> int | None:
    """Index of the rule's pick among the settings (None when no setting has the rule's figure)."""
    key, sign = RULES[rule]
    if rule == "regulariser":
        candidates = [i for i, t in enumerate(table) if t[key] is not None]
        i, _ = selection.pick([{"regulariser": table[j][key], "excluded": table[j]["excluded"]} for j in candidates])
        return None if i is None else candidates[i]
    scored = [i for i, t in enumerate(table) if t[key] is not None]
    return max(scored, key=lambda i: sign * table[i][key]) if scored else None


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (None with fewer than 3 pairs or a constant side)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def validate(table: list[dict]) -> dict:
    """Per rule: Spearman of its figure (signed, higher = better) with the evaluated score over the settings that
    have it, its pick, and the pick's regret against the whole grid."""
    missing = [t["name"] for t in table if t["score"] is None]
    if missing:
        raise ValueError(f"rank needs every run's evaluated score; none in: {', '.join(missing)}")
    scores = [t["score"] for t in table]
    best, spread = max(scores), max(scores) - min(scores)
    out = {}
    for rule, (key, sign) in RULES.items():
        have = [t for t in table if t[key] is not None]
        i = pick(table, rule)
        regret = None if i is None else best - table[i]["score"]
        out[rule] = {"n": len(have), "spearman": spearman([sign * t[key] for t in have], [t["score"] for t in have]),
                     "pick": None if i is None else table[i]["name"], "regret": regret,
                     "regret_share": None if regret is None or spread == 0 else regret / spread}
    return out


def cmd_select(a) -> int:
    """`latent-combo select --by RULE RUN_DIR...`: the settings table and the rule's pick."""
    if a.by == "regulariser":
        return select_by_regulariser(a.run_dirs)
    table = settings([run_row(Path(d), estimate=a.by != "regulariser") for d in finished_runs(a.run_dirs)])
    key, _ = RULES[a.by]
    print_table(table, show_score=False)
    i = pick(table, a.by)
    if i is None:
        how = {"fqe-return": "; `latent-combo estimate RUN_DIR --fqe` adds it",
               "cross-model-return": "; `latent-combo estimate RUN_DIR --evaluator OTHER_RUN` adds it"}.get(a.by, "")
        why = "no setting has a regulariser" if a.by == "regulariser" else f"no setting has the estimate{how}"
        print(f"\npick by {a.by}: none ({why}{' above the floor' if a.by == 'regulariser' else ''})")
        return 1
    print(f"\npick by {a.by}: {table[i]['name']}  ({key} {table[i][key]:.3g})")
    return 0


# Keys that may differ between runs compared by `select`: the swept hyperparameters, the seed, and
# where and how the run was executed.
SELECT_FREE = {("agent", "beta"), ("agent", "real_ratio"), ("seed",), ("logdir",), ("threads",), ("device",)}


def select_by_regulariser(run_dirs: list[str]) -> int:
    """The paper's offline rule: among runs differing only in beta / f, the setting with the lowest final
    regulariser (averaged over its seeds), leaving out settings whose Q on data is below the floor or still
    moving (selection.py). Reads the regulariser and Q on data, never an evaluation return."""
    runs, reference = [], None
    for d in run_dirs:
        path, cfg_path = Path(d) / "results.json", Path(d) / "config.yaml"
        if not path.exists() or not cfg_path.exists():
            raise FileNotFoundError(f"{path if not path.exists() else cfg_path}: missing (run not finished)")
        results = json.loads(path.read_text())
        if results.get("final_regulariser") is None:
            raise ValueError(f"{path}: no final_regulariser (this algo has no conservative regulariser)")
        cfg = flatten(yaml.safe_load(cfg_path.read_text()))
        fixed = {k: v for k, v in cfg.items() if k not in SELECT_FREE}
        if reference is None:
            reference = (d, fixed)
        elif fixed != reference[1]:
            keys = sorted(".".join(k) for k in set(fixed) | set(reference[1]) if fixed.get(k) != reference[1].get(k))
            raise ValueError(f"{d} and {reference[0]} differ in {keys}: select compares runs that differ "
                             "only in agent.beta, agent.real_ratio and the seed")
        floor = selection.q_floor(results.get("dataset_stats", {}).get("reward_min"), cfg[("agent", "gamma")])
        runs.append({"beta": cfg[("agent", "beta")], "f": cfg[("agent", "real_ratio")], "seed": cfg[("seed",)],
                     "regulariser": results["final_regulariser"], "dir": d, "floor": floor,
                     "q_data": selection.final_q(results.get("q_data_trace")),
                     "q_rise": results.get("q_data_rise_last_fifth")})
    print(f"{'beta':>6} {'f':>5} {'seed':>4} {'regulariser':>12} {'Q data':>8}  run")
    for r in sorted(runs, key=lambda r: (r["beta"], r["f"], r["seed"])):
        q = "-" if r["q_data"] is None else f"{r['q_data']:.3g}"
        print(f"{r['beta']:>6g} {r['f']:>5g} {r['seed']:>4} {r['regulariser']:>12.4f} {q:>8}  {r['dir']}")
    settings = {}
    for r in runs:
        settings.setdefault((r["beta"], r["f"]), []).append(r)
    table = []
    for (beta, f), rs in settings.items():
        mean = {k: selection.mean_of([r[k] for r in rs]) for k in ("regulariser", "q_data", "q_rise")}
        table.append({"beta": beta, "f": f, "runs": len(rs), "regulariser": mean["regulariser"],
                      "excluded": selection.exclusions(mean["q_data"], mean["q_rise"], rs[0]["floor"])})
    table.sort(key=lambda t: t["regulariser"])
    print(f"\n{'beta':>6} {'f':>5} {'runs':>4} {'mean':>12}")
    for t in table:
        print(f"{t['beta']:>6g} {t['f']:>5g} {t['runs']:>4} {t['regulariser']:>12.4f}"
              + (f"  (not pickable: {'; '.join(t['excluded'])})" if t["excluded"] else ""))
    i, fallback = selection.pick(table)
    if i is None:
        print("\npick: none (every setting's Q on data is below the floor)")
        return 1
    print(f"\npick: agent.beta={table[i]['beta']:g} agent.real_ratio={table[i]['f']:g}"
          + ("  (fallback: no setting levelled off; the lowest regulariser above the floor)" if fallback else ""))
    return 0


def cmd_rank(a) -> int:
    """`latent-combo rank RUN_DIR...`: every rule's Spearman and regret against the evaluated scores."""
    table = settings([run_row(Path(d)) for d in finished_runs(a.run_dirs)])
    print_table(table, show_score=True)
    result = validate(table)
    print(f"\n{'rule':<26} {'settings':>8} {'Spearman':>9} {'regret':>8} {'of spread':>9}  pick")
    for rule, v in result.items():
        fmt = lambda x, f: "-" if x is None else format(x, f)
        print(f"{rule:<26} {v['n']:>8} {fmt(v['spearman'], '.2f'):>9} {fmt(v['regret'], '.3g'):>8} "
              f"{fmt(v['regret_share'], '.0%'):>9}  {v['pick'] or '-'}")
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": table, "rules": result}, indent=1))
    return 0


def print_table(table: list[dict], show_score: bool) -> None:
    fmt = lambda x: "-" if x is None else f"{x:.3g}"
    print(f"{'model return':>12} {'pessimistic':>11} {'cross':>6} {'FQE':>6} {'regulariser':>11} {'Q data':>7}"
          + (f" {'score':>7}" if show_score else "") + f" {'seeds':>5}  setting")
    for t in sorted(table, key=lambda t: -(t["model_return"] or -np.inf)):
        print(f"{fmt(t['model_return']):>12} {fmt(t['model_return_pessimistic']):>11} {fmt(t['cross_return']):>6} "
              f"{fmt(t['fqe_return']):>6} {fmt(t['final_regulariser']):>11} {fmt(t['q_data']):>7}"
              + (f" {fmt(t['score']):>7}" if show_score else "") + f" {t['seeds']:>5}  {t['name']}"
              + (f"  (regulariser rule excludes: {'; '.join(t['excluded'])})" if t["excluded"]
                 and t["final_regulariser"] is not None else ""))
