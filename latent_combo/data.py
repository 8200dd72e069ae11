"""Episode files (Dreamer / V-D4RL layout), dataset manifests, and an in-RAM dataset that samples windows.

An episode of T agent steps is one compressed `.npz` holding T+1 rows: row 0 is the reset observation
with a zero action and zero reward; row t holds the action that led to observation t and its reward.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from latent_combo.envs import SUCCESS_ENVS
from latent_combo.utils import atomic_write_text

# key -> (dtype, trailing shape or None when it varies by env); leading dim is always T+1.
EPISODE_SPEC = {
    "image": (np.uint8, (64, 64, 3)),
    "action": (np.float32, None),
    "reward": (np.float32, ()),
    "discount": (np.float32, ()),
    "is_first": (np.bool_, ()),
    "is_last": (np.bool_, ()),
    "is_terminal": (np.bool_, ()),
    "state": (np.float32, None),
}
OPTIONAL_KEYS = ("state",)  # V-D4RL episodes carry no proprioceptive state
METADATA = "metadata.json"


def episode_format() -> str:
    """What a valid episode file holds, spelled out from EPISODE_SPEC for error messages."""
    def rows(key, shape):
        if shape is None:  # the width varies by env
            return f"(T+1, {key}_dim)"
        return f"(T+1, {', '.join(map(str, shape))})" if shape else "(T+1,)"

    arrays = [f"{k} {np.dtype(dtype)} {rows(k, shape)}" + (" (optional)" if k in OPTIONAL_KEYS else "")
              for k, (dtype, shape) in EPISODE_SPEC.items()]
    return ("a valid episode is a .npz (numpy.savez_compressed) of T+1 rows, row 0 the reset: "
            + ", ".join(arrays))


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, truncated or of the wrong shape; the message names it."""


