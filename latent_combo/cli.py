"""`latent-combo` command line: collect, train, sweep, probe, analyse, eval, estimate, select, rank, info, verify,
manifest, export.

The entry layer: the only place in latent_combo that imports data_collection (the dataset builders).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import warnings

# Idle OpenMP threads (libgomp, torch's CPU wheels) spin 10k rounds, then sleep. Sleeping at once
# (OMP_WAIT_POLICY=PASSIVE) cost a run alone 15% in fp32 and 30% under bf16 on this 2-core machine
# (cpu-preset world model: 4.1 / 4.6 updates/s against 4.7 / 6.6). With libgomp's default spin, an earlier
# measurement found runs up to 100x slower whenever another process held a core; with 10k rounds, two runs
# at once ran 1.6-1.9 updates/s each against PASSIVE's 2.6 (docs/benchmarks.md). Sweeps' trials keep PASSIVE
# where they share the cores (sweep.omp_env). Must be set before torch loads; the environment overrides.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from pathlib import Path  # noqa: E402

from latent_combo.config import ALGOS, PRESETS, Config, parse_overrides, resolve  # noqa: E402
from latent_combo.envs import COLLECT_ENV_IDS, ENV_IDS, RENDER_SETTINGS  # noqa: E402
from latent_combo.ranking import RULES, cmd_rank, cmd_select  # noqa: E402
from latent_combo.runs import FLAVOURS, dataset_dir, load_checkpoint, load_config  # noqa: E402
from latent_combo.utils import atomic_write_text, pick_device  # noqa: E402


def cmd_info(a) -> int:
    from latent_combo.data import OfflineDataset

    ds = OfflineDataset(a.dir, check=False)
    stats = ds.stats()
    meta = ds.metadata or {}
    row = {"dataset": str(a.dir), "env": meta.get("env", "?"), "flavour": meta.get("flavour", "?"),
           "policy": meta.get("algorithm_name", "?"), **stats}
    if a.json:
        print(json.dumps(row, indent=1))
        return 0
    success = "success_rate" in stats  # sparse-success envs only (see data.episode_stats)
    w = max(32, len(str(a.dir)))  # a long path widens the first column rather than shifting the others
    print(f"{'dataset':<{w}} {'episodes':>8} {'transitions':>11} {'Batch Mean':>10} {'Batch Max':>9} "
          f"{'Min':>7}" + (f" {'success':>7}" if success else ""))
    print(f"{str(a.dir):<{w}} {stats['episodes']:>8} {stats['transitions']:>11} {stats['return_mean']:>10.1f} "
          f"{stats['return_max']:>9.1f} {stats['return_min']:>7.1f}"
          + (f" {stats['success_rate']:>7.1%}" if success else ""))
    return 0


def cmd_verify(a) -> int:
    from latent_combo.data import METADATA, check_structure, episode_files, read_metadata, verify

    if read_metadata(a.dir) is None:
        aligned: list = []
        problems = check_structure(a.dir, aligned)
        for p in problems:
            print(p, file=sys.stderr)
        n = len(episode_files(a.dir))
        print(f"{a.dir}: no {METADATA}, so no checksums to check against; the structure of "
              f"{n - len(problems)} of {n} episode files is valid"
              + (f" ({len(aligned)} with flag arrays one row longer, aligned on load)" if aligned else "")
              + ("" if problems else f"; `latent-combo manifest {a.dir}` writes a manifest"))
        return 1 if problems else 0
    problems = verify(a.dir)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{a.dir}: every file matches {METADATA}")
    return 1 if problems else 0


def cmd_manifest(a) -> int:
    """Write metadata.json (checksums, returns, render settings) for a folder that has none, e.g. V-D4RL's."""
    from latent_combo.data import METADATA, check_structure, read_metadata, write_metadata

    d = Path(a.dir)
    if read_metadata(d) is not None and not a.force:
        raise ValueError(f"{d / METADATA}: already there (our collector's carries more than a manifest rebuilds); "
                         "--force to overwrite")
    problems = check_structure(d)
    if problems:
        raise ValueError("not writing a manifest over broken files:\n  " + "\n  ".join(problems))
    meta = write_metadata(d, env=a.env, render=a.render, source=a.source)
    print(f"{d / METADATA}: {meta['total_episodes']} episodes, {meta['total_steps']} steps, render {a.render!r}")
    return 0


