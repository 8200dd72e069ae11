"""`latent-combo train` end to end: world model, latent transitions, agent, final evaluation, results.json.

A run folder holds config.yaml, wm.pt, latents.pt, agent.pt, TensorBoard events and results.json.
Rerunning the same command resumes from the last checkpoint of whichever stage was in flight.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from latent_combo import report
from latent_combo.agent_training import log_eval, real_transitions, relative_rise, train_agent
from latent_combo.config import to_dict
from latent_combo.data import METADATA, DatasetError, OfflineDataset, dataset_env, render_settings
from latent_combo.envs import SUCCESS_ENVS, check_rendering
from latent_combo.estimate import estimate, format_estimate
from latent_combo.evaluate import evaluate
from latent_combo.runs import DatasetBuilder, dataset_dir, run_dir_for, save_config
from latent_combo.utils import atomic_write_text, configure_device, pick_device, seed_everything
from latent_combo.world_model_training import build_world_model, probe_world_model, train_world_model


def run(cfg, world_model_from: str | None = None, fresh: bool = False,
        build_dataset: DatasetBuilder | None = None, world_model_only: bool = False, on_log=None) -> dict:
    """World model -> probe -> latent transitions -> agent -> final evaluation; writes results.json. A missing
    dataset is built by `build_dataset` (see runs.dataset_dir). `world_model_only` stops after the probe
    and returns its figures. `on_log(step, metrics)` sees the agent's logged metrics (agent_training)."""
    from torch.utils.tensorboard import SummaryWriter

    t0 = time.time()
    device = pick_device(cfg.device)
    configure_device(device)
    if cfg.obs == "image" and not world_model_only:
        check_rendering()  # now, not at the first evaluation after the whole world-model stage
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data_path = dataset_dir(cfg, build_dataset)
    # The dataset is read and checked before anything is written (or, with --fresh, deleted): a bad or
    # mismatched dataset must not leave a run folder behind.
    found = dataset_env(data_path)
    if found is not None and found != cfg.env:  # another env's actions and states, read under this env's names
        raise DatasetError(f"--env {cfg.env}, but {data_path / METADATA} says \"env\": \"{found}\"; pass "
                           f"--env {found} (train's default is the dataset's env) or a {cfg.env} dataset")
    dataset = OfflineDataset(data_path)
    render = eval_render_settings(cfg, data_path)
    run_dir = run_dir_for(cfg, data_path)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir, world_model_only)
    print(f"run folder {run_dir}  (device {device}, dataset {data_path})")
    writer = SummaryWriter(str(run_dir))
    if not (run_dir / "wm.pt").exists():
        writer.add_text("hyperparameters", "\n".join(f"    {line}" for line in
                                                      yaml.safe_dump(to_dict(cfg)).splitlines()))
        writer.add_custom_scalars(report.custom_layout(cfg.env, cfg.algo))
    seed_everything(cfg.seed)  # initial weights depend on the seed alone
    wm = build_world_model(cfg, dataset, device)
    if world_model_from:
        src = Path(world_model_from) / "wm.pt"
        if not src.exists():
            raise FileNotFoundError(f"--world-model {world_model_from}: no wm.pt in that run folder")
        if not (run_dir / "wm.pt").exists():
            shutil.copy(src, run_dir / "wm.pt")
            if (src.parent / "probe.json").exists():  # the same model's figures: not probed again
                shutil.copy(src.parent / "probe.json", run_dir / "probe.json")
    # Seconds that earlier invocations of this run spent before being interrupted (saved in the checkpoints),
    # so that wall_time_s is the run's, not this invocation's. A world model copied from another run is
    # that run's time, not this one's.
    wall_before = train_world_model(cfg, wm, dataset, run_dir, writer, device)
    if world_model_from:
        wall_before = 0.0
    probe = probe_world_model(cfg, wm, dataset, run_dir, writer, device)
    if world_model_only:
        writer.close()
        return {"run_dir": str(run_dir), "probe": probe, "wall_time_s": wall_before + time.time() - t0}
    transitions = real_transitions(cfg, wm, dataset, run_dir, device)
    dataset_stats = dataset.stats()
    # What the return estimate needs of the dataset: episode lengths and, where stored, the true states.
    lengths = dataset.lengths
    states = [dataset.episode(i)["state"] for i in range(len(dataset))] if "state" in dataset.arrays else None
    del dataset  # images are no longer needed; the agent works on latents
    agent = train_agent(cfg, wm, transitions, run_dir, writer, device, on_log=on_log, render=render)
    wall_before += agent.wall_before
    result, frames = evaluate(wm, agent.actor, cfg.env, cfg.final_eval_episodes, device, seed=1_000_000,
                              record=cfg.obs == "image", max_steps=cfg.eval_max_steps, render_settings=render,
                              progress=True)
    log_eval(writer, result, frames, cfg.agent.steps, final=True)
    chart = report.result_chart(agent.history, result, cfg.agent.steps, reference_points(cfg.env, dataset_stats,
                                                                                          run_dir))
    writer.add_figure(f"{report.RESULT}/eval_curve", chart, cfg.agent.steps)
    # The policy's return as its own world model predicts it: an offline figure to select settings by.
    t_estimate = time.time()
    model_estimate = estimate(wm, agent.actor, transitions, lengths, cfg.env, cfg.agent.gamma, device, states=states)
    print(f"the policy's return in its world model ({time.time() - t_estimate:.0f}s):\n"
          + format_estimate(model_estimate))
    report.log_scalars(writer, {f"estimate/{k}": model_estimate[k] for k in ESTIMATE_TAGS if k in model_estimate},
                       cfg.agent.steps)
    log_run_hparams(writer, cfg, data_path, result, agent.last_metrics.get("regulariser_tail_mean"), probe,
                    model_estimate["model_return"])
    if frames:
        import imageio.v2 as imageio

        imageio.mimsave(run_dir / "final_eval.gif", frames[::2], duration=0.05)
    writer.close()
    results = {"env": cfg.env, "dataset": str(data_path), "algo": cfg.algo, "obs": cfg.obs, "seed": cfg.seed,
               "preset": cfg.preset, "eval_render": render, **result,
               # Averaged over the last tenth of the updates (see agent_training.train_agent).
               "final_regulariser": agent.last_metrics.get("regulariser_tail_mean"),
               "final_q_mean": agent.last_metrics.get("q_mean"),
               "q_data_rise_last_fifth": relative_rise(agent.q_trace, cfg.agent.steps), "q_data_trace": agent.q_trace,
               "dataset_stats": dataset_stats, "probe": probe, **model_estimate,
               "history": agent.history, "wall_time_s": wall_before + time.time() - t0, "device": str(device),
               "run_dir": str(run_dir)}
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    return results


