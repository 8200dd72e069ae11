"""Small shared helpers: device choice, seeding, RNG state capture, atomic file writes, the finite check."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG, so a resumed run draws the same numbers as an uninterrupted one."""
    # numpy's legacy state as a dict with its key array as a list: plain data, loadable with weights_only.
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = {**numpy_state, "state": {**numpy_state["state"],
                                                "key": np.asarray(numpy_state["state"]["key"], np.uint32)}}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temp file, then rename: a killed writer never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(metrics: dict, stage: str, step: int) -> None:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
    if bad:
        raise NonFiniteLoss(f"{stage}: non-finite {', '.join(bad)} at step {step}; stopping. The last good "
                            "checkpoint in the run folder is intact (lower the learning rate or check the data).")


def flatten(d: dict, prefix: tuple = ()) -> dict:
    """Nested dict -> {key path tuple: leaf value}, e.g. {"agent": {"beta": 1}} -> {("agent", "beta"): 1}."""
    out = {}
    for key, value in d.items():
        out.update(flatten(value, prefix + (key,)) if isinstance(value, dict) else {prefix + (key,): value})
    return out