def cmd_collect(a) -> int:
    from data_collection.collect import collect

    try:
        out = collect(a.env, a.flavour, a.episodes, out=a.out, seed=a.seed, workers=a.workers, force=a.force,
                      max_steps=a.max_steps, render=a.render)
    except KeyboardInterrupt:
        print("\ninterrupted: finished episodes are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    return cmd_info(argparse.Namespace(dir=str(out), json=False))


def cmd_export(a) -> int:
    """A Minari dataset from one of ours, loaded back and compared with the folder."""
    from latent_combo.export import check_round_trip, to_minari

    exported = to_minari(a.dir, a.minari, lossless=a.lossless, env_id=a.env)
    problems = check_round_trip(a.dir, exported)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"minari dataset {a.minari!r}: {exported.total_episodes} episodes, {exported.total_steps} steps"
          + (", loaded back: episodes, actions, rewards and states match" if not problems else "")
          + ("" if a.lossless else "; images stored JPEG-encoded (lossy; --lossless keeps the exact pixels)"))
    return 1 if problems else 0


def cmd_train(a) -> int:
    from latent_combo.data import dataset_env

    overrides = parse_overrides(a.overrides)
    for key in ("dataset", "algo", "seed", "logdir", "obs", "device"):
        if getattr(a, key) is not None:
            overrides[key] = getattr(a, key)
    # A dataset folder's manifest names its env, the default for --env (an explicit one that differs is refused
    # by pipeline.run); a flavour, or a folder without a manifest (V-D4RL's), leaves walker-walk.
    dataset = str(overrides.get("dataset", Config.dataset))
    env = a.env or (None if dataset in FLAVOURS else dataset_env(dataset)) or Config.env
    cfg = resolve(a.preset, env, overrides)
    from data_collection.collect import ensure_dataset
    from latent_combo.pipeline import results_table, run

    results = run(cfg, a.world_model, a.fresh, build_dataset=ensure_dataset, world_model_only=a.world_model_only)
    if a.world_model_only:
        print(f"\nworld model and probe: {results['run_dir']}/probe.json ({results['wall_time_s']:.0f}s)")
        return 0
    print()
    print(results_table([results]))
    print(f"\nresults: {results['run_dir']}/results.json   tensorboard: make tensorboard")
    return 0


def cmd_sweep(a) -> int:
    from data_collection.collect import ensure_dataset
    from latent_combo.sweep import prepare, run_sweep

    prepare(a, ensure_dataset)
    try:
        run_sweep(a)
    except RuntimeError as e:  # trials that failed after their retries; Tune's logs hold the tracebacks
        print(f"latent-combo sweep: {e}\nrerun the same command to resume (finished runs are kept)", file=sys.stderr)
        return 1
    return 0


def cmd_probe(a) -> int:
    """Probe a run folder's world model on the dataset it was trained on; updates probe.json and results.json."""
    import contextlib

    from torch.utils.tensorboard import SummaryWriter

    from latent_combo.probe import format_probe
    from latent_combo.world_model_training import load_trained_world_model, probe_world_model

    run_dir = Path(a.run_dir)
    check_dataset_env(run_dir, a.dataset)
    cfg, wm, dataset, device, _, results = load_trained_world_model(run_dir, a.dataset, a.device)
    if a.fresh:
        (run_dir / "probe.json").unlink(missing_ok=True)
    writer = SummaryWriter(str(run_dir))
    # --json: stdout holds the JSON alone (a recomputed probe's printout goes to stderr).
    with contextlib.redirect_stdout(sys.stderr if a.json else sys.stdout):
        probe = probe_world_model(cfg, wm, dataset, run_dir, writer, device, nonlinear=a.mlp)
    writer.close()
    if results:
        results["probe"] = probe
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    print(json.dumps(probe, indent=1) if a.json else format_probe(probe))
    return 0


