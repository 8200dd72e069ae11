"""Run folders: which dataset a config names, where its run lives, the saved config, and checkpoints.

Checkpoints hold only tensors, numbers, strings and plain containers, and are read with
`torch.load(weights_only=True)`: a shared run folder (`--world-model RUN_DIR`) can then never run code.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from latent_combo.config import Config, from_dict, to_dict
from latent_combo.envs import COLLECT_ENV_IDS
from latent_combo.utils import atomic_save, atomic_write_text

FLAVOURS = ("medium", "medium-replay", "medium-expert", "expert")

# (env, flavour, episodes, out folder) -> the built dataset folder; data_collection.collect.ensure_dataset
# is the real one, passed in by the command-line layer so that the library never imports the collectors.
DatasetBuilder = Callable[..., Path]


class CheckpointError(ValueError):
    pass


# ----- datasets and run folders ---------------------------------------------------------------------

def dataset_dir(cfg: Config, build: DatasetBuilder | None = None) -> Path:
    """A flavour name resolves to data/ENV/FLAVOUR when that dataset exists (e.g. from `make collect-walker`),
    else to a small one, data/ENV/FLAVOUR-Nep with N = cfg.default_episodes, built by `build` if missing
    (a separate folder, so a later full collection is not blocked by it). Anything else is a folder path."""
    if cfg.dataset in FLAVOURS:
        full = Path("data") / cfg.env / cfg.dataset
        if (full / "metadata.json").exists():
            return full
        if cfg.env not in COLLECT_ENV_IDS:
            raise FileNotFoundError(f"no dataset at {full}: {cfg.env} has no behaviour policies or datasets of "
                                    "our own; pass a V-D4RL folder with --dataset PATH (docs/datasets.md, 'V-D4RL')")
        small = Path("data") / cfg.env / f"{cfg.dataset}-{cfg.default_episodes}ep"
        if not (small / "metadata.json").exists():
            collect = "make collect-sawyer" if cfg.env.startswith("sawyer") else "make collect-walker"
            if build is None or cfg.default_episodes <= 0:
                raise FileNotFoundError(f"no dataset at {full}: build it with `{collect}` (or `latent-combo "
                                        f"collect --env {cfg.env} --flavour {cfg.dataset}`)")
            print(f"no dataset at {full}: building a small one, {cfg.default_episodes} episodes, in {small}")
            build(cfg.env, cfg.dataset, cfg.default_episodes, out=small, seed=0)
        return small
    path = Path(cfg.dataset)
    if not path.is_dir():
        raise FileNotFoundError(f"--dataset {cfg.dataset!r}: neither a flavour ({', '.join(FLAVOURS)}) "
                                "nor an existing folder")
    return path


def run_dir_for(cfg: Config, data_path: Path) -> Path:
    """Named after the resolved dataset folder, so a small on-the-fly dataset and the full collection of the
    same flavour never share a run folder."""
    return Path(cfg.logdir) / cfg.env / Path(data_path).name / f"{cfg.algo}-{cfg.obs}-{cfg.preset}-s{cfg.seed}"


def save_config(cfg: Config, run_dir: Path, world_model_only: bool = False) -> None:
    """Resolved config saved with the run; a resumed run must have been started with the same one,
    except for where it runs (`threads`, `device`), which may change between sessions, and, for
    `world_model_only` in a folder without an agent checkpoint, the agent's settings, which nothing there
    depends on (a sweep reuses one world model under any agent settings and presets' agent defaults)."""
    path = run_dir / "config.yaml"
    if path.exists():
        where = {"threads": cfg.threads, "device": cfg.device}
        if world_model_only and not (run_dir / "agent.pt").exists():
            where["agent"] = cfg.agent
        old = dataclasses.replace(from_dict(yaml.safe_load(path.read_text())), **where)
        if old != cfg:
            diff = [k for k, v in to_dict(cfg).items() if to_dict(old).get(k) != v]
            raise ValueError(f"{path}: this run folder was started with a different config (differs in "
                             f"{diff}); use --fresh to restart it or --logdir for a new folder")
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def find_run_dirs(root: Path) -> list[Path]:
    """The run folders at or below `root`: a run folder is one holding config.yaml (see save_config)."""
    return sorted(p.parent for p in Path(root).rglob("config.yaml"))


def load_config(run_dir: Path) -> Config:
    """The run folder's saved config. Given a folder above runs (`runs/`, `runs/walker-walk/`), the error
    lists the run folders below it, the likely meant ones."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.exists():
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such folder; expected a run folder (one holding config.yaml, "
                                    "e.g. runs/ENV/DATASET/ALGO-OBS-PRESET-sSEED)")
        below = find_run_dirs(run_dir)
        if not below:
            raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml), nor any below it; "
                                    "`latent-combo train` makes one (runs/ENV/DATASET/ALGO-OBS-PRESET-sSEED)")
        shown = 20  # a long sweep's folders would bury the point
        more = f"\n  ... and {len(below) - shown} more" if len(below) > shown else ""
        found = "the run folder" if len(below) == 1 else f"the {len(below)} run folders"
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml); {found} below it:\n  "
                                + "\n  ".join(map(str, below[:shown])) + more + "\npass one of them")
    return from_dict(yaml.safe_load(path.read_text()))


# ----- checkpoints ------------------------------------------------------------------------------------

def plain(obj, where: str = "checkpoint"):
    """`obj` with numpy values turned into tensors / Python numbers; anything else that is not a tensor,
    number, string or plain container is refused, so every checkpoint loads with weights_only=True."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: {type(obj).__name__} cannot go into a checkpoint (tensors, numbers, strings "
                    "and plain containers only)")


def save_checkpoint(obj: dict, path: Path) -> None:
    atomic_save(plain(obj, Path(path).name), path)


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at `path`, or None if there is none. Read with weights_only=True: a file holding any
    other pickled object is refused before any of it runs."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a plain checkpoint (tensors, numbers, strings and containers "
                              f"only), refused without running it: {first}") from None
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
