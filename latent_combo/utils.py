"""Small shared helpers: device choice, seeding, RNG state capture, atomic file writes."""

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
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


def flatten(d: dict, prefix: tuple = ()) -> dict:
    """Nested dict -> {key path tuple: leaf value}, e.g. {"agent": {"beta": 1}} -> {("agent", "beta"): 1}."""
    out = {}
    for key, value in d.items():
        out.update(flatten(value, prefix + (key,)) if isinstance(value, dict) else {prefix + (key,): value})
    return out