def check_dataset_env(run_dir: Path, dataset: str | None) -> None:
    """`--dataset` of probe / analyse: episodes of another env than the run's would be read under its names."""
    from latent_combo.data import METADATA, DatasetError, dataset_env

    env, found = load_config(run_dir).env, dataset and dataset_env(dataset)
    if found and found != env:
        raise DatasetError(f"--dataset {dataset}: its {METADATA} says \"env\": \"{found}\", but the run "
                           f"({run_dir / 'config.yaml'}) is {env}'s; pass a {env} dataset, or no --dataset "
                           "(the run's own)")


def cmd_analyse(a) -> int:
    """Uncertainty estimates against the true model error along rollouts (latent_combo.analyse)."""
    from latent_combo.analyse import analyse_run, format_analysis

    check_dataset_env(Path(a.run_dir), a.dataset)
    figures = analyse_run(a.run_dir, a.horizon, a.dataset, a.device)
    print(format_analysis(figures))
    print(f"{Path(a.run_dir) / 'uncertainty_vs_error.png'}, {Path(a.run_dir) / 'analysis.json'}")
    return 0


def cmd_eval(a) -> int:
    run_dir = Path(a.run_dir)
    cfg = load_config(run_dir)
    device = pick_device(a.device or cfg.device)
    wm_ckpt, agent_ckpt = load_checkpoint(run_dir / "wm.pt"), load_checkpoint(run_dir / "agent.pt")
    if wm_ckpt is None or agent_ckpt is None:
        raise FileNotFoundError(f"{run_dir}: needs wm.pt and agent.pt (train the run first)")
    from latent_combo.evaluate import evaluate, trained_policy

    results_path = run_dir / "results.json"
    render = cfg.eval_render
    if render == "auto":  # as at training time: recorded in results.json, else the dataset's own
        from latent_combo.data import render_settings

        saved = json.loads(results_path.read_text()) if results_path.exists() else {}
        render = saved.get("eval_render") or render_settings(saved.get("dataset") or dataset_dir(cfg))
    wm, agent = trained_policy(cfg, wm_ckpt, agent_ckpt, device)
    result, _ = evaluate(wm, agent.actor, cfg.env, a.eval_episodes, device, seed=a.seed,
                         max_steps=cfg.eval_max_steps, render_settings=render, progress=True)
    print(json.dumps(result, indent=1))
    return 0


