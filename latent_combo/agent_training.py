"""Agent stage: COMBO (or a baseline) on latent transitions and model rollouts, with periodic evaluation."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import torch
from tqdm import tqdm

from latent_combo import report
from latent_combo.agent import Agent
from latent_combo.config import Config, model_buffer_capacity, to_dict
from latent_combo.evaluate import evaluate
from latent_combo.latent import TransitionBuffer, encode_dataset, rollout
from latent_combo.runs import load_checkpoint, save_checkpoint
from latent_combo.utils import FiniteCheck, rng_state, seed_everything, set_rng_state, synced


def real_transitions(cfg: Config, wm, dataset, run_dir: Path, device) -> dict:
    """Encode the dataset once per world model; cached in latents.pt next to the checkpoint."""
    path = run_dir / "latents.pt"
    cached = load_checkpoint(path)
    wm_step = load_checkpoint(run_dir / "wm.pt")["step"]
    if cached is not None and cached["wm_step"] == wm_step:
        return cached["transitions"]
    seed_everything(cfg.seed + 1)  # posterior samples of the encoding depend only on the seed
    t0 = time.time()
    transitions = encode_dataset(wm, dataset, device)
    print(f"encoded {len(transitions['reward'])} real latent transitions in {time.time() - t0:.0f}s")
    save_checkpoint({"wm_step": wm_step, "transitions": transitions}, path)
    return transitions


def train_agent(cfg: Config, wm, transitions: dict, run_dir: Path, writer, device,
                steps: int | None = None, on_log=None, render: str = "fast") -> Agent:
    """Agent updates with rollout refreshes, logging, evaluation and checkpoints; resumes from agent.pt.
    `on_log(step, metrics)`, if given, sees the float metrics of every log step and evaluation (a sweep
    passes them on to Ray Tune). Evaluations render with the `render` settings (envs.RENDER_SETTINGS)."""
    c = cfg.agent
    wm.requires_grad_(False)
    feat_dim, action_dim = transitions["state"].shape[1], transitions["action"].shape[1]
    seed_everything(cfg.seed + 2)  # initial weights and the random stream depend on the seed alone
    agent = Agent(c, cfg.algo, feat_dim, action_dim).to(device)
    real = TransitionBuffer.from_transitions(transitions, device)
    agent.fit_standardiser(real.data["state"])
    model_buf = (TransitionBuffer(model_buffer_capacity(c), feat_dim, action_dim, device) if agent.uses_rollouts
                 else None)
    ckpt, start, history, metrics = load_checkpoint(run_dir / "agent.pt"), 0, [], {}
    wall_before = 0.0  # seconds of this stage that earlier, interrupted invocations saved in agent.pt
    q_trace = []  # (step, Q on dataset pairs) at every log step: has Q levelled off? (q_data_rise)
    # The selection rule reads the regulariser averaged over the last tenth of training: one update's
    # value is too noisy to rank runs by.
    reg_tail = deque(maxlen=max(1, c.steps // 10))
    if ckpt is not None:
        agent.load_state_dict(ckpt["agent"])
        for name, opt in agent.optimisers().items():
            opt.load_state_dict(ckpt[name])
        if model_buf is not None and "model_buffer" in ckpt:
            model_buf.load_state_dict(ckpt["model_buffer"])
        set_rng_state(ckpt["rng"])
        start, history, q_trace = ckpt["step"], ckpt["history"], ckpt.get("q_trace", [])
        wall_before = ckpt.get("wall_s", 0.0)
        metrics = ckpt.get("last_metrics", {})
        reg_tail.extend(torch.tensor(v, device=device) for v in ckpt.get("regulariser_tail", []))
        if start < c.steps:
            print(f"agent: resuming at step {start}")
    stop = min(steps or c.steps, c.steps)
    if model_buf is not None and ckpt is not None and "model_buffer" not in ckpt and start < stop:
        refill_model_buffer(wm, agent.actor, real, model_buf, c, cfg.algo, device, start)

    def save(step):
        tail = torch.stack(list(reg_tail)).tolist() if reg_tail else []
        state = {"agent": agent.state_dict(), "step": step, "rng": rng_state(), "history": history,
                 "last_metrics": synced(metrics), "regulariser_tail": tail, "config": to_dict(cfg), "q_trace": q_trace,
                 "wall_s": wall_before + time.time() - t0,
                 **{k: o.state_dict() for k, o in agent.optimisers().items()}}
        if model_buf is not None and c.save_model_buffer:
            state["model_buffer"] = model_buf.state_dict()
        save_checkpoint(state, run_dir / "agent.pt")

    data_reward = real.data["reward"][:real.size].mean().item()  # what rollout rewards are compared with
    n_real = c.batch if not agent.uses_rollouts else int(round(c.batch * agent.real_ratio))
    lompo_lambda = c.lompo_lambda if cfg.algo == "lompo" else 0.0
    bar = tqdm(range(start + 1, stop + 1), desc=f"agent ({cfg.algo})", initial=start, total=stop, mininterval=2)
    finite = FiniteCheck(f"agent ({cfg.algo})", every_step=device.type == "cpu")
    t0 = time.time()
    for step in bar:
        if agent.uses_rollouts and (step - 1) % c.rollout_every == 0:
            starts = real.sample(c.rollout_batch)["state"]
            batch, rollout_metrics = rollout(wm, agent.actor, starts, c.rollout_length, lompo_lambda)
            model_buf.add(batch, step - 1)
        real_batch = real.sample(n_real)
        model_batch = model_buf.sample(c.batch - n_real) if agent.uses_rollouts else None
        metrics = agent.update(real_batch, model_batch, bc_actor=step <= c.bc_warmup)
        finite.add(metrics, step)
        if "regulariser" in metrics:
            reg_tail.append(metrics["regulariser"])
        if step % c.log_every == 0 or step == stop or step % c.checkpoint_every == 0:
            finite.check(step)  # before any save: a non-finite step is never checkpointed
        if step % c.log_every == 0 or step == stop:
            if reg_tail:
                metrics["regulariser_tail_mean"] = torch.stack(list(reg_tail)).double().mean()
            metrics = synced(metrics)
            q_data = log_agent_metrics(writer, metrics, agent, real_batch, model_batch, step)
            if q_data is not None:
                q_trace.append((step, q_data))
            if agent.uses_rollouts:  # the latest refresh's, logged in step with the other tags
                excess = rollout_metrics["rollout/reward"] - data_reward
                report.log_scalars(writer, {**rollout_metrics, "rollout/reward_minus_data": excess,
                                            "rollout/buffer_age": model_buf.mean_age(step)}, step)
            if on_log is not None:
                on_log(step, {k: v for k, v in metrics.items() if isinstance(v, float)})
            metrics["updates_per_s"] = (step - start) / (time.time() - t0)
            report.scalar(writer, "speed/agent_updates_per_s", metrics["updates_per_s"], step)
            bar.set_postfix({k: f"{metrics[k]:.2f}" for k in ("q_mean", "regulariser", "bc_mse", "bc_nll")
                             if k in metrics})
        if step % c.eval_every == 0 and step < c.steps:
            # Frames come free from pixel evaluation; state-mode runs skip rendering altogether.
            result, frames = evaluate(wm, agent.actor, cfg.env, c.eval_episodes, device, seed=10_000 + step,
                                      record=cfg.obs == "image", max_steps=cfg.eval_max_steps,
                                      render_settings=render)
            log_eval(writer, result, frames, step)
            if on_log is not None:
                on_log(step, {k: v for k, v in result.items() if isinstance(v, float)})
            history.append({"step": step, **{k: v for k, v in result.items() if k != "eval_returns"},
                            "regulariser": synced(metrics).get("regulariser")})
        if step % c.checkpoint_every == 0 or step == stop:
            save(step)
    agent.history, agent.q_trace = history, q_trace
    agent.wall_before = wall_before
    agent.last_metrics = metrics
    return agent


def refill_model_buffer(wm, actor, real, model_buf, c, algo: str, device, step: int) -> None:
    """A checkpoint saved without its model buffer (`agent.save_model_buffer=false`): refill the buffer with
    rollouts of the resumed policy, on a forked RNG so that training's own random stream is the saved one.
    The resumed run then differs from an uninterrupted one, whose buffer also held older policies' rollouts."""
    lompo_lambda = c.lompo_lambda if algo == "lompo" else 0.0
    refreshes = -(-model_buf.capacity // (c.rollout_batch * c.rollout_length))
    print(f"agent: refilling the model buffer ({refreshes} rollout refreshes of the resumed policy)")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(refreshes):
            batch, _ = rollout(wm, actor, real.sample(c.rollout_batch)["state"], c.rollout_length, lompo_lambda)
            model_buf.add(batch, step)


# Metric keys of the agent's update whose TensorBoard name says more under another name (report.py).
TAG_NAMES = {"q_mean": "q_batch"}


def log_agent_metrics(writer, metrics, agent, real_batch, model_batch, step) -> float | None:
    """The update's metrics under agent/, plus Q on this step's dataset and rollout pairs, Q on the data and the
    regulariser's tail mean also under report.RESULT; returns Q on the dataset pairs (None for BC, which has no
    critic)."""
    report.log_scalars(writer, {f"agent/{TAG_NAMES.get(k, k)}": v for k, v in metrics.items()
                                if k != "updates_per_s"}, step)
    with torch.no_grad():
        # How far the policy has left the data, in action space: the signature of a policy that exploits the
        # critic or the model (measured on pixel walker: COMBO at beta 0.1 drifted to 1.7-3.9 with <= 0.1% of its
        # actions saturated, where the data's are 17.6% saturated and BC's stay close).
        a_pi, _ = agent.actor.sample(real_batch["state"], deterministic=True)
        diagnostics = {"agent/policy_action_mse": (a_pi - real_batch["action"]).pow(2).sum(-1).mean(),
                       "agent/policy_saturation": (a_pi.abs() > 0.99).float().mean(),
                       "agent/data_saturation": (real_batch["action"].abs() > 0.99).float().mean()}
        report.log_scalars(writer, {k: v.item() for k, v in diagnostics.items()}, step)
    if agent.algo == "bc":
        return None
    with torch.no_grad():
        q_data = metrics.get("q_data")
        if q_data is None:  # algorithms without a penalty: Q on dataset pairs measured here
            q_data = agent.critic(real_batch["state"], real_batch["action"]).mean().item()
            report.scalar(writer, "agent/q_data", q_data, step)
        if model_batch is not None:
            report.scalar(writer, "agent/q_model", agent.critic(model_batch["state"], model_batch["action"]).mean(),
                          step)
    report.log_scalars(writer, {f"{report.RESULT}/q_data": float(q_data),
                                f"{report.RESULT}/regulariser": metrics.get("regulariser_tail_mean")}, step)
    return float(q_data)


def relative_rise(trace: list, total_steps: int) -> float | None:
    """How much Q on the data still rose over the last fifth of training: the mean over the last tenth of
    the steps minus the mean over the tenth before the last fifth ((0.7, 0.8]), over the former's magnitude.
    A soft target network lags the critic by 1 / (tau * (1 - gamma)) updates (20k at tau 0.005, gamma 0.99),
    so a short run stops with Q still climbing; near 0 means Q has levelled off. None without enough points."""
    late = [q for s, q in trace if s > 0.9 * total_steps]
    before = [q for s, q in trace if 0.7 * total_steps < s <= 0.8 * total_steps]
    if not late or not before:
        return None
    late_mean = sum(late) / len(late)
    return (late_mean - sum(before) / len(before)) / max(abs(late_mean), 1e-8)


def log_eval(writer, result: dict, frames, step: int, final: bool = False) -> None:
    """An evaluation on the eval/ curves and its score on report.RESULT's, with its first episode's frames; the final
    one at the last step of the same curves (and as eval/final_*, report.eval_scalars)."""
    report.log_scalars(writer, report.eval_scalars(result, final), step)
    if frames:
        writer.add_image("eval/episode_frames", report.frame_grid(frames), step, dataformats="HWC")
