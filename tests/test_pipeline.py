"""Tiny end-to-end runs of `latent-combo train` (debug preset) for every algo and env, and resume."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from latent_combo.cli import main as cli
from latent_combo.config import ALGOS, resolve

REQUIRED = {"env", "dataset", "algo", "seed", "preset", "eval_return_mean", "eval_return_ci95",
            "final_regulariser", "wall_time_s", "device"}


@pytest.fixture(scope="module")
def world_models(env_datasets, tmp_path_factory):
    """One debug world model per env (trained through the CLI with the default algo) for reuse."""
    root = tmp_path_factory.mktemp("wm")
    out = {}
    for env, data in env_datasets.items():
        assert cli(["train", "--env", env, "--dataset", str(data), "--preset", "debug", "--logdir", str(root)]) == 0
        out[env] = root / env / data.name / "combo-image-debug-s0"
    return out


@pytest.mark.parametrize("env", ["walker-walk", "sawyer-door"])
@pytest.mark.parametrize("algo", ALGOS)
def test_each_algo_and_env_writes_results(env, algo, env_datasets, world_models, tmp_path):
    args = ["train", "--env", env, "--dataset", str(env_datasets[env]), "--preset", "debug", "--algo", algo,
            "--logdir", str(tmp_path), "--world-model", str(world_models[env])]
    assert cli(args) == 0
    run = tmp_path / env / env_datasets[env].name / f"{algo}-image-debug-s0"
    results = json.loads((run / "results.json").read_text())
    assert REQUIRED <= set(results)
    assert results["algo"] == algo and results["env"] == env and results["eval_episodes"] == 1
    key = "eval_success_rate" if env == "sawyer-door" else "eval_normalized_score"
    assert 0 <= results[key] <= 100
    assert (results["final_regulariser"] is not None) == (algo in ("combo", "cql"))
    assert (len(results["q_data_trace"]) > 0) == (algo != "bc")  # Q on the data at every log step
    # The world model's own estimate of the policy's return, for every algorithm (BC's actor too).
    assert np.isfinite(results["model_return"]) and len(results["model_return_heads"]) == 3
    assert ("model_success" in results) == (env == "sawyer-door")
    assert ("model_return_probe_read" in results) == (env == "walker-walk")  # its reward is known from the state
    # Success is a notion of sparse-success envs only, in results.json as in the manifest.
    assert ("success_rate" in results["dataset_stats"]) == (env == "sawyer-door")
    assert (run / "config.yaml").exists() and (run / "agent.pt").exists() and list(run.glob("events.*"))


def test_state_mode_runs_the_same_pipeline(env_datasets, tmp_path):
    assert cli(["train", "--dataset", str(env_datasets["walker-walk"]), "--preset", "debug", "--obs", "state",
                "--logdir", str(tmp_path)]) == 0
    run = next(tmp_path.rglob("results.json")).parent
    assert json.loads((run / "results.json").read_text())["obs"] == "state"


def test_agent_resume_is_exact(env_datasets, world_models, tmp_path):
    from latent_combo.agent_training import train_agent
    from latent_combo.data import OfflineDataset
    from latent_combo.latent import encode_dataset
    from latent_combo.runs import load_checkpoint
    from latent_combo.world_model_training import build_world_model

    cfg = resolve("debug", overrides={"agent.steps": 6, "agent.checkpoint_every": 3})
    ds = OfflineDataset(env_datasets["walker-walk"])
    torch.manual_seed(0)
    wm = build_world_model(cfg, ds, torch.device("cpu"))
    wm.load_state_dict(load_checkpoint(world_models["walker-walk"] / "wm.pt")["model"])
    transitions = encode_dataset(wm, ds, "cpu")

    class NoWriter:
        def __getattr__(self, name):
            return lambda *a, **k: None

    def run(name, stop=None):
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        return train_agent(cfg, wm, transitions, d, NoWriter(), torch.device("cpu"), steps=stop)

    straight = run("straight")
    run("halves", stop=3)
    resumed = run("halves")
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(v, resumed.state_dict()[k], rtol=0, atol=0, msg=k)


def test_unknown_names_give_clear_errors(capsys, tmp_path):
    assert cli(["train", "--dataset", str(tmp_path / "nope"), "--preset", "debug"]) == 2
    assert "neither a flavour" in capsys.readouterr().err
    assert cli(["train", "--preset", "debug", "agent.betta=1"]) == 2
    assert "unknown config key 'agent.betta'" in capsys.readouterr().err


def test_select_picks_lowest_regulariser_without_returns(tmp_path, capsys):
    import yaml

    from latent_combo.config import to_dict

    def run(name, reg, ret, beta, seed=0, **more):
        d = tmp_path / name
        d.mkdir()
        cfg = resolve("debug", overrides={"agent.beta": beta, "seed": seed, **more})
        (d / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
        (d / "results.json").write_text(json.dumps({"final_regulariser": reg, "eval_return_mean": ret,
                                                    "algo": "combo"}))
        return str(d)

    # Seeds of one setting are averaged: beta 1 has the lowest single value but the higher mean.
    dirs = [run("a", 0.9, 900.0, 0.5), run("b", -0.3, 10.0, 1.0), run("b1", 0.7, 10.0, 1.0, seed=1),
            run("c", 0.1, 500.0, 5.0)]
    assert cli(["select", *dirs]) == 0
    assert capsys.readouterr().out.strip().endswith("pick: agent.beta=5 agent.real_ratio=0.5")
    capsys.readouterr()
    assert cli(["select", *dirs, run("d", -5.0, 0.0, 2.0, **{"agent.rollout_length": 1})]) != 0
    assert "differ in ['agent.rollout_length']" in capsys.readouterr().err


def test_estimate_command_rewrites_the_runs_figure(world_models, capsys):
    run = world_models["walker-walk"]
    saved = json.loads((run / "results.json").read_text())
    assert cli(["estimate", str(run)]) == 0
    assert "model return" in capsys.readouterr().out
    again = json.loads((run / "estimate.json").read_text())
    assert again["model_return"] == pytest.approx(saved["model_return"], rel=1e-5)  # fixed starts, fixed seed
    # Fitted Q evaluation adds its figures; the earlier ones stay in estimate.json.
    assert cli(["estimate", "--fqe", str(run), "--fqe-updates", "50"]) == 0  # the flag never takes the folder
    assert "fitted Q evaluation" in capsys.readouterr().out
    both = json.loads((run / "estimate.json").read_text())
    assert np.isfinite(both["fqe_return"]) and both["fqe_updates"] == 50 and "model_return" in both


def test_estimate_in_another_seeds_world_model(env_datasets, world_models, tmp_path, capsys):
    data = env_datasets["walker-walk"]
    assert cli(["train", "--env", "walker-walk", "--dataset", str(data), "--preset", "debug", "--seed", "1",
                "--world-model-only", "--logdir", str(tmp_path)]) == 0
    evaluator = tmp_path / "walker-walk" / data.name / "combo-image-debug-s1"
    run = world_models["walker-walk"]
    assert cli(["estimate", str(run), "--evaluator", str(evaluator)]) == 0
    assert "in another world model" in capsys.readouterr().out
    figures = json.loads((run / "estimate.json").read_text())
    assert np.isfinite(figures["cross_return"]) and len(figures["cross_return_heads"]) == 3
    assert (evaluator / "latents.pt").exists()  # a world-model-only run's dataset, encoded once
    assert cli(["estimate", str(run), "--evaluator", str(world_models["sawyer-door"])]) == 2
    assert "sawyer-door" in capsys.readouterr().err


def test_eval_command_needs_only_the_run_folder(world_models, capsys):
    assert cli(["eval", str(world_models["sawyer-door"]), "--eval-episodes", "2"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # the progress bar goes to stderr, leaving stdout the JSON alone
    assert out["eval_episodes"] == 2 and 0.0 <= out["eval_success_rate"] <= 1.0
    assert "evaluation (sawyer-door)" in captured.err and "2/2" in captured.err


def test_only_a_standalone_evaluation_shows_progress(world_models, capsys):
    """The final evaluation's bar (minutes of pixel episodes); periodic ones would break into the agent's bar."""
    from latent_combo.evaluate import evaluate
    from latent_combo.world_model_training import load_trained_world_model

    class Still(torch.nn.Module):
        def sample(self, feat, deterministic=False):
            return torch.zeros(feat.shape[0], 6), None

    _, wm, _, device, _, _ = load_trained_world_model(world_models["walker-walk"], None, "cpu")
    for progress in (False, True):
        evaluate(wm, Still(), "walker-walk", 2, device, max_steps=3, progress=progress)
        assert ("evaluation (walker-walk)" in capsys.readouterr().err) == progress


def test_flavour_name_builds_a_small_dataset_in_its_own_folder(tmp_path, monkeypatch):
    from latent_combo.runs import dataset_dir

    monkeypatch.chdir(tmp_path)
    built = []

    def fake_ensure(env, flavour, episodes, out, seed):
        built.append((env, flavour, episodes, str(out), seed))
        out.mkdir(parents=True)
        (out / "metadata.json").write_text("{}")
        return out

    cfg = resolve("debug", overrides={"dataset": "medium", "seed": 3})
    with pytest.raises(FileNotFoundError, match="make collect-walker"):
        dataset_dir(cfg)  # no builder passed in: the library never collects on its own
    assert dataset_dir(cfg, fake_ensure) == tmp_path.joinpath("data/walker-walk/medium-2ep").relative_to(tmp_path)
    assert built == [("walker-walk", "medium", 2, "data/walker-walk/medium-2ep", 0)]
    dataset_dir(cfg, fake_ensure)
    assert len(built) == 1  # reused, not rebuilt
    (tmp_path / "data/walker-walk/medium").mkdir(parents=True)
    (tmp_path / "data/walker-walk/medium/metadata.json").write_text("{}")
    assert str(dataset_dir(cfg, fake_ensure)) == "data/walker-walk/medium"  # a full collection wins


def test_resume_refuses_a_changed_hyperparameter_but_not_a_changed_thread_count(tmp_path):
    from latent_combo.runs import save_config

    save_config(resolve("debug", overrides={"threads": 2}), tmp_path)
    save_config(resolve("debug", overrides={"threads": 1, "device": "cpu"}), tmp_path)
    with pytest.raises(ValueError, match=r"different config \(differs in \['agent'\]\)"):
        save_config(resolve("debug", overrides={"agent.beta": 2 * resolve("debug").agent.beta}), tmp_path)


def test_paper_preset_smoke_on_cpu(tmp_path):
    """The GPU preset's network sizes, batch length, penalty and rollout settings, for two world-model and
    two agent updates on CPU: catches preset, shape and device bugs without a GPU."""
    from conftest import random_policy_dataset

    data = random_policy_dataset("walker-walk", tmp_path / "walker", episodes=2, steps=60)
    args = ["train", "--dataset", str(data), "--preset", "paper", "--device", "cpu", "--logdir", str(tmp_path),
            "wm.steps=2", "wm.batch=2", "agent.steps=2", "agent.rollout_batch=5000", "final_eval_episodes=1",
            "eval_max_steps=5"]
    assert cli(args) == 0
    run = tmp_path / "walker-walk" / "walker" / "combo-image-paper-s0"
    results = json.loads((run / "results.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["wm"]["deter"] == 256 and cfg["wm"]["length"] == 50 and cfg["agent"]["rollout_length"] == 5
    assert results["probe"]["state_r2"] is not None and results["eval_episodes"] == 1
    assert "model_buffer" not in torch.load(run / "agent.pt", weights_only=True)  # paper: not rewritten


def test_paper_preset_refuses_a_missing_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["train", "--preset", "paper", "--dataset", "medium"]) == 2
    assert "make collect-walker" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_agent_resumes_without_a_saved_model_buffer_and_keeps_its_wall_time(env_datasets, world_models, tmp_path,
                                                                             capsys):
    # The source world model says it took a day: that is its own run's time, never this one's.
    source = tmp_path / "source"
    shutil.copytree(world_models["walker-walk"], source)
    wm_ckpt = torch.load(source / "wm.pt", weights_only=True)
    torch.save({**wm_ckpt, "wall_s": 86400.0}, source / "wm.pt")
    args = ["train", "--dataset", str(env_datasets["walker-walk"]), "--preset", "debug", "--logdir", str(tmp_path),
            "--world-model", str(source), "agent.save_model_buffer=false"]
    assert cli(args) == 0
    run = tmp_path / "walker-walk" / env_datasets["walker-walk"].name / "combo-image-debug-s0"
    first = json.loads((run / "results.json").read_text())["wall_time_s"]
    ckpt = torch.load(run / "agent.pt", weights_only=True)
    assert "model_buffer" not in ckpt
    assert 0 < ckpt["wall_s"] <= first < 86400
    ckpt["step"], ckpt["wall_s"] = 3, 1000.0  # as if killed after the first checkpoint, 1000 s in
    torch.save(ckpt, run / "agent.pt")
    capsys.readouterr()
    assert cli(args) == 0
    assert "refilling the model buffer" in capsys.readouterr().out
    # A resumed run reports the time its interrupted invocation had saved, plus its own.
    assert 1000 < json.loads((run / "results.json").read_text())["wall_time_s"] < 86400


EXPECTED_TAGS = {
    "wm/obs", "wm/reward", "wm/kl", "wm/kl_head0", "wm/total", "wm/grad_norm", "wm/post_std", "wm/open_loop_mse_h1",
    "speed/wm_updates_per_s", "speed/agent_updates_per_s", "probe/state_r2", "probe/separability",
    "agent/critic_loss", "agent/bellman", "agent/penalty", "agent/regulariser", "agent/q_batch", "agent/q_data",
    "agent/q_model", "agent/q_rho", "agent/q_policy", "agent/actor", "agent/alpha", "agent/entropy",
    "rollout/reward", "rollout/reward_minus_data", "rollout/buffer_age", "agent/policy_action_mse",
    "agent/policy_saturation", "agent/data_saturation", "eval/return_mean", "eval/normalized_score",
    "eval/normalized_score_lo", "eval/normalized_score_hi", "eval/final_normalized_score", "agent/final_regulariser",
    "1_result/eval_normalized_score", "1_result/q_data", "1_result/regulariser",
}


def test_tensorboard_tag_scheme_hparams_and_labelled_grids(world_models):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from latent_combo.report import describe

    acc = EventAccumulator(str(world_models["walker-walk"]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    # Scalars are written as 0-d tensors with the scalars plugin's metadata (report.scalar: keeps descriptions).
    scalars = {t for t in acc.Tags()["tensors"] if acc.SummaryMetadata(t).plugin_data.plugin_name == "scalars"}
    assert EXPECTED_TAGS <= scalars, EXPECTED_TAGS - scalars
    tags = scalars | set(acc.Tags()["images"])
    assert {t.split("/")[0] for t in tags} <= {"1_result", "wm", "agent", "rollout", "eval", "probe", "speed",
                                              "estimate"}
    assert not [t for t in tags if t.split("/")[1].startswith(t.split("/")[0])]  # e.g. eval/eval_...
    assert all(describe(t) for t in scalars), [t for t in scalars if not describe(t)]
    # The description travels with the tag's first event.
    assert acc.SummaryMetadata("agent/q_data").summary_description == describe("agent/q_data")
    # HParams: the run's settings and its final metrics.
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["algo"].string_value == "combo"
    assert "beta" in start.session_start_info.hparams
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    names = {m.name.tag for m in exp.experiment.metric_infos}
    assert {"eval/final_normalized_score", "agent/final_regulariser", "probe/state_r2"} <= names
    # The final evaluation on the periodic curves, at the last step (debug: one periodic at 4, the final at 6), the
    # same score in the result's group, beside its chart.
    results = json.loads((world_models["walker-walk"] / "results.json").read_text())
    for tag in ("eval/normalized_score", "1_result/eval_normalized_score"):
        points = [(e.step, e.tensor_proto.float_val[0]) for e in acc.Tensors(tag)]
        assert [s for s, _ in points] == [4, 6]
        assert points[-1][1] == pytest.approx(results["eval_normalized_score"])
    assert len(acc.Tensors("eval/final_normalized_score")) == 1
    assert {"1_result/eval_curve", "eval/episode_frames"} <= set(acc.Tags()["images"])
    frames = acc.Images("eval/episode_frames")
    assert [e.step for e in frames] == [4, 6] and frames[-1].height >= 128  # legible: 2x frames in a grid
    # The custom layout of a walker run: its score band, no success-rate chart; the regulariser on its own chart.
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: c for category in layout.category for c in category.chart}
    assert [c for c in charts if "normalised score" in c] and not [c for c in charts if "success" in c]
    (regulariser,) = [c for t, c in charts.items() if t.startswith("regulariser")]
    assert list(regulariser.multiline.tag) == ["^agent/regulariser_tail_mean$"]
    assert start.session_start_info.hparams["seed"].number_value == 0
    # A labelled open-loop grid: a white header band and label column around the frames.
    image = acc.Images("wm/open_loop/head0")[-1]
    import io

    from PIL import Image

    from latent_combo.report import HEADER_HEIGHT, LABEL_WIDTH

    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
    header = pixels[:HEADER_HEIGHT]
    assert (header < 128).any() and (header == 255).mean() > 0.6  # header text on white
    assert (pixels[HEADER_HEIGHT:, :LABEL_WIDTH - 4] == 255).mean() > 0.6  # the row-name column
    # Legible where TensorBoard shows it: a card ~500 px wide scales the grid down; the header's text line
    # (its '|' separators included) must stay >= 9 px tall there (7 px at the earlier, unreadable size).
    ink_rows = np.flatnonzero((header < 128).any((1, 2)))
    assert (ink_rows[-1] - ink_rows[0] + 1) * min(1.0, 500 / pixels.shape[1]) >= 9
