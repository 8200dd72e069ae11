"""bench/world_model.py's precision rows and bench/world_model_screen.py's variants and table."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_precision_rows_are_timed_in_the_same_run(capsys):
    bench = load("world_model")
    bench.main(["--preset", "debug", "--quick", "--no-reference", "--precision", "fp32,bf16", "--iters", "1",
                "--threads", "1"])
    out = capsys.readouterr().out
    assert "latent_combo fp32" in out and "latent_combo bf16" in out and "vs fp32" in out
    assert "1.00x" in out  # the fp32 row against itself
    with pytest.raises(SystemExit):
        bench.main(["--preset", "debug", "--precision", "fp16"])


def test_every_screen_variant_is_a_valid_config_that_changes_something():
    from latent_combo.config import parse_overrides, resolve

    screen = load("world_model_screen")
    def config(overrides):
        return resolve("cpu", overrides=parse_overrides([f"{k}={v}" for k, v in {**screen.BASE, **overrides}.items()]))

    base = config({})
    assert base.wm.deter == 128 and not base.wm.gru_norm and base.precision == "fp32"  # the preset before the screen
    for name, (overrides, suffix, _) in screen.VARIANTS.items():
        assert (config(overrides) != base) or suffix or name == "base", name


def test_screen_reads_finished_runs_into_one_table(tmp_path, capsys):
    screen = load("world_model_screen")
    (tmp_path / "timings.json").write_text(json.dumps({"base": 0.2, "decode_half": 0.1}))
    for name, r2, updates in (("base", 0.6, 700), ("decode_half", 0.7, 1400)):
        for seed in (0, 1):
            run = screen.run_dir(tmp_path, name, "walker-walk", "medium-replay", "cpu", seed)
            run.mkdir(parents=True)
            probe = {"state_r2": r2 + seed / 100, "state_r2_positions": 0.5, "state_r2_velocities": 0.4,
                     "state_r2_sample": 0.55, "open_loop_r2_h1": 0.5, "open_loop_r2_h5": 0.4, "separability": 0.55}
            (run / "probe.json").write_text(json.dumps({"wm_step": updates, "probe": probe}))
    screen.main(["--seeds", "0", "1", "--variants", "base,decode_half", "--logdir", str(tmp_path), "--steps", "700"])
    out = capsys.readouterr().out
    base_row = next(line for line in out.splitlines() if line.strip().startswith("base"))
    half_row = next(line for line in out.splitlines() if line.strip().startswith("decode_half"))
    assert "700" in base_row and "0.600 / 0.610" in base_row and "0.605" in base_row and "2.3" in base_row
    assert "1400" in half_row and "0.710" in half_row and "2.3" in half_row  # the same minutes of updates
    screen.main(["--variants", "base,decode_half", "--logdir", str(tmp_path), "--steps", "700", "--time-only"])
    assert "1400" in capsys.readouterr().out  # twice the updates at half the time per update
    with pytest.raises(SystemExit):
        screen.main(["--variants", "base,nope", "--logdir", str(tmp_path)])


def test_screen_times_the_training_loop_itself(tiny_dataset):
    from latent_combo.data import OfflineDataset

    screen = load("world_model_screen")
    sec = screen.seconds_per_update("debug", "walker-walk", OfflineDataset(tiny_dataset), {"wm.gru_norm": "true"},
                                    steps=2)
    assert 0 < sec < 60
