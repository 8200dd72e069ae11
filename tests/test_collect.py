"""Dataset collection: tiny collections per env, resume, flavour mixing, door-close relabelling, shipping."""

import json

import numpy as np
import pytest
import torch

from data_collection import collect as C
from data_collection import policies as P
from latent_combo.data import load_episode, read_metadata, verify
from latent_combo.envs import make_env
from latent_combo.nets import TanhGaussianActor


class ConstPolicy(P.Policy):
    """Distinguishable stub: always the same action (in-process collection only: not importable by workers)."""

    def __init__(self, value, dim=6):
        self.value, self.dim = value, dim

    def __call__(self, obs, rng):
        return np.full(self.dim, self.value, np.float32)

    def describe(self):
        return {"kind": "const", "value": self.value}


@pytest.fixture
def stub_walker(monkeypatch, tmp_path):
    """Walker behaviour without shipped checkpoints: random / constant policies and a fake experience file."""
    real = P.behaviour_policy
    replay = tmp_path / "replay.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(replay, seeds=np.arange(100, 107), actions=rng.uniform(-1, 1, (7, 500, 6)).astype(np.float32),
                        returns=np.zeros(7, np.float32), end_steps=np.arange(1, 8) * 500)

    def fake(env_id, part):
        if env_id != "walker-walk":
            return real(env_id, part)
        return {"medium": ConstPolicy(0.5), "expert": ConstPolicy(-0.5),
                "medium-replay": P.ExperienceReplay(replay)}[part]

    monkeypatch.setattr(P, "behaviour_policy", fake)
    return fake


def _check_dataset(out, env_id, flavour, episodes, steps, action_dim):
    assert verify(out) == []
    meta = read_metadata(out)
    assert meta["total_episodes"] == episodes and meta["total_steps"] == episodes * steps
    assert meta["env"] == env_id and meta["flavour"] == flavour and meta["algorithm_name"]
    assert sorted(meta["files"]) == [f"ep_{i:06d}.npz" for i in range(episodes)]
    assert all(len(v) == 64 for v in meta["files"].values())
    for i in range(episodes):
        ep = load_episode(out / f"ep_{i:06d}.npz")
        assert ep["image"].shape == (steps + 1, 64, 64, 3) and ep["image"].dtype == np.uint8
        assert ep["action"].shape == (steps + 1, action_dim) and not ep["action"][0].any()
        assert ep["reward"][0] == 0 and ep["is_first"][0] and not ep["is_first"][1:].any()
        assert ep["is_last"][-1] and not ep["is_last"][:-1].any() and not ep["is_terminal"].any()
        assert (ep["discount"] == 1).all() and ep["state"].dtype == np.float32
        assert ep["image"][-1].std() > 1
    return meta


def test_tiny_walker_collection(tmp_path, stub_walker):
    out = C.collect("walker-walk", "medium", episodes=2, out=tmp_path / "w", max_steps=5, workers=1, progress=False)
    meta = _check_dataset(out, "walker-walk", "medium", 2, 5, 6)
    assert meta["policies"]["medium"] == {"kind": "const", "value": 0.5}
    assert meta["command"].startswith("latent-combo collect --env walker-walk --flavour medium --episodes 2")
    assert not (out / C.CONFIG).exists()


def test_tiny_walker_collection_two_workers(tmp_path, monkeypatch):
    # Policies are built in the parent and pickled to the spawned workers, so the stub must be importable.
    monkeypatch.setattr(P, "behaviour_policy", lambda env_id, part: P.RandomPolicy(6))
    out = C.collect("walker-walk", "expert", episodes=2, out=tmp_path / "w2", max_steps=5, workers=2, progress=False)
    meta = _check_dataset(out, "walker-walk", "expert", 2, 5, 6)
    assert meta["workers"] == 2 and meta["policies"]["expert"]["kind"] == "random"


def test_tiny_sawyer_collection_two_workers(tmp_path):
    out = C.collect("sawyer-door", "expert", episodes=2, out=tmp_path / "s", max_steps=5, workers=2, progress=False)
    meta = _check_dataset(out, "sawyer-door", "expert", 2, 5, 4)
    assert meta["workers"] == 2 and "scripted" in meta["algorithm_name"]
    assert meta["policies"]["expert"]["noise_std"] == P.DOOR_NOISE["expert"][0]
    # Same episode content whatever the worker count (states/actions; pixels may differ by a level).
    again = C.collect("sawyer-door", "expert", episodes=2, out=tmp_path / "s1", max_steps=5, workers=1,
                      progress=False)
    for i in range(2):
        a, b = load_episode(out / f"ep_{i:06d}.npz"), load_episode(again / f"ep_{i:06d}.npz")
        np.testing.assert_array_equal(a["action"], b["action"])
        np.testing.assert_array_equal(a["state"], b["state"])


