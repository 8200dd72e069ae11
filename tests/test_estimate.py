"""latent_combo.estimate (the policy's return in its world model) and latent_combo.ranking (rules and their ranks)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from latent_combo import estimate as est
from latent_combo import ranking
from latent_combo.config import resolve, to_dict

GAMMA, H, EPISODE = 0.99, 20, 500


class ToyRSSM:
    """x' = x + a + drift[k]: head k drifts by its own amount; the feature is x itself."""

    def __init__(self, drift):
        self.drift, self.ensemble = torch.tensor(drift), len(drift)

    def split(self, feat):
        return {"x": feat}

    def imagine(self, start, horizon, policy, head):
        x, feats, acts = start["x"], [], []
        for _ in range(horizon):
            a = policy(x)
            x = x + a + self.drift[head].unsqueeze(-1)
            feats.append(x)
            acts.append(a)
        return torch.stack(feats, 1), torch.stack(acts, 1)


class ToyActor:
    def __init__(self, step):
        self.step = step

    def sample(self, feat, deterministic=False):
        assert deterministic  # the estimate is of the policy as evaluated
        return torch.full_like(feat, self.step), None


def toy_model(drift=(0.0, 0.02)):
    return SimpleNamespace(rssm=ToyRSSM(list(drift)), reward=lambda feat: feat)  # reward = x


def analytic(x0, step, drift):
    """sum_t gamma^t r_t with r_t = x0 + (t + 1)(step + drift), as the score: weighted mean reward x 500 / 10."""
    t = np.arange(H)
    w = GAMMA ** t
    return (w * (x0 + (t + 1) * (step + drift))).sum() / w.sum() * EPISODE / 10


def test_estimate_equals_the_analytic_return_on_a_toy_model():
    lengths = np.array([11, 21, 31])
    states = torch.arange(60, dtype=torch.float32).unsqueeze(-1) / 60  # (transitions, 1)
    out = est.estimate(toy_model(), ToyActor(0.1), {"state": states}, lengths, "walker-walk", GAMMA,
                       torch.device("cpu"), horizon=H, n=8)
    x0 = states[torch.as_tensor(est.start_indices(lengths, 8))].squeeze(-1).numpy()
    per_head = np.array([[analytic(x, 0.1, d) for x in x0] for d in (0.0, 0.02)])
    assert out["model_return"] == pytest.approx(per_head.mean(), rel=1e-5)
    assert out["model_return_heads"] == pytest.approx(per_head.mean(1).tolist(), rel=1e-5)
    assert out["model_return_min_head"] == pytest.approx(per_head.mean(1).min(), rel=1e-5)
    assert out["model_return_pessimistic"] == pytest.approx(per_head.mean(1).mean() - per_head.mean(1).std(), rel=1e-5)
    assert out["horizon"] == H and out["starts"] == 8 and out["heads"] == 2


def test_a_policy_better_in_the_model_ranks_higher():
    lengths, states = np.array([50, 50]), torch.zeros(98, 1)
    run = lambda step: est.estimate(toy_model(), ToyActor(step), {"state": states}, lengths, "walker-walk", GAMMA,
                                    torch.device("cpu"), horizon=H, n=16)["model_return"]
    assert run(0.1) > run(0.0) > run(-0.1)


def test_start_states_are_fixed_and_half_are_episode_starts():
    lengths = np.array([5, 8, 4, 10])  # transitions 4, 7, 3, 9 -> starts at 0, 4, 11, 14
    a, b = est.start_indices(lengths, 8), est.start_indices(lengths, 8)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 8
    assert set(a[:4].tolist()) == {0, 4, 11, 14} and a.max() < 23


def test_walker_reward_from_the_state_is_the_task_reward():
    """Reading the 24-d observation back into the physics gives dm_control's own reward (one action repeat)."""
    from dm_control import suite

    env = suite.load("walker", "walk", task_kwargs={"random": 0})
    env.reset()
    rng, states, rewards = np.random.default_rng(0), [], []
    for _ in range(60):
        ts = env.step(rng.uniform(-1, 1, 6))
        o = ts.observation
        states.append(np.concatenate([o["orientations"], [o["height"]], o["velocity"]]))
        rewards.append(ts.reward)
    assert np.allclose(est.walker_reward(np.array(states), action_repeat=1), rewards, atol=1e-9)