class DatasetWarning(UserWarning):
    """Something in a dataset was repaired on load (the message says what and how many files)."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_episode(ep: dict, name: str, image_size: int | None = 64) -> int:
    """Validate keys, dtypes and shapes; returns T+1. Raises DatasetError naming `name`."""
    missing = [k for k in EPISODE_SPEC if k not in ep and k not in OPTIONAL_KEYS]
    if missing:
        raise DatasetError(f"{name}: missing keys {missing}; {episode_format()}")
    n = len(ep["reward"])
    if n < 2:
        raise DatasetError(f"{name}: episode has {n} rows; expected at least 2 (reset + one step)")
    for key, (dtype, shape) in EPISODE_SPEC.items():
        if key not in ep:
            continue
        x = ep[key]
        if key == "image" and image_size is not None:
            shape = (image_size, image_size, 3)
        if x.shape[0] != n:
            raise DatasetError(f"{name}: '{key}' has {x.shape[0]} rows; expected {n} like 'reward'")
        if shape is not None and x.shape[1:] != shape:
            raise DatasetError(f"{name}: '{key}' has shape {x.shape}; expected ({n}, *{shape})")
        if key in ("action", "state") and x.ndim != 2:
            raise DatasetError(f"{name}: '{key}' has shape {x.shape}; expected ({n}, D)")
        if x.dtype != dtype and not (dtype != np.uint8 and np.can_cast(x.dtype, dtype, "same_kind")):
            raise DatasetError(f"{name}: '{key}' has dtype {x.dtype}; expected {np.dtype(dtype)}")
    return n


def save_episode(path: str | Path, ep: dict) -> str:
    """Validate and write one episode atomically (temp file + rename); returns its sha256."""
    path = Path(path)
    ep = {k: np.asarray(v, dtype=EPISODE_SPEC[k][0]) for k, v in ep.items() if k in EPISODE_SPEC}
    check_episode(ep, str(path), image_size=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **ep)
    digest = sha256(tmp)
    os.replace(tmp, path)
    return digest


FLAG_KEYS = ("is_first", "is_last", "is_terminal")


def align_flags(ep: dict) -> bool:
    """Some published V-D4RL files carry `is_first` / `is_last` / `is_terminal` one row longer than
    `image`, `action` and `reward`. Row t of every array describes the same step, so the flags keep their
    first rows; a True in the dropped last row (the episode's end) moves onto the new last row. Returns
    whether anything was trimmed; any other length mismatch is left for `check_episode` to name."""
    if "reward" not in ep:
        return False
    n, trimmed = len(ep["reward"]), False
    for key in FLAG_KEYS:
        x = ep.get(key)
        if x is not None and x.ndim == 1 and len(x) == n + 1:
            x = np.array(x[:n], dtype=np.bool_)
            if key != "is_first" and n:
                x[-1] |= bool(ep[key][n])
            ep[key], trimmed = x, True
    return trimmed


def load_episode(path: str | Path, image_size: int | None = 64, aligned: list | None = None) -> dict:
    """Read and validate one episode; any damage becomes a DatasetError naming the file. Flag arrays one
    row longer than the data (V-D4RL) are aligned (`align_flags`), and the path appended to `aligned`."""
    path = Path(path)
    # np.load takes anything that is not a zip (a text file renamed .npz) for a pickle and suggests
    # allow_pickle: never the fix for an episode, so such a file is refused here, before numpy sees it.
    if path.is_file() and not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(16)
        raise DatasetError(f"{path}: not an episode file: not a .npz (zip) archive ({path.stat().st_size} bytes, "
                           f"starting {head!r}; empty, truncated or another kind of file); {episode_format()}")
    try:
        with np.load(path, allow_pickle=False) as f:
            ep = {}
            for k in f.files:
                try:
                    ep[k] = f[k]
                except ValueError as e:  # object arrays: pickled Python objects, never loaded
                    raise DatasetError(f"{path}: '{k}' holds Python objects (pickled data), which are never "
                                       f"loaded; {episode_format()}") from e
    except DatasetError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{path}: unreadable episode file ({type(e).__name__}: {e}); "
                           f"{episode_format()}") from e
    if align_flags(ep) and aligned is not None:
        aligned.append(path)
    check_episode(ep, str(path), image_size)
    return {k: v.astype(EPISODE_SPEC[k][0], copy=False) for k, v in ep.items() if k in EPISODE_SPEC}


def warn_aligned(directory, aligned: list) -> None:
    """One warning per dataset for the files whose flag arrays had to be aligned."""
    if aligned:
        warnings.warn(f"{directory}: {len(aligned)} of the episode files carry is_first / is_last / is_terminal "
                      "one row longer than image / action / reward (as some V-D4RL files do); aligned to the "
                      "data rows", DatasetWarning, stacklevel=3)


def episode_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(f"{d}: no such dataset folder")
    return sorted(p for p in d.glob("*.npz") if not p.name.startswith("."))


def read_metadata(directory: str | Path) -> dict | None:
    p = Path(directory) / METADATA
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p}: not valid JSON ({e})") from e


def dataset_env(directory: str | Path) -> str | None:
    """The env the folder's episodes come from, as its manifest records it; None without one (V-D4RL's)."""
    meta = read_metadata(directory)
    return meta.get("env") if meta else None


def render_settings(directory: str | Path) -> str:
    """How the folder's frames were rendered (envs.RENDER_SETTINGS): its manifest's `render`; 'fast' for a
    manifest without one (our datasets made before the field existed); MuJoCo's 'default' for a folder
    without a manifest (downloaded V-D4RL data, rendered with MuJoCo's defaults)."""
    meta = read_metadata(directory)
    return "default" if meta is None else meta.get("render", "fast")


def episode_succeeded(reward: np.ndarray, env: str) -> bool:
    """Whether an episode (rewards, row 0 the reset) succeeded as evaluation counts it from that env's start.

    sawyer-door: any rewarded step. sawyer-door-close data is door-opening behaviour, relabelled: its door
    starts closed, so its first steps are rewarded without anything done, while evaluation starts with the door
    open. Success there is the door closing after being open: a rewarded step after an unrewarded one (row 1 on).
    """
    r = reward[1:] > 0
    if env == "sawyer-door-close":
        return bool((r[1:] & ~r[:-1]).any())
    return bool(r.any())


def episode_stats(rewards: list[np.ndarray], env: str | None) -> dict:
    """Batch Mean / Max / Min of episode returns, the smallest per-step reward (the floor of any return; see
    selection.q_floor), and for sparse-success envs the success rate (episode_succeeded): a dense-reward env such
    as walker-walk has no notion of success."""
    returns = np.array([r[1:].sum() for r in rewards], dtype=np.float64)
    steps = [r[1:] for r in rewards if len(r) > 1]  # row 0 is the reset, with no reward
    stats = {"return_mean": float(returns.mean()), "return_max": float(returns.max()),
             "return_min": float(returns.min()), "return_std": float(returns.std()),
             "reward_min": float(min(s.min() for s in steps)) if steps else None}
    if env in SUCCESS_ENVS:
        stats["success_rate"] = float(np.mean([episode_succeeded(r, env) for r in rewards]))
    return stats


def write_metadata(directory: str | Path, **fields) -> dict:
    """Manifest with per-file checksums and summary statistics (Minari's names where they exist)."""
    from latent_combo import __version__

    d = Path(directory)
    files = episode_files(d)
    aligned: list[Path] = []
    eps = [load_episode(p, image_size=None, aligned=aligned) for p in files]
    warn_aligned(d, aligned)
    stats = episode_stats([e["reward"] for e in eps], fields.get("env")) if eps else {}
    meta = {
        "dataset_id": fields.pop("dataset_id", d.name),
        "total_episodes": len(files),
        "total_steps": int(sum(len(e["reward"]) - 1 for e in eps)),
        **stats,
        "package_version": __version__,
        **fields,
        "files": {p.name: sha256(p) for p in files},
    }
    atomic_write_text(d / METADATA, json.dumps(meta, indent=1))
    return meta


def check_structure(directory: str | Path, aligned: list | None = None) -> list[str]:
    """Every episode file read and checked (keys, dtypes, shapes, row counts): one problem per bad file.
    Files whose flag arrays needed aligning (`align_flags`) are appended to `aligned`."""
    problems = []
    for p in episode_files(directory):
        try:
            load_episode(p, image_size=None, aligned=aligned)
        except DatasetError as e:
            problems.append(str(e))
    return problems


def verify(directory: str | Path) -> list[str]:
    """Problems found comparing the folder to its manifest (empty list: all good). A folder without a
    manifest (a downloaded V-D4RL one) has no checksums to compare: its files' structure is checked."""
    d = Path(directory)
    meta = read_metadata(d)
    if meta is None:
        return check_structure(d)
    problems, listed = [], meta.get("files", {})
    present = {p.name for p in episode_files(d)}
    for name in sorted(set(listed) - present):
        problems.append(f"{d / name}: listed in {METADATA} but missing")
    for name in sorted(present - set(listed)):
        problems.append(f"{d / name}: present but not listed in {METADATA}")
    for name in sorted(set(listed) & present):
        if sha256(d / name) != listed[name]:
            problems.append(f"{d / name}: sha256 differs from {METADATA} (file modified or corrupt)")
    return problems


class OfflineDataset:
    """A whole dataset in RAM as contiguous arrays plus episode offsets; windows by vectorised indexing."""

    def __init__(self, directory: str | Path, check: bool = True, image_size: int = 64):
        self.directory = Path(directory)
        self.metadata = read_metadata(self.directory)
        files = episode_files(self.directory)
        if not files:
            raise DatasetError(f"{self.directory}: no episode .npz files; a dataset folder holds one per episode "
                               "(`latent-combo collect` builds one; V-D4RL's folders are read as they are)")
        if check and self.metadata is not None:
            problems = verify(self.directory)
            if problems:
                raise DatasetError("dataset does not match its manifest:\n  " + "\n  ".join(problems))
        aligned: list[Path] = []
        eps = [load_episode(p, image_size, aligned) for p in files]
        warn_aligned(self.directory, aligned)
        keys = [k for k in EPISODE_SPEC if all(k in e for e in eps)]
        for k in ("action", "state"):
            dims = {e[k].shape[1] for e in eps if k in e}
            if len(dims) > 1:
                raise DatasetError(f"{self.directory}: episodes disagree on '{k}' width {sorted(dims)}")
        self.arrays = {k: np.concatenate([e[k] for e in eps]) for k in keys}
        self.lengths = np.array([len(e["reward"]) for e in eps])
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.files = files
        self.action_dim = self.arrays["action"].shape[1]
        self.state_dim = self.arrays["state"].shape[1] if "state" in self.arrays else None
        self._valid_starts: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_transitions(self) -> int:
        return int((self.lengths - 1).sum())

    def stats(self) -> dict:
        r = self.arrays["reward"]
        return {"episodes": len(self), "transitions": self.num_transitions,
                **episode_stats([r[s:s + n] for s, n in zip(self.starts, self.lengths)],
                                (self.metadata or {}).get("env"))}

    def valid_starts(self, length: int) -> np.ndarray:
        """Every global row index where a window of `length` rows stays inside one episode."""
        if length not in self._valid_starts:
            parts = [np.arange(s, s + n - length + 1) for s, n in zip(self.starts, self.lengths) if n >= length]
            if not parts:
                raise DatasetError(f"{self.directory}: no episode has {length} rows; longest has "
                                   f"{self.lengths.max()}")
            self._valid_starts[length] = np.concatenate(parts)
        return self._valid_starts[length]

    def window_rows(self, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """Row indices (B, L) of `batch` windows of `length` consecutive rows, uniform over valid windows."""
        starts = self.valid_starts(length)
        return starts[rng.integers(0, len(starts), batch)][:, None] + np.arange(length)

    def sample_sequences(self, batch: int, length: int, rng: np.random.Generator,
                         keys=None) -> dict[str, np.ndarray]:
        """`batch` windows of `length` consecutive rows, uniformly over valid windows: {key: (B, L, ...)}."""
        idx = self.window_rows(batch, length, rng)
        return {k: v[idx] for k, v in self.arrays.items() if keys is None or k in keys}

    def episode(self, i: int) -> dict[str, np.ndarray]:
        s, n = self.starts[i], self.lengths[i]
        return {k: v[s:s + n] for k, v in self.arrays.items()}
