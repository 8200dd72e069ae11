"""Evaluation in the real simulator: filter observations with the RSSM posterior, act with the actor."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from latent_combo.envs import SUCCESS_ENVS, make_env

# Two-sided 95% Student-t critical values by degrees of freedom; small eval counts need them.
_T95 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13, 2.12,
        2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04]


def ci95(values) -> float:
    """Half-width of the 95% confidence interval of the mean (0 for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    t = _T95[len(x) - 2] if len(x) - 1 <= len(_T95) else 1.96
    return float(t * x.std(ddof=1) / math.sqrt(len(x)))


def trained_policy(cfg, wm_ckpt: dict, agent_ckpt: dict | None, device):
    """A run's world model and agent (None without `agent_ckpt`) rebuilt from its checkpoints: sizes come from the
    env, the state normaliser and any input statistics from the checkpoints' buffers, so the dataset is not needed."""
    from latent_combo.agent import Agent
    from latent_combo.world_model import WorldModel

    env = make_env(cfg.env, render=False)
    wm = WorldModel(cfg.wm, cfg.obs, env.action_dim, env.state_dim, np.zeros(env.state_dim),
                    np.ones(env.state_dim)).to(device)
    wm.load_state_dict(wm_ckpt["model"])
    agent = None
    if agent_ckpt is not None:
        agent = Agent(cfg.agent, cfg.algo, wm.rssm.feat_dim, env.action_dim).to(device)
        agent.load_state_dict(agent_ckpt["agent"])
    env.close()
    return wm, agent


@torch.no_grad()
def run_episode(env, wm, actor, device, seed: int, record: bool = False):
    """One episode with the deterministic (mean) action. Returns return, success, frames (if record)."""
    obs, _ = env.reset(seed=seed)
    state = wm.rssm.initial(1, device)
    action = torch.zeros(1, 1, env.action_dim, device=device)
    is_first = torch.ones(1, 1, dtype=torch.bool, device=device)
    ret, success, frames, done = 0.0, False, [], False
    while not done:
        if record:
            frames.append(obs["image"])
        batch = {k: torch.as_tensor(v, device=device)[None, None] for k, v in obs.items()}
        post = wm.rssm.observe(wm.embed(wm.target(batch)), action, is_first, state)
        state = {"h": post["h"][:, -1], "z": post["z"][:, -1]}
        a, _ = actor.sample(post["feat"][:, -1], deterministic=True)
        obs, reward, term, trunc, info = env.step(a[0].cpu().numpy())
        ret += reward
        success |= bool(info.get("success", False))
        action, is_first, done = a[:, None], torch.zeros_like(is_first), term or trunc
    return ret, success, frames


def evaluate(wm, actor, env_id: str, episodes: int, device, seed: int = 0, record: bool = False,
             max_steps: int = 0, render_settings: str = "fast", progress: bool = False) -> dict:
    """Mean return, dm_control normalised score (return / 10, V-D4RL's convention), success rate, with
    95% intervals; `frames` of the first episode when `record`. Frames are rendered with `render_settings`
    (envs.RENDER_SETTINGS): the ones the dataset's frames were made with. `progress`: a bar over the episodes,
    for evaluations that stand alone (the final one, `latent-combo eval`: 20 pixel episodes take minutes on a
    CPU); off for the periodic ones, which would break into the agent's bar."""
    render = wm.obs == "image" or record
    env = make_env(env_id, render=render, render_settings=render_settings)
    if max_steps:
        env.max_steps = min(env.max_steps, max_steps)
    returns, successes, frames = [], [], None
    # Evaluation draws posterior samples; a forked RNG keeps training's random stream untouched, so
    # a resumed run matches an uninterrupted one whatever was evaluated in between.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for ep in tqdm(range(episodes), desc=f"evaluation ({env_id})", unit="episode", disable=not progress):
            ret, success, fr = run_episode(env, wm, actor, device, seed=seed + ep, record=record and ep == 0)
            returns.append(ret)
            successes.append(float(success))
            frames = fr if fr else frames
    env.close()
    out = {"eval_return_mean": float(np.mean(returns)), "eval_return_ci95": ci95(returns),
           "eval_returns": [float(r) for r in returns], "eval_episodes": episodes}
    if env_id in SUCCESS_ENVS:
        out.update(eval_success_rate=float(np.mean(successes)), eval_success_ci95=ci95(successes))
    else:
        out.update(eval_normalized_score=out["eval_return_mean"] / 10,
                   eval_normalized_score_ci95=out["eval_return_ci95"] / 10)
    return out, frames