def write_run(root, name, model_return, score, regulariser=None, seed=0, **setting):
    d = root / name
    d.mkdir()
    cfg = resolve("debug", overrides={"seed": seed, **setting})
    (d / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    (d / "results.json").write_text(json.dumps({
        "model_return": model_return, "model_return_pessimistic": model_return - 1, "final_regulariser": regulariser,
        "eval_normalized_score": score, "algo": cfg.algo, "dataset_stats": {"reward_min": 0.0}}))
    return d


def test_rank_reads_spearman_and_regret_of_each_rule(tmp_path, capsys):
    # Four beta settings, two seeds for one: the estimate ranks them as the scores do; the regulariser backwards.
    for name, mr, score, reg, beta, seed in [("a", 10, 20, 0.9, 0.5, 0), ("b", 20, 30, 0.5, 1.0, 0),
                                             ("b1", 22, 34, 0.3, 1.0, 1), ("c", 30, 40, 0.2, 2.0, 0),
                                             ("d", 5, 10, -0.5, 5.0, 0)]:
        write_run(tmp_path, name, mr, score, reg, seed, **{"agent.beta": beta})
    table = ranking.settings([ranking.run_row(d) for d in ranking.finished_runs([tmp_path])])
    assert len(table) == 4 and {t["seeds"] for t in table} == {1, 2}
    figures = ranking.validate(table)
    assert figures["model-return"]["spearman"] == pytest.approx(1.0)
    assert figures["model-return"]["regret"] == 0 and figures["model-return"]["pick"] == "combo,agent.beta=2.0"
    assert figures["regulariser"]["spearman"] == pytest.approx(-0.2)  # -reg ranks d first, though it scores least
    assert figures["regulariser"]["pick"] == "combo,agent.beta=5.0" and figures["regulariser"]["regret"] == 30
    assert figures["regulariser"]["regret_share"] == pytest.approx(1.0)
    from latent_combo.cli import main as cli

    assert cli(["rank", str(tmp_path), "--json", str(tmp_path / "rank.json")]) == 0
    out = capsys.readouterr().out
    assert "model-return" in out and "regulariser" in out and (tmp_path / "rank.json").exists()
    assert cli(["select", "--by", "model-return", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("pick by model-return: combo,agent.beta=2.0  (model_return 30)")


def test_a_run_without_a_world_model_says_so_in_one_line(tmp_path, capsys):
    from latent_combo.cli import main as cli

    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(to_dict(resolve("debug"))))
    assert cli(["estimate", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no world model" in err and "wm.pt" in err


class ToyFilter:
    """The policy's own model seen through the cross rollouts: its posterior is the observed frame itself."""

    def split(self, feat):
        return {"h": feat, "z": feat[..., :0]}

    def observe(self, embed, action, is_first, state):
        assert not is_first.any() and embed.shape[1] == action.shape[1] == 1
        return {"h": embed, "z": embed[..., :0]}


class ToyImagination(ToyRSSM):
    """The evaluator's prior, step by step: x' = x + a + drift[head], one head per row."""

    def split(self, feat):
        return {"h": feat, "z": feat[..., :0]}

    def img_step(self, state, action, head):
        return {"h": state["h"] + action + self.drift[head].unsqueeze(-1), "z": state["z"]}


def test_cross_estimate_equals_the_analytic_return_in_the_evaluator():
    lengths = np.array([11, 21, 31])
    states = torch.arange(60, dtype=torch.float32).unsqueeze(-1) / 60
    policy_model = SimpleNamespace(rssm=ToyFilter(), embed=lambda frame: frame, obs="image")
    drift = (0.0, 0.02, -0.01)
    evaluator = SimpleNamespace(rssm=ToyImagination(list(drift)), reward=lambda feat: feat, decode=lambda f: f,
                                obs="image")
    out = est.cross_estimate(policy_model, ToyActor(0.1), {"state": states, "reward": states[:, 0]}, evaluator,
                             {"state": states, "reward": states[:, 0]}, lengths, "walker-walk", GAMMA,
                             torch.device("cpu"), horizon=H, n=8)
    x0 = states[torch.as_tensor(est.start_indices(lengths, 8))].squeeze(-1).numpy()
    per_start = np.array([analytic(x, 0.1, drift[i % 3]) for i, x in enumerate(x0)])  # start i: head i mod K
    assert out["cross_return"] == pytest.approx(per_start.mean(), rel=1e-5)
    heads = [per_start[h::3].mean() for h in range(3)]
    assert out["cross_return_heads"] == pytest.approx(heads, rel=1e-5)
    assert out["cross_return_min_head"] == pytest.approx(min(heads), rel=1e-5)
    with pytest.raises(ValueError, match="same dataset"):
        est.cross_estimate(policy_model, ToyActor(0.1), {"state": states, "reward": states[:, 0]}, evaluator,
                           {"state": states[:50], "reward": states[:50, 0]}, lengths, "walker-walk", GAMMA,
                           torch.device("cpu"), horizon=H, n=8)


def test_states_decoded_by_the_evaluator_reach_the_policy_in_its_own_units():
    source = SimpleNamespace(obs="state", state_mean=torch.tensor([1.0]), state_std=torch.tensor([2.0]))
    dest = SimpleNamespace(obs="state", state_mean=torch.tensor([0.0]), state_std=torch.tensor([4.0]))
    raw = torch.tensor([[5.0]])  # normalised by source: (5 - 1) / 2 = 2; by dest: 5 / 4
    assert est.to_target_space(torch.tensor([[2.0]]), source, dest).item() == pytest.approx(raw.item() / 4)


def test_rank_reads_the_cross_model_and_fqe_figures_from_estimate_json(tmp_path):
    for name, mr, cross, fqe, score in [("a", 30, 10, 5, 10), ("b", 20, 20, 25, 20), ("c", 10, 30, 15, 30)]:
        d = write_run(tmp_path, name, mr, score, **{"agent.beta": {"a": 1.0, "b": 2.0, "c": 5.0}[name]})
        (d / "estimate.json").write_text(json.dumps({"model_return": mr, "cross_return": cross, "fqe_return": fqe}))
    figures = ranking.validate(ranking.settings([ranking.run_row(d) for d in ranking.finished_runs([tmp_path])]))
    assert figures["cross-model-return"]["spearman"] == pytest.approx(1.0)
    assert figures["model-return"]["spearman"] == pytest.approx(-1.0)
    assert figures["cross-model-return"]["pick"] == "combo,agent.beta=5.0"
    assert figures["fqe-return"]["spearman"] == pytest.approx(0.5)
    assert figures["fqe-return"]["pick"] == "combo,agent.beta=2.0"


def test_select_by_an_estimate_no_run_has_says_how_to_add_it(tmp_path, capsys):
    for name, beta in [("a", 1.0), ("b", 2.0)]:
        write_run(tmp_path, name, 10, 10, **{"agent.beta": beta})
    args = SimpleNamespace(by="fqe-return", run_dirs=[str(tmp_path)])
    assert ranking.cmd_select(args) == 1
    assert "`latent-combo estimate RUN_DIR --fqe` adds it" in capsys.readouterr().out