def cmd_estimate(a) -> int:
    from latent_combo.estimate import HORIZON, STARTS, estimate_run, format_estimate

    if a.fqe and a.fqe_updates < 1:
        raise ValueError(f"--fqe-updates: expected a positive number of updates, got {a.fqe_updates}")
    for d in a.run_dirs:
        figures = estimate_run(d, a.horizon or HORIZON, a.starts or STARTS, a.device, a.evaluator,
                               a.fqe_updates if a.fqe else 0)
        print(f"{d}\n{format_estimate(figures)}")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help, unless it has none here (None: the config decides, and the help
    says what) or the help already says it; epilogs (examples) kept as written."""

    def _get_help_string(self, action):
        if action.default in (None, [], argparse.SUPPRESS) or action.default is False or "default" in action.help:
            return action.help
        return super()._get_help_string(action)


TRAIN_EXAMPLES = """examples:
  # COMBO from pixels on walker-walk's medium data (a small set is built if data/ has none)
  latent-combo train --env walker-walk --dataset medium --algo combo --preset cpu
  # a dataset folder (its env comes from its metadata.json) with config overrides key=value
  latent-combo train --dataset data/walker-walk/medium-replay agent.beta=1 agent.steps=20000
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latent-combo", description=__doc__.split("\n\n")[0])
    # Every subcommand's --help shows its defaults.
    sub = p.add_subparsers(dest="command", required=True,
                           parser_class=functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter))

    s = sub.add_parser("collect", help="build an offline pixel dataset (data/ENV/FLAVOUR)")
    s.add_argument("--env", required=True, choices=COLLECT_ENV_IDS)
    s.add_argument("--flavour", required=True, choices=FLAVOURS)
    s.add_argument("--episodes", type=int, default=200)
    s.add_argument("--out", default=None, help="dataset folder (default data/ENV/FLAVOUR)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: the core count)")
    s.add_argument("--force", action="store_true", help="rebuild an existing dataset from scratch")
    s.add_argument("--max-steps", type=int, default=None, help="truncate episodes to N agent steps (tests)")
    s.add_argument("--render", default="fast", choices=RENDER_SETTINGS,
                   help="how frames are rendered: 'fast' (no multisampling, no shadows; our datasets) or 'default' "
                        "(MuJoCo's own settings, as V-D4RL's frames); recorded in metadata.json")
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser("info", help="episodes, transitions, Batch Mean / Max of returns, success rate")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("verify", help="check every episode file against metadata.json checksums (without a "
                                      "manifest: each file's structure)")
    s.add_argument("dir")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("manifest", help="write metadata.json (checksums, returns) for a folder without one")
    s.add_argument("dir")
    s.add_argument("--env", choices=ENV_IDS, help="the env the episodes come from (recorded; sets success stats)")
    s.add_argument("--render", default="default", choices=RENDER_SETTINGS,
                   help="how the frames were rendered (default: MuJoCo's defaults, as V-D4RL's were)")
    s.add_argument("--source", default=None, help="where the files came from (recorded)")
    s.add_argument("--force", action="store_true", help="overwrite an existing metadata.json")
    s.set_defaults(func=cmd_manifest)

    s = sub.add_parser("export", help="write a dataset folder as a Minari dataset (loaded back and checked)")
    s.add_argument("dir")
    s.add_argument("--minari", required=True, metavar="NAME",
                   help="Minari dataset id, e.g. latent_combo/walker-walk/medium-replay-v0")
    s.add_argument("--lossless", action="store_true", help="store images as they are, not JPEG-encoded")
    s.add_argument("--env", choices=ENV_IDS, help="the env (default: metadata.json's)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("train", help="world model, then COMBO (or a baseline), then evaluation",
                       epilog=TRAIN_EXAMPLES)
    s.add_argument("--env", choices=ENV_IDS, help=f"default: the dataset folder's (its metadata.json \"env\"), "
                                                  f"else {Config.env}")
    s.add_argument("--dataset", help=f"a flavour under data/ENV/ ({', '.join(FLAVOURS)}) or a dataset folder "
                                     f"(default: {Config.dataset})")
    s.add_argument("--algo", choices=ALGOS, help=f"default: {Config.algo}")
    s.add_argument("--preset", default="cpu", choices=PRESETS, help="configs/PRESET.yaml")
    s.add_argument("--obs", choices=("image", "state"), help=f"default: {Config.obs}")
    s.add_argument("--seed", type=int, help=f"default: {Config.seed}")
    s.add_argument("--logdir", help=f"run folders go to LOGDIR/ENV/DATASET/ (default: {Config.logdir})")
    s.add_argument("--device", help=f"auto (CUDA when present), cpu, cuda (default: {Config.device})")
    s.add_argument("--world-model", help="reuse the trained world model of this run folder")
    s.add_argument("--fresh", action="store_true", help="delete this run's folder and start over")
    s.add_argument("--world-model-only", action="store_true",
                   help="stop after the world model and its probe (no agent, no evaluation)")
    s.add_argument("--resume", action="store_true", help="(default behaviour) continue from checkpoints")
    s.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. agent.beta=0.5 wm.steps=100")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="algorithms x seeds x an agent grid as Ray Tune trials, then one table")
    from latent_combo.sweep import add_arguments

    add_arguments(s)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("probe", help="does the world model see? state R², open-loop R², reward error, "
                                     "posterior-vs-prior separability")
    s.add_argument("run_dir")
    s.add_argument("--dataset", help="dataset folder (default: the run's own)")
    s.add_argument("--device")
    s.add_argument("--fresh", action="store_true", help="recompute even if probe.json is current")
    s.add_argument("--mlp", action="store_true", help="also an MLP's state R² (nonlinear; about a minute more)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("analyse", help="uncertainty estimates (LOMPO's, Max Var) against the true model error "
                                       "along rollouts with the dataset's actions; a scatter plot and R²")
    s.add_argument("run_dir")
    s.add_argument("--horizon", type=int, help="rollout steps (default: the run's agent.rollout_length)")
    s.add_argument("--dataset", help="dataset folder (default: the run's own)")
    s.add_argument("--device")
    s.set_defaults(func=cmd_analyse)

    s = sub.add_parser("eval", help="evaluate a trained run in the simulator")
    s.add_argument("run_dir")
    s.add_argument("--eval-episodes", type=int, default=10)
    s.add_argument("--seed", type=int, default=2_000_000)
    s.add_argument("--device")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("select", help="offline hyperparameter pick among finished runs, never by a return")
    s.add_argument("run_dirs", nargs="+", help="run folders (or folders above them, for --by model-return)")
    s.add_argument("--by", default="regulariser", choices=tuple(RULES),
                   help="regulariser: the paper's lowest final regulariser, among runs differing only in beta, f "
                        "and the seed; model-return: the highest return the run's world model predicts for its "
                        "policy (latent-combo estimate); -pessimistic: the heads' mean less their spread; "
                        "cross-model-return: the same in another seed's world model (estimate --evaluator); "
                        "fqe-return: fitted Q evaluation on the real transitions (estimate --fqe)")
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("estimate", help="the policy's return predicted by its own world model (model-based "
                                        "off-policy evaluation); written to RUN_DIR/estimate.json")
    s.add_argument("run_dirs", nargs="+")
    s.add_argument("--horizon", type=int, help="rollout steps from each start state (default: 100, the discount's "
                                               "effective horizon 1 / (1 - gamma))")
    s.add_argument("--starts", type=int, help="dataset states the rollouts start from (default: 512)")
    s.add_argument("--evaluator", metavar="RUN_DIR",
                   help="also roll the policy out in this run's world model (another seed's, on the same dataset), "
                        "which the policy never trained against: the cross_return figures")
    # A flag and a separate count: an optional count after --fqe would swallow the run folder that follows it.
    s.add_argument("--fqe", action="store_true",
                   help="also fitted Q evaluation: a critic of the fixed policy fitted on the dataset's real latent "
                        "transitions (about 30 s a run here), the fqe_return figures")
    s.add_argument("--fqe-updates", type=int, default=6000, metavar="N", help="FQE's updates (default: 6000)")
    s.add_argument("--device")
    s.set_defaults(func=cmd_estimate)

    s = sub.add_parser("rank", help="how well each offline rule ranks finished runs: Spearman against the "
                                    "evaluated scores and the regret of its pick (tuning seeds only)")
    s.add_argument("run_dirs", nargs="+", help="run folders or folders above them (e.g. a sweep's logdir)")
    s.add_argument("--json", help="also write the table and figures to this file")
    s.set_defaults(func=cmd_rank)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Dataset repairs read as one line from the command, not as a Python source location."""
    from latent_combo.data import DatasetWarning

    if issubclass(category, DatasetWarning):
        print(f"latent-combo: warning: {message}", file=sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


_SHOW_WARNING = warnings.showwarning


def main(argv=None) -> int:
    from latent_combo.data import DatasetError

    warnings.showwarning = _show_warning
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"latent-combo {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
