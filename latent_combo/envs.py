"""Pixel environments as `gymnasium.Env`s: dm_control walker-walk, cheetah-run, humanoid-walk (V-D4RL's
domains) and Meta-World sawyer-door, one interface.

`reset(seed=...) -> (obs, info)`, `step(action) -> obs, reward, terminated, truncated, info`, with
`obs = {"image": uint8 (64, 64, 3), "state": float32 (D,)}` (no image when built with `render=False`),
actions in [-1, 1], action repeat 2. `import latent_combo` registers them as Gymnasium ids
(`latent_combo.GYM_IDS`).
"""

from __future__ import annotations

import os
import warnings

# EGL renders headless without an X server; must be set before mujoco is first imported.
# `check_rendering` falls back to OSMesa where EGL cannot render (a GPU container without NVIDIA's EGL).
_USER_GL = os.environ.get("MUJOCO_GL")
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

# dm_control (domain, task, action dim, state dim) for V-D4RL's domains; state = the task's observation
# dict concatenated in its own order (walker: orientations, height, velocity).
DMC_TASKS = {"walker-walk": ("walker", "walk", 6, 24), "cheetah-run": ("cheetah", "run", 6, 17),
             "humanoid-walk": ("humanoid", "walk", 21, 67)}
ENV_IDS = ("walker-walk", "cheetah-run", "humanoid-walk", "sawyer-door", "sawyer-door-close")
# Episode lengths in agent steps (after action repeat).
EPISODE_STEPS = {"walker-walk": 500, "cheetah-run": 500, "humanoid-walk": 500, "sawyer-door": 150,
                 "sawyer-door-close": 150}
SUCCESS_ENVS = ("sawyer-door", "sawyer-door-close")
# Envs with behaviour policies and datasets of our own (`latent-combo collect`); cheetah-run and
# humanoid-walk are there for V-D4RL's folders.
COLLECT_ENV_IDS = ("walker-walk", "sawyer-door", "sawyer-door-close")
# How frames are rendered. `fast`: no multisampling, no shadows (our own datasets: 4-6x cheaper on software
# GL for a near-identical 64px image); `default`: MuJoCo's own settings, which V-D4RL's frames were made with.
RENDER_SETTINGS = ("fast", "default")


def check_env_id(env_id: str) -> str:
    if env_id not in ENV_IDS:
        raise ValueError(f"unknown env id {env_id!r}; valid ids: {', '.join(ENV_IDS)}")
    return env_id


_RENDER_PROBE = ("import mujoco; r = mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8); "
                 "r.render(); r.close()")
_checked_gl: str | None = None


