"""The end-to-end job behind `latent-combo train`, plus `eval` and the offline `select` rule."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from latent_combo.agent_training import log_eval, real_transitions, train_agent
from latent_combo.config import ALGOS, PRESETS, from_dict, parse_overrides, resolve, to_dict
from latent_combo.data import OfflineDataset
from latent_combo.envs import ENV_IDS, SUCCESS_ENVS
from latent_combo.evaluate import evaluate
from latent_combo.train import (
    build_world_model,
    dataset_dir,
    load_checkpoint,
    run_dir_for,
    save_config,
    train_world_model,
)
from latent_combo.utils import atomic_write_text, flatten, pick_device, seed_everything


def run(cfg, world_model_from: str | None = None, fresh: bool = False) -> dict:
    """World model -> latent transitions -> agent -> final evaluation; writes results.json."""
    from torch.utils.tensorboard import SummaryWriter

    t0 = time.time()
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data_path = dataset_dir(cfg)
    run_dir = run_dir_for(cfg, data_path)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    print(f"run folder {run_dir}  (device {device}, dataset {data_path})")
    dataset = OfflineDataset(data_path)
    writer = SummaryWriter(str(run_dir))
    if not (run_dir / "wm.pt").exists():
        writer.add_text("hyperparameters", "\n".join(f"    {line}" for line in
                                                      yaml.safe_dump(to_dict(cfg)).splitlines()))
    seed_everything(cfg.seed)  # initial weights depend on the seed alone
    wm = build_world_model(cfg, dataset, device)
    if world_model_from:
        src = Path(world_model_from) / "wm.pt"
        if not src.exists():
            raise FileNotFoundError(f"--world-model {world_model_from}: no wm.pt in that run folder")
        if not (run_dir / "wm.pt").exists():
            shutil.copy(src, run_dir / "wm.pt")
    train_world_model(cfg, wm, dataset, run_dir, writer, device)
    transitions = real_transitions(cfg, wm, dataset, run_dir, device)
    dataset_stats = dataset.stats()
    del dataset  # images are no longer needed; the agent works on latents
    agent = train_agent(cfg, wm, transitions, run_dir, writer, device)
    result, frames = evaluate(wm, agent.actor, cfg.env, cfg.final_eval_episodes, device, seed=1_000_000,
                              record=cfg.obs == "image", max_steps=cfg.eval_max_steps)
    log_eval(writer, result, frames, cfg.agent.steps)
    if frames:
        import imageio.v2 as imageio

        imageio.mimsave(run_dir / "final_eval.gif", frames[::2], duration=0.05)
    writer.close()
    results = {"env": cfg.env, "dataset": str(data_path), "algo": cfg.algo, "obs": cfg.obs, "seed": cfg.seed,
               "preset": cfg.preset, **result,
               # Averaged over the last tenth of the updates (see agent_training.train_agent).
               "final_regulariser": agent.last_metrics.get("regulariser_tail_mean"),
               "final_q_mean": agent.last_metrics.get("q_mean"),
               "dataset_stats": dataset_stats,
               "history": agent.history, "wall_time_s": time.time() - t0, "device": str(device),
               "run_dir": str(run_dir)}
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    return results


def results_table(rows: list[dict]) -> str:
    head = f"{'env':<12} {'dataset':<20} {'algo':<6} {'obs':<5} {'seed':>4} {'return':>16} {'score/success':>15} " \
           f"{'regulariser':>11} {'wall':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["env"] in SUCCESS_ENVS:
            score = f"{r['eval_success_rate']:.0%} ±{r['eval_success_ci95']:.0%}"
        else:
            score = f"{r['eval_normalized_score']:.1f} ±{r['eval_normalized_score_ci95']:.1f}"
        reg = r.get("final_regulariser")
        lines.append(f"{r['env']:<12} {Path(r['dataset']).name:<20} {r['algo']:<6} {r['obs']:<5} {r['seed']:>4} "
                     f"{r['eval_return_mean']:>8.1f} ±{r['eval_return_ci95']:<6.1f} {score:>15} "
                     f"{'-' if reg is None else f'{reg:.3f}':>11} {r['wall_time_s']:>6.0f}s")
    return "\n".join(lines)


def cmd_train(a) -> int:
    overrides = parse_overrides(a.overrides)
    for key in ("dataset", "algo", "seed", "logdir", "obs", "device"):
        if getattr(a, key) is not None:
            overrides[key] = getattr(a, key)
    cfg = resolve(a.preset, a.env, overrides)
    results = run(cfg, a.world_model, a.fresh)
    print()
    print(results_table([results]))
    print(f"\nresults: {results['run_dir']}/results.json   tensorboard: make tensorboard")
    return 0


def cmd_eval(a) -> int:
    run_dir = Path(a.run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: not a run folder (no config.yaml)")
    cfg = from_dict(yaml.safe_load(cfg_path.read_text()))
    device = pick_device(a.device or cfg.device)
    wm_ckpt, agent_ckpt = load_checkpoint(run_dir / "wm.pt"), load_checkpoint(run_dir / "agent.pt")
    if wm_ckpt is None or agent_ckpt is None:
        raise FileNotFoundError(f"{run_dir}: needs wm.pt and agent.pt (train the run first)")
    # Sizes come from the env; the state normaliser is restored from the checkpoint's buffers, so the
    # dataset itself is not needed.
    from latent_combo.agent import Agent
    from latent_combo.envs import make_env
    from latent_combo.world_model import WorldModel

    env = make_env(cfg.env, render=False)
    wm = WorldModel(cfg.wm, cfg.obs, env.action_dim, env.state_dim, np.zeros(env.state_dim),
                    np.ones(env.state_dim)).to(device)
    wm.load_state_dict(wm_ckpt["model"])
    agent = Agent(cfg.agent, cfg.algo, wm.rssm.feat_dim, env.action_dim).to(device)
    agent.load_state_dict(agent_ckpt["agent"])
    result, _ = evaluate(wm, agent.actor, cfg.env, a.eval_episodes, device, seed=a.seed,
                         max_steps=cfg.eval_max_steps)
    print(json.dumps(result, indent=1))
    return 0


# Keys that may differ between runs compared by `select`: the swept hyperparameters, the seed, and
# where and how the run was executed.
SELECT_FREE = {("agent", "beta"), ("agent", "real_ratio"), ("seed",), ("logdir",), ("threads",), ("device",)}


def cmd_select(a) -> int:
    """The paper's offline rule: among runs differing only in beta / f, the setting with the lowest final
    regulariser (averaged over its seeds). Reads only `final_regulariser`, never an evaluation return."""
    runs, reference = [], None
    for d in a.run_dirs:
        path, cfg_path = Path(d) / "results.json", Path(d) / "config.yaml"
        if not path.exists() or not cfg_path.exists():
            raise FileNotFoundError(f"{path if not path.exists() else cfg_path}: missing (run not finished)")
        reg = json.loads(path.read_text()).get("final_regulariser")
        if reg is None:
            raise ValueError(f"{path}: no final_regulariser (this algo has no conservative regulariser)")
        cfg = flatten(yaml.safe_load(cfg_path.read_text()))
        fixed = {k: v for k, v in cfg.items() if k not in SELECT_FREE}
        if reference is None:
            reference = (d, fixed)
        elif fixed != reference[1]:
            keys = sorted(".".join(k) for k in set(fixed) | set(reference[1]) if fixed.get(k) != reference[1].get(k))
            raise ValueError(f"{d} and {reference[0]} differ in {keys}: select compares runs that differ "
                             "only in agent.beta, agent.real_ratio and the seed")
        runs.append((cfg[("agent", "beta")], cfg[("agent", "real_ratio")], cfg[("seed",)], reg, d))
    settings = {}
    for beta, f, _, reg, _ in runs:
        settings.setdefault((beta, f), []).append(reg)
    print(f"{'beta':>6} {'f':>5} {'seed':>4} {'regulariser':>12}  run")
    for beta, f, seed, reg, d in sorted(runs):
        print(f"{beta:>6g} {f:>5g} {seed:>4} {reg:>12.4f}  {d}")
    print(f"\n{'beta':>6} {'f':>5} {'runs':>4} {'mean':>12}")
    means = {k: float(np.mean(v)) for k, v in settings.items()}
    for (beta, f), m in sorted(means.items(), key=lambda kv: kv[1]):
        print(f"{beta:>6g} {f:>5g} {len(settings[beta, f]):>4} {m:>12.4f}")
    beta, f = min(means, key=means.get)
    print(f"\npick: agent.beta={beta:g} agent.real_ratio={f:g}")
    return 0


def register_cli(sub) -> None:
    s = sub.add_parser("train", help="world model, then COMBO (or a baseline), then evaluation")
    s.add_argument("--env", default="walker-walk", choices=ENV_IDS)
    s.add_argument("--dataset", help="flavour (medium, medium-replay, medium-expert, expert) or a folder")
    s.add_argument("--algo", choices=ALGOS)
    s.add_argument("--preset", default="cpu", choices=PRESETS)
    s.add_argument("--obs", choices=("image", "state"))
    s.add_argument("--seed", type=int)
    s.add_argument("--logdir")
    s.add_argument("--device", help="auto (default), cpu, cuda")
    s.add_argument("--world-model", help="reuse the trained world model of this run folder")
    s.add_argument("--fresh", action="store_true", help="delete this run's folder and start over")
    s.add_argument("--resume", action="store_true", help="(default behaviour) continue from checkpoints")
    s.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. agent.beta=0.5 wm.steps=100")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="evaluate a trained run in the simulator")
    s.add_argument("run_dir")
    s.add_argument("--eval-episodes", type=int, default=10)
    s.add_argument("--seed", type=int, default=2_000_000)
    s.add_argument("--device")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("select", help="offline hyperparameter pick: the lowest final regulariser")
    s.add_argument("run_dirs", nargs="+")
    s.set_defaults(func=cmd_select)
