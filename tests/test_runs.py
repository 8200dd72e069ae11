"""Layering and run-folder plumbing: imports point one way, checkpoints hold plain data only."""

import pkgutil
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import latent_combo
from latent_combo.runs import CheckpointError, load_checkpoint, plain, save_checkpoint
from latent_combo.utils import rng_state, set_rng_state


def test_library_never_imports_data_collection():
    modules = [m.name for m in pkgutil.iter_modules(latent_combo.__path__) if m.name != "cli"]
    assert {"runs", "pipeline", "world_model_training", "agent_training"} <= set(modules)
    code = ("import sys\n" + "".join(f"import latent_combo.{m}\n" for m in modules)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'data_collection')\n"
            + "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class Payload:
    """Unpickling this would create the file named by `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_an_arbitrary_object_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "wm.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoints_round_trip_plain_data_and_rng_state(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"rng": rng_state(), "sampler": np.random.default_rng(4).bit_generator.state,
             "history": [{"step": 5, "score": np.float64(1.5)}], "array": np.arange(3)}
    save_checkpoint(state, tmp_path / "a.pt")
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded["history"] == [{"step": 5, "score": 1.5}] and type(loaded["history"][0]["score"]) is float
    torch.testing.assert_close(loaded["array"], torch.arange(3))
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    gen = np.random.default_rng()
    gen.bit_generator.state = loaded["sampler"]
    assert gen.random() == np.random.default_rng(4).random()
    assert load_checkpoint(tmp_path / "missing.pt") is None


def test_plain_names_what_cannot_be_saved():
    with pytest.raises(TypeError, match=r"ckpt\['opt'\]\[0\]: Payload"):
        plain({"opt": [Payload("x")]}, "ckpt")


def test_deferred_finite_check_reports_the_term_and_the_steps():
    from latent_combo.utils import FiniteCheck, NonFiniteLoss

    check = FiniteCheck("agent", every_step=False)
    check.add({"q": torch.tensor(1.0), "actor": torch.tensor(2.0)}, 1)
    check.add({"q": torch.tensor(float("nan")), "actor": torch.tensor(2.0)}, 2)  # no sync, no raise yet
    with pytest.raises(NonFiniteLoss, match=r"agent: non-finite q between steps 1 and 3"):
        check.add({"q": torch.tensor(0.0), "actor": torch.tensor(2.0)}, 3)
        check.check(3)
    check.check(4)  # settled: nothing pending


def test_world_model_folder_ignores_agent_settings_until_an_agent_is_saved(tmp_path):
    from latent_combo.config import resolve
    from latent_combo.runs import save_config

    save_config(resolve("debug", "sawyer-door"), tmp_path, world_model_only=True)
    other_agent = resolve("debug", "sawyer-door", {"agent.beta": 0.5})
    save_config(other_agent, tmp_path, world_model_only=True)  # a sweep reusing the world model: fine
    with pytest.raises(ValueError, match="differs in \\['agent'\\]"):
        save_config(resolve("debug", "sawyer-door"), tmp_path)  # a full run resuming it: the agent counts
    (tmp_path / "agent.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="differs in \\['agent'\\]"):
        save_config(resolve("debug", "sawyer-door"), tmp_path, world_model_only=True)
    with pytest.raises(ValueError, match="differs in \\['wm'\\]"):
        save_config(resolve("debug", "sawyer-door", {"agent.beta": 0.5, "wm.steps": 9}), tmp_path,
                    world_model_only=True)