# The estimate's figures worth a TensorBoard card (results.json keeps them all).
ESTIMATE_TAGS = ("model_return", "model_return_ci95", "model_return_min_head", "model_return_pessimistic",
                 "model_return_probe_read", "model_success")


def eval_render_settings(cfg, data_path) -> str:
    """`cfg.eval_render`, with 'auto' resolved to how the dataset's frames were rendered."""
    return render_settings(data_path) if cfg.eval_render == "auto" else cfg.eval_render


def log_run_hparams(writer, cfg, data_path, result: dict, regulariser, probe: dict, model_return=None) -> None:
    """The run's row in TensorBoard's HParams dashboard: key settings and final metrics."""
    hparams = {"algo": cfg.algo, "obs": cfg.obs, "preset": cfg.preset, "env": cfg.env, "dataset": Path(data_path).name,
               "seed": cfg.seed, "beta": cfg.agent.beta, "f": cfg.agent.real_ratio,
               "rollout_length": cfg.agent.rollout_length, "lompo_lambda": cfg.agent.lompo_lambda,
               "wm_steps": cfg.wm.steps, "agent_steps": cfg.agent.steps}
    key = report.score_key(result)
    metrics = {f"eval/final_{key}": result[f"eval_{key}"], "agent/final_regulariser": regulariser,
               "probe/state_r2": probe.get("state_r2"), "estimate/model_return": model_return}
    report.log_hparams(writer, hparams, metrics, cfg.agent.steps)


