import pytest
import yaml

from latent_combo.config import Config, from_dict, model_buffer_capacity, parse_overrides, resolve, to_dict


def test_presets_resolve_and_override():
    cfg = resolve("debug", "walker-walk", parse_overrides(["wm.deter=32", "agent.beta=0.25", "seed=3"]))
    assert cfg.wm.deter == 32 and cfg.agent.beta == 0.25 and cfg.seed == 3 and cfg.preset == "debug"


@pytest.mark.parametrize("preset", ["debug", "cpu", "quality", "paper"])
def test_every_preset_loads(preset):
    cfg = resolve(preset, "sawyer-door")
    assert cfg.env == "sawyer-door"


@pytest.mark.parametrize("preset, env, obs, alpha", [
    ("cpu", "walker-walk", "image", 2.5), ("quality", "walker-walk", "image", 2.5),
    ("cpu", "sawyer-door", "image", 0.2), ("quality", "sawyer-door-close", "image", 0.2),
    ("cpu", "cheetah-run", "image", 2.5), ("cpu", "walker-walk", "state", 0.0),
    ("paper", "walker-walk", "image", 0.0), ("paper", "sawyer-door", "image", 0.0),
    ("debug", "sawyer-door", "image", 0.0)])
def test_td3bc_alpha_is_each_tasks_own_for_the_cpu_and_quality_presets(preset, env, obs, alpha):
    # The env files set it and come before the preset file, so a preset that set it would silently override them.
    assert resolve(preset, env, {"obs": obs}).agent.td3bc_alpha == alpha


def test_paper_preset_uses_lompo_sizes():
    wm = resolve("paper").wm
    assert (wm.deter, wm.stoch, wm.hidden, wm.depth, wm.ensemble) == (256, 64, 256, 32, 7)
    assert (wm.batch, wm.length, wm.lr, wm.grad_clip, wm.steps) == (64, 50, 6e-4, 100.0, 25_000)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown config key 'wm.dter'.*wm.deter"):
        resolve("cpu", overrides={"wm.dter": 3})


def test_bad_values_named():
    with pytest.raises(ValueError, match="unknown preset 'gpu'.*debug, cpu, quality, paper"):
        resolve("gpu")
    with pytest.raises(ValueError, match="unknown algo 'sac'"):
        resolve("cpu", overrides={"algo": "sac"})
    with pytest.raises(ValueError, match="'wm.steps': expected an integer"):
        resolve("cpu", overrides={"wm.steps": 2.5})
    with pytest.raises(ValueError, match="COMBO needs 0 < f < 1"):
        resolve("cpu", overrides={"agent.real_ratio": 1.0})
    with pytest.raises(ValueError, match="'agent.model_retain'.*less than one rollout refresh"):
        resolve("cpu", overrides={"agent.model_retain": 10})
    with pytest.raises(ValueError, match="'agent.td3bc_alpha'.*expected >= 0"):
        resolve("cpu", overrides={"agent.td3bc_alpha": -1})


def test_renamed_and_misspelt_keys_say_what_to_write():
    with pytest.raises(ValueError, match="'agent.bc_weight'.*replaced: use agent.td3bc_alpha"):
        resolve("cpu", overrides={"agent.bc_weight": 0.4})
    with pytest.raises(ValueError, match="'agent.model_buffer'.*agent.model_retain"):
        resolve("cpu", overrides={"agent.model_buffer": 10})
    with pytest.raises(ValueError, match=r"unknown config key 'agent.betta'.*did you mean 'agent.beta'"):
        resolve("cpu", overrides={"agent.betta": 1})


def test_model_buffer_holds_model_retain_updates_of_rollouts():
    c = resolve("cpu").agent
    assert model_buffer_capacity(c) == c.rollout_batch * c.rollout_length * -(-c.model_retain // c.rollout_every)
    # OfflineRL-Kit COMBO's proportions: 50 starts per update, each rollout kept 5000 updates.
    assert c.rollout_batch / c.rollout_every == 50 and c.model_retain == 5000
    with pytest.raises(ValueError, match="expected key=value"):
        parse_overrides(["beta"])


def test_saved_config_round_trips():
    cfg = resolve("debug", "sawyer-door", {"agent.beta": 2.0})
    assert from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg
    assert isinstance(cfg, Config)


def test_robot_yaml_applies_to_each_of_its_tasks_before_the_task_yaml(tmp_path):
    (tmp_path / "sawyer.yaml").write_text("agent:\n  beta: 0.3\n  tau: 0.01\n")
    (tmp_path / "sawyer-door-close.yaml").write_text("agent:\n  tau: 0.05\n")
    door = resolve("debug", "sawyer-door", config_dir=tmp_path)
    close = resolve("debug", "sawyer-door-close", config_dir=tmp_path)
    walker = resolve("debug", "walker-walk", config_dir=tmp_path)
    assert (door.agent.beta, door.agent.tau) == (0.3, 0.01)
    assert (close.agent.beta, close.agent.tau) == (0.3, 0.05)
    assert walker.agent.beta == resolve("debug", "walker-walk", config_dir=tmp_path / "none").agent.beta != 0.3


def test_algorithm_section_applies_to_that_algorithm_only_and_overrides_win(tmp_path):
    (tmp_path / "sawyer.yaml").write_text("agent:\n  beta: 0.03\ncql:\n  agent:\n    beta: 0.1\n")
    (tmp_path / "sawyer-door-close.yaml").write_text("agent:\n  beta: 0.5\n")
    assert resolve("debug", "sawyer-door", {"algo": "combo"}, config_dir=tmp_path).agent.beta == 0.03
    assert resolve("debug", "sawyer-door", {"algo": "cql"}, config_dir=tmp_path).agent.beta == 0.1
    assert resolve("debug", "sawyer-door", {"algo": "cql", "agent.beta": 2}, config_dir=tmp_path).agent.beta == 2
    # A later file's general key beats an earlier file's section: files keep their order.
    assert resolve("debug", "sawyer-door-close", {"algo": "cql"}, config_dir=tmp_path).agent.beta == 0.5


def test_algorithm_section_errors_name_the_file_and_section(tmp_path):
    (tmp_path / "sawyer.yaml").write_text("cql: 0.1\n")
    with pytest.raises(ValueError, match=r"sawyer.yaml: section 'cql' must be a mapping"):
        resolve("debug", "sawyer-door", config_dir=tmp_path)
    (tmp_path / "sawyer.yaml").write_text("cql:\n  agent:\n    betta: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'agent.betta' in .*sawyer.yaml \(section 'cql'\)"):
        resolve("debug", "sawyer-door", {"algo": "combo"}, config_dir=tmp_path)