def test_resume_after_interruption(tmp_path, stub_walker, capsys):
    out = C.collect("walker-walk", "medium-replay", episodes=3, out=tmp_path / "r", max_steps=4, workers=1,
                    progress=False)
    original = load_episode(out / "ep_000001.npz")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("ep_*.npz")}
    # Interrupted run: one episode never written, one half written, a stray temp file, stale manifest.
    (out / "ep_000001.npz").unlink()
    data = (out / "ep_000002.npz").read_bytes()
    (out / "ep_000002.npz").write_bytes(data[: len(data) // 2])
    (out / ".ep_000002.123.tmp.npz").write_bytes(b"partial")
    C.collect("walker-walk", "medium-replay", episodes=3, out=out, max_steps=4, workers=1, progress=False)
    _check_dataset(out, "walker-walk", "medium-replay", 3, 4, 6)
    assert not list(out.glob(".*tmp*"))
    assert (out / "ep_000000.npz").stat().st_mtime_ns == mtimes["ep_000000.npz"]  # untouched
    assert (out / "ep_000002.npz").stat().st_mtime_ns != mtimes["ep_000002.npz"]
    rebuilt = load_episode(out / "ep_000001.npz")
    np.testing.assert_array_equal(rebuilt["state"], original["state"])  # episode i is reproducible alone
    # Complete: not rebuilt; more files than requested: an error naming --force.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("ep_*.npz")}
    capsys.readouterr()
    C.collect("walker-walk", "medium-replay", episodes=3, out=out, max_steps=4, workers=1, progress=False)
    assert "exists" in capsys.readouterr().out
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.glob("ep_*.npz")}
    with pytest.raises(ValueError, match="--force"):
        C.collect("walker-walk", "medium-replay", episodes=2, out=out, max_steps=4, workers=1, progress=False)
    assert verify(out) == []
    C.collect("walker-walk", "medium-replay", episodes=2, out=out, max_steps=4, workers=1, force=True,
              progress=False)
    assert read_metadata(out)["total_episodes"] == 2 and verify(out) == []


def test_add_missing_episodes_and_settings_mismatch(tmp_path, stub_walker):
    out = C.collect("walker-walk", "expert", episodes=2, out=tmp_path / "e", max_steps=3, workers=1, progress=False)
    first = (out / "ep_000000.npz").stat().st_mtime_ns
    C.collect("walker-walk", "expert", episodes=3, out=out, max_steps=3, workers=1, progress=False)
    assert read_metadata(out)["total_episodes"] == 3 and verify(out) == []
    assert (out / "ep_000000.npz").stat().st_mtime_ns == first
    with pytest.raises(ValueError, match="seed"):
        C.collect("walker-walk", "expert", episodes=3, out=out, max_steps=3, seed=1, workers=1, progress=False)
    assert C.ensure_dataset("walker-walk", "expert", 3, out=out) == out


def test_collect_with_mujocos_default_rendering(tmp_path, stub_walker):
    """--render default: MuJoCo's own settings (multisampling, shadows), recorded in metadata.json; the same episode
    as a fast collection, other pixels. A folder collected before the flag existed counts as 'fast'."""
    fast = C.collect("walker-walk", "expert", episodes=1, out=tmp_path / "f", max_steps=3, workers=1, progress=False)
    default = C.collect("walker-walk", "expert", episodes=1, out=tmp_path / "d", max_steps=3, workers=1,
                        progress=False, render="default")
    meta_f, meta_d = _check_dataset(fast, "walker-walk", "expert", 1, 3, 6), read_metadata(default)
    assert meta_f["render"] == "fast" and "--render" not in meta_f["command"]
    assert meta_d["render"] == "default" and meta_d["command"].endswith("--render default")
    a, b = load_episode(fast / "ep_000000.npz"), load_episode(default / "ep_000000.npz")
    np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.array_equal(a["image"], b["image"])
    with pytest.raises(ValueError, match="render"):
        C.collect("walker-walk", "expert", episodes=2, out=default, max_steps=3, workers=1, progress=False)
    # An interrupted collection from before the flag: its .collect.json has no 'render' key.
    config = {k: v for k, v in meta_f["collect_config"].items() if k != "render"}
    (fast / "ep_000000.npz").unlink()
    (fast / C.CONFIG).write_text(json.dumps(config))
    (fast / "metadata.json").unlink()
    C.collect("walker-walk", "expert", episodes=1, out=fast, max_steps=3, workers=1, progress=False)
    assert read_metadata(fast)["render"] == "fast" and verify(fast) == []
    with pytest.raises(ValueError, match="unknown render settings"):
        C.collect("walker-walk", "expert", episodes=1, out=tmp_path / "x", max_steps=3, progress=False, render="nice")


def test_medium_expert_mixing(tmp_path, stub_walker):
    pols, parts = C.plan("walker-walk", "medium-expert", 200)
    assert parts.count("medium") == 100 and parts.count("expert") == 100 and parts[99] == "medium"
    out = C.collect("walker-walk", "medium-expert", episodes=3, out=tmp_path / "me", max_steps=3, workers=1,
                    progress=False)
    meta = read_metadata(out)
    assert meta["episodes_per_policy"] == {"medium": 1, "expert": 2}
    assert "medium:" in meta["algorithm_name"] and "expert:" in meta["algorithm_name"]
    values = [load_episode(out / f"ep_{i:06d}.npz")["action"][1, 0] for i in range(3)]
    assert values == [0.5, -0.5, -0.5]


def test_replay_selection_and_too_few(stub_walker):
    rp = P.behaviour_policy("walker-walk", "medium-replay")
    assert rp.entries(3).tolist() == [0, 3, 6] and rp.entries(7).tolist() == list(range(7))
    ep = rp.for_episode(1, 3)
    assert ep.reset_seed == 103 and ep.entry == 3
    with pytest.raises(ValueError, match="holds 7 recorded"):
        rp.entries(8)
    # Asking the collector for more than were recorded takes all of them, each once.
    _, parts = C.plan("walker-walk", "medium-replay", 8)
    assert len(parts) == 7


def test_sawyer_noise_schedule():
    s = P.behaviour_policy("sawyer-door", "medium-replay")
    assert s.levels(0, 5) == P.DOOR_REPLAY_START and s.levels(4, 5) == P.DOOR_NOISE["medium"]
    assert s.for_episode(2, 5).random_action_prob == pytest.approx(np.mean([P.DOOR_REPLAY_START[1],
                                                                           P.DOOR_NOISE["medium"][1]]))


def test_door_close_relabelling(tmp_path):
    # The offset rule agrees with door-close-v3's own goal (door + (0.2, -0.2, 0)) along an opening episode.
    env = make_env("sawyer-door", render=False)
    obs, _ = env.reset(seed=0)
    goal = env._env.obj_init_pos + np.array([0.2, -0.2, 0.0])
    pol, rng, closed = P.behaviour_policy("sawyer-door", "expert"), np.random.default_rng(0), []
    for _ in range(60):
        direct = np.linalg.norm(obs["state"][4:7] - goal) <= 0.08
        assert C.door_closed(obs["state"]) == direct
        closed.append(direct)
        obs, *_ = env.step(pol(obs, rng))
    assert closed[0] and not closed[-1]  # starts closed, the expert opens it
    out = C.collect("sawyer-door-close", "expert", episodes=1, out=tmp_path / "c", max_steps=60, workers=1,
                    progress=False)
    ep = load_episode(out / "ep_000000.npz")
    assert ep["reward"][0] == 0 and ep["reward"][1] == 1 and ep["reward"][-1] == 0
    np.testing.assert_array_equal(ep["reward"][1:], C.door_closed(ep["state"][1:]))
    meta = read_metadata(out)
    assert meta["env"] == "sawyer-door-close" and meta["behaviour_env"] == "sawyer-door"
    assert "relabelled" in meta["reward"]


def test_cli_collect(tmp_path, capsys):
    from latent_combo.cli import build_parser

    p = build_parser()
    a = p.parse_args(["collect", "--env", "sawyer-door", "--flavour", "medium", "--episodes", "1",
                      "--max-steps", "2", "--workers", "1", "--out", str(tmp_path / "cli")])
    assert a.func(a) == 0
    assert "Batch Mean" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        p.parse_args(["collect", "--env", "cartpole", "--flavour", "medium"])
    assert a.render == "fast"
    assert p.parse_args(["collect", "--env", "walker-walk", "--flavour", "medium", "--render", "default"]).render \
        == "default"


def _fake_ladder(d, returns, hidden=32):
    d.mkdir()
    ladder = []
    for k, ret in enumerate(returns):
        step = (k + 1) * 1000
        torch.manual_seed(k)
        a = TanhGaussianActor(24, 6, hidden)
        path = f"actor_{step:07d}.pt"
        torch.save({"actor": a.state_dict(), "env": "walker-walk", "hidden": hidden, "step": step,
                    "eval_return": ret, "eval_success": 0.0}, d / path)
        ladder.append({"step": step, "eval_return": ret, "eval_success": 0.0, "path": path})
    (d / "ladder.json").write_text(json.dumps(ladder))
    n = 12  # two episodes per 1000 steps (T = 500)
    np.savez_compressed(d / "experience.npz", seeds=np.arange(n), returns=np.arange(n, dtype=np.float32),
                        end_steps=(np.arange(n) + 1) * 500,
                        actions=np.random.default_rng(0).uniform(-1, 1, (n, 500, 6)).astype(np.float32))


def test_ship_fake_ladder(tmp_path):
    from data_collection import ship

    _fake_ladder(tmp_path / "ladder", [100.0, 450.0, 530.0, 700.0, 950.0, 940.0])
    s = ship.ship("walker-walk", tmp_path / "ladder", tmp_path / "ckpt")
    assert s["medium"]["step"] == 3000 and s["expert"]["step"] == 5000
    with np.load(tmp_path / "ckpt" / "walker-walk-replay.npz") as f:
        assert f["seeds"].tolist() == list(range(6)) and f["actions"].dtype == np.float32
        assert f["actions"].shape == (6, 500, 6)
    ck = torch.load(tmp_path / "ckpt" / "walker-walk-medium.pt", weights_only=True)
    assert set(ck) == {"actor", "hidden", "env", "step", "eval_return", "eval_success"}
    pol = P.SACPolicy(tmp_path / "ckpt" / "walker-walk-expert.pt")
    obs = {"state": np.random.default_rng(1).standard_normal(24).astype(np.float32)}
    a1, a2 = pol(obs, np.random.default_rng(5)), pol(obs, np.random.default_rng(5))
    assert a1.shape == (6,) and a1.dtype == np.float32 and np.abs(a1).max() <= 1
    np.testing.assert_array_equal(a1, a2)
    det = P.SACPolicy(tmp_path / "ckpt" / "walker-walk-expert.pt", stochastic=False)
    assert not np.array_equal(det(obs, np.random.default_rng(0)), a1)
    with pytest.raises(ValueError, match=r"\[400, 600\]"):
        ship.pick([{"step": 1, "eval_return": 300.0}, {"step": 2, "eval_return": 700.0}])


def test_ship_picks_medium_by_measured_behaviour_return(tmp_path, monkeypatch):
    from data_collection import ship

    _fake_ladder(tmp_path / "ladder", [100.0, 450.0, 530.0, 700.0, 950.0, 940.0])
    # A real measurement runs (one stochastic state-only episode) and gives a walker return.
    ret = ship.behaviour_return(tmp_path / "ladder" / "actor_0001000.pt", "walker-walk", episodes=1)
    assert 0.0 <= ret <= 1000.0
    # Training evals 450 / 530 / 700 re-measure as 520 / 380 / 610: medium is the first, and its in-band
    # stretch ends there, so the replay stops at env step 2000 (4 episodes of 500 steps).
    measured = {"actor_0002000.pt": 520.0, "actor_0003000.pt": 380.0, "actor_0004000.pt": 610.0}
    seen = []
    monkeypatch.setattr(ship, "behaviour_return", lambda path, env_id, n: seen.append(path.name) or measured[path.name])
    s = ship.ship("walker-walk", tmp_path / "ladder", tmp_path / "ckpt", measure_episodes=3)
    assert sorted(seen) == sorted(measured)  # only training evals in [300, 700] are re-measured
    assert s["medium"]["step"] == 2000 and s["medium"]["behaviour_return"] == 520.0
    assert s["replay"]["episodes"] == 4
    assert P.SACPolicy(tmp_path / "ckpt" / "walker-walk-medium.pt").describe()["behaviour_return"] == 520.0


def test_missing_walker_checkpoint_message(monkeypatch, tmp_path):
    monkeypatch.setattr(P, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="data_collection.ship --env walker-walk"):
        P.behaviour_policy("walker-walk", "medium")


@pytest.mark.parametrize("part", ["medium", "expert"])
def test_shipped_checkpoints_load_and_act(part):
    path = P.CHECKPOINT_DIR / f"walker-walk-{part}.pt"
    if not path.exists():
        pytest.skip(f"{path.name} not shipped yet (make train-behaviour ENV=walker-walk; python -m "
                    "data_collection.ship --env walker-walk)")
    pol = P.behaviour_policy("walker-walk", part)
    env = make_env("walker-walk", render=False)
    obs, rng = env.reset(seed=0)[0], np.random.default_rng(0)
    for _ in range(5):
        a = pol(obs, rng)
        assert a.shape == (6,) and np.abs(a).max() <= 1
        obs, *_ = env.step(a)