# A uniform-random policy's normalised score where one was measured (docs/datasets.md); none for sawyer's success.
RANDOM_SCORES = {"walker-walk": 4.4}


def reference_points(env: str, dataset_stats: dict, run_dir) -> dict[str, float]:
    """What a run's score reads against, in its units (normalised score, or success rate on sawyer): a random
    policy's, the dataset's Batch Mean (its episodes' mean return / 10, or their success rate) and BC's, where a
    finished BC run of the same env, dataset, obs, preset and seed is in the same logdir: the run folder beside
    this one named bc-OBS-PRESET-sSEED (runs.run_dir_for)."""
    success = env in SUCCESS_ENVS
    refs = {}
    if env in RANDOM_SCORES:
        refs["random"] = RANDOM_SCORES[env]
    batch_mean = dataset_stats.get("success_rate") if success else dataset_stats.get("return_mean")
    if batch_mean is not None:
        refs["Batch Mean"] = batch_mean if success else batch_mean / 10
    bc = bc_results(Path(run_dir)) if run_dir else None
    if bc is not None:
        refs["BC"] = bc["eval_success_rate" if success else "eval_normalized_score"]
    return refs


def bc_results(run_dir: Path) -> dict | None:
    """results.json of the finished BC run beside `run_dir`: the folder named as runs.run_dir_for names it, with
    `bc` for the algorithm (no algorithm's name has a '-'), so of the same env, dataset, obs, preset and seed.
    None if it has not finished, or `run_dir` is that run."""
    bc_dir = run_dir.with_name("bc-" + run_dir.name.split("-", 1)[-1])
    path = bc_dir / "results.json"
    if bc_dir == run_dir or not path.exists():
        return None
    bc = json.loads(path.read_text())
    return bc if bc.get("algo") == "bc" else None


def results_table(rows: list[dict]) -> str:
    """One line per run: its evaluation beside the reference points (reference_points; '-' where there is none)."""
    head = f"{'env':<12} {'dataset':<20} {'algo':<6} {'obs':<5} {'seed':>4} {'return':>16} {'score/success':>15} " \
           f"{'random':>7} {'Batch Mean':>10} {'BC':>6} {'regulariser':>11} {'wall':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        success = r["env"] in SUCCESS_ENVS
        if success:
            score = f"{r['eval_success_rate']:.0%} ±{r['eval_success_ci95']:.0%}"
        else:
            score = f"{r['eval_normalized_score']:.1f} ±{r['eval_normalized_score_ci95']:.1f}"
        refs = reference_points(r["env"], r.get("dataset_stats") or {}, r.get("run_dir"))
        ref = {k: "-" if k not in refs else f"{refs[k]:.0%}" if success else f"{refs[k]:.1f}"
               for k in ("random", "Batch Mean", "BC")}
        reg = r.get("final_regulariser")
        lines.append(f"{r['env']:<12} {Path(r['dataset']).name:<20} {r['algo']:<6} {r['obs']:<5} {r['seed']:>4} "
                     f"{r['eval_return_mean']:>8.1f} ±{r['eval_return_ci95']:<6.1f} {score:>15} "
                     f"{ref['random']:>7} {ref['Batch Mean']:>10} {ref['BC']:>6} "
                     f"{'-' if reg is None else f'{reg:.3f}':>11} {r['wall_time_s']:>6.0f}s")
    return "\n".join(lines)