def _renders(backend: str) -> bool:
    import subprocess
    import sys

    env = {**os.environ, "MUJOCO_GL": backend}
    if backend == "osmesa":
        env["PYOPENGL_PLATFORM"] = "osmesa"
    try:
        return subprocess.run([sys.executable, "-c", _RENDER_PROBE], env=env, capture_output=True,
                              timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _egl_loaded() -> bool:
    import sys

    return any(m.startswith("mujoco.egl") for m in sys.modules)


def check_rendering() -> str:
    """The offscreen GL backend, checked once at start-up (in a subprocess, so a failing backend leaves
    this process clean) rather than at the first evaluation after a whole world-model stage. A backend
    named in MUJOCO_GL by the user is kept; otherwise EGL, or OSMesa with one line saying so where EGL
    cannot render. Neither: an error naming the packages."""
    global _checked_gl
    if _checked_gl is None:
        if _USER_GL is not None:
            _checked_gl = _USER_GL
        elif _renders("egl"):
            _checked_gl = "egl"
        elif _renders("osmesa"):
            if _egl_loaded():
                raise RuntimeError("EGL cannot render here and mujoco already loaded it: rerun with "
                                   "MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa")
            os.environ["MUJOCO_GL"] = "osmesa"
            os.environ["PYOPENGL_PLATFORM"] = "osmesa"
            print("rendering: EGL cannot render here; using OSMesa (software, slower)")
            _checked_gl = "osmesa"
        else:
            raise RuntimeError("offscreen rendering: neither EGL nor OSMesa works; install libegl1 libgl1-mesa-dri "
                               "libosmesa6 (`make setup` does it as root) or set MUJOCO_GL")
    return _checked_gl


def check_render_settings(settings: str) -> str:
    if settings not in RENDER_SETTINGS:
        raise ValueError(f"unknown render settings {settings!r}; valid: {', '.join(RENDER_SETTINGS)}")
    return settings


def apply_render_settings(model, settings: str) -> None:
    """`fast`: multisampling and shadows off (they cost 4-6x render time on software GL); `default`: as is."""
    if check_render_settings(settings) == "fast":
        model.vis.quality.offsamples = 0
        model.vis.quality.shadowsize = 0


class PixelEnv(gym.Env):
    """What every env here shares: the Gymnasium spaces, `render()` returning the last frame, the step count."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}
    action_dim: int
    state_dim: int

    def _init_spaces(self, size: int, render: bool) -> None:
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)}
        if render:
            spaces["image"] = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self.render_mode = "rgb_array" if render else None
        self._last_image = None

    def _finish(self, obs: dict) -> dict:
        self._last_image = obs.get("image")
        return obs

    def render(self):
        """The last observation's image (`rgb_array`); None for an env built without rendering."""
        return self._last_image


class DMCEnv(PixelEnv):
    """A dm_control task from pixels: camera 0 (V-D4RL's), 1000 physics steps = 500 agent steps."""

    def __init__(self, env_id: str = "walker-walk", size: int = 64, action_repeat: int = 2, render: bool = True,
                 render_settings: str = "fast"):
        from dm_control import suite

        self._suite = suite
        self.env_id = env_id
        self.domain, self.task, self.action_dim, self.state_dim = DMC_TASKS[env_id]
        self.size, self.action_repeat, self.render_frames = size, action_repeat, render
        self.render_settings = check_render_settings(render_settings)  # applied when the env first loads
        self.max_steps = EPISODE_STEPS[env_id]
        self._env = self._cam = self._cam_physics = None
        self._init_spaces(size, render)

    def _state(self, ts) -> np.ndarray:
        return np.concatenate([np.ravel(v) for v in ts.observation.values()]).astype(np.float32)

    def _obs(self, ts) -> dict:
        obs = {"state": self._state(ts)}
        if self.render_frames:
            obs["image"] = np.ascontiguousarray(self._camera().render())
        return self._finish(obs)

    def _camera(self):
        """One dm_control Camera kept for the env's life: `physics.render` builds a new one per call, and
        allocating its MjvScene cost as much as the 64px render itself (profiled on this CPU)."""
        physics = self._env.physics
        if self._cam is None or self._cam_physics is not physics:
            from dm_control.mujoco.engine import Camera

            self._cam, self._cam_physics = Camera(physics, self.size, self.size, camera_id=0), physics
        return self._cam

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self._env is None:
            self._env = self._suite.load(self.domain, self.task, task_kwargs={"random": seed})
            apply_render_settings(self._env.physics.model, self.render_settings)
        elif seed is not None:
            # dm_control draws the initial state from the task's RandomState; reseeding it equals
            # loading a new env with `random=seed`, without the ~0.4 s load and new GL context.
            self._env.task._random = np.random.RandomState(seed)
        self._t = 0
        return self._obs(self._env.reset()), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        reward = 0.0
        for _ in range(self.action_repeat):
            ts = self._env.step(action)
            reward += ts.reward or 0.0
        self._t += 1
        truncated = self._t >= self.max_steps
        return self._obs(ts), float(reward), False, truncated, {}

    def close(self):
        self._env = self._cam = self._cam_physics = None


class WalkerWalk(DMCEnv):
    """dm_control walker-walk (the env our walker datasets were collected in)."""

    action_dim, state_dim = DMC_TASKS["walker-walk"][2:]

    def __init__(self, size: int = 64, action_repeat: int = 2, render: bool = True, render_settings: str = "fast"):
        super().__init__("walker-walk", size, action_repeat, render, render_settings)


class SawyerDoor(PixelEnv):
    """Meta-World door-open-v3 (or door-close-v3) with an upright 64px view of arm and door.

    Reward is sparse, `1.0 * info["success"]`; the dense Meta-World reward stays in
    `info["dense_reward"]` for training state-based behaviour policies.
    """

    action_dim = 4
    state_dim = 39
    # The `corner` camera shows arm, door and handle large; it renders upside down, so we rotate 180.
    camera = "corner"

    def __init__(self, task: str = "door-open-v3", size: int = 64, action_repeat: int = 2,
                 render: bool = True, random_door: bool = False, render_settings: str = "fast"):
        import metaworld

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._benchmark = metaworld.MT1(task, seed=0)
        cls = self._benchmark.train_classes[task]
        kwargs = dict(render_mode="rgb_array", camera_name=self.camera, width=size, height=size) if render else {}
        self._env = cls(**kwargs)
        self._env.set_task(self._benchmark.train_tasks[0])
        if render:
            apply_render_settings(self._env.model, render_settings)
        self.task, self.size, self.action_repeat, self.render_frames = task, size, action_repeat, render
        self.random_door = random_door
        self.max_steps = EPISODE_STEPS["sawyer-door"]
        self._rng = np.random.default_rng(0)
        self._init_spaces(size, render)

    def _obs(self, state) -> dict:
        obs = {"state": np.asarray(state, dtype=np.float32)}
        if self.render_frames:
            obs["image"] = np.ascontiguousarray(self._env.render()[::-1, ::-1])
        return self._finish(obs)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        if self.random_door:
            tasks = self._benchmark.train_tasks
            self._env.set_task(tasks[self._rng.integers(len(tasks))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _ = self._env.reset(seed=seed)
        self._t = 0
        return self._obs(state), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        dense, success = 0.0, False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(self.action_repeat):
                state, r, _, _, info = self._env.step(action)
                dense += float(r)
                success = bool(info["success"])
        self._t += 1
        truncated = self._t >= self.max_steps
        info = {"success": success, "dense_reward": dense}
        return self._obs(state), float(success), False, truncated, info

    def close(self):
        self._env.close()


def make_env(env_id: str, size: int = 64, render: bool = True, random_door: bool = False,
             render_settings: str = "fast", render_mode: str | None = None):
    """Build a pixel env by id; `render=False` skips images (state-only behaviour training). `render_mode`
    is Gymnasium's (`gymnasium.make(..., render_mode="rgb_array")`): frames are always rendered then."""
    check_env_id(env_id)
    if render_mode is not None and render_mode not in PixelEnv.metadata["render_modes"]:
        raise ValueError(f"render_mode {render_mode!r}: these envs render 'rgb_array' only")
    render = render or render_mode is not None
    if env_id in DMC_TASKS:
        return WalkerWalk(size=size, render=render, render_settings=render_settings) if env_id == "walker-walk" \
            else DMCEnv(env_id, size=size, render=render, render_settings=render_settings)
    task = "door-open-v3" if env_id == "sawyer-door" else "door-close-v3"
    return SawyerDoor(task=task, size=size, render=render, random_door=random_door, render_settings=render_settings)

