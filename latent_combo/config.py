"""Run configuration: frozen dataclasses, YAML presets merged in order, `key=value` overrides.

Resolution order: dataclass defaults < configs/<robot>.yaml < configs/<env>.yaml < configs/<preset>.yaml < CLI
overrides, where <robot> is the env name up to its first '-' (`sawyer` for sawyer-door and sawyer-door-close).
Nested fields are addressed with dots: `wm.deter=128`, `agent.beta=0.5`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PRESETS = ("debug", "cpu", "quality", "paper")
ALGOS = ("combo", "lompo", "lmbpo", "cql", "bc")


@dataclass(frozen=True)
class WorldModelConfig:
    deter: int = 256
    """Size of the deterministic GRU state h."""
    stoch: int = 64
    """Size of the Gaussian stochastic latent z."""
    hidden: int = 256
    """Width of the RSSM's MLPs and of the reward head."""
    depth: int = 32
    """Channel multiplier of the conv encoder/decoder (Dreamer: 32 -> 32, 64, 128, 256)."""
    ensemble: int = 7
    """Number K of prior heads p_k(z | h); LOMPO uses 7."""
    min_std: float = 0.1
    """Lower bound on the latent standard deviations, keeps KLs finite."""
    gru_norm: bool = False
    """True: the RSSM's recurrent cell is DreamerV2's layer-normalised GRU (nets.LayerNormGRUCell, after
    dreamerv2/common/nets.py GRUCell with norm and NM512/dreamerv3-torch networks.py GRUCell): one linear layer on
    [input, h] to 3 x deter, a LayerNorm over them, reset / candidate / update gates with the update's bias at -1.
    False: torch's nn.GRUCell (LOMPO)."""
    norm: str = "none"
    """'layer': a channel LayerNorm after every conv and transposed conv of the image encoder and decoder but the
    output one (DreamerV3 dreamerv3/nets.py, dreamerv3-torch networks.py ImgChLayerNorm), and a LayerNorm after every
    hidden linear layer of the RSSM, the reward head and the world model's other MLPs (dreamerv3-torch networks.py
    MLP), each before its activation. 'none': no normalisation (LOMPO)."""
    kl_scale: float = 1.0
    """Weight of the KL term of the ELBO."""
    kl_free: float = 0.0
    """Free nats: KL below this is not penalised (Dreamer: 1-3; LOMPO: 0)."""
    kl_balance: float | None = None
    """None: plain KL (LOMPO). A number a: Dreamer-v2 balancing, share a of the gradient trains the prior
    (Dreamer-v2: 0.8)."""
    kl_free_mode: str = "step"
    """Where `kl_free` applies: 'step' clips each step's KL (of each prior head) below at kl_free nats, the mean
    taken after (LOMPO's and this code's behaviour before the option; DreamerV3); 'batch' clips each head's
    batch-mean KL (DreamerV2's free_avg, dreamerv2/configs.yaml; its dmc_vision runs 1 free nat so)."""
    kl_dyn: float | None = None
    """With `kl_rep`: DreamerV3's split KL, kl_dyn * KL(sg(q) || p) + kl_rep * KL(q || sg(p)), each term clipped
    below at kl_free (per `kl_free_mode`) on its own (dreamerv3/nets.py RSSM.dyn_loss / rep_loss, NM512/dreamerv3-torch
    networks.py RSSM.kl_loss; DreamerV3 runs dyn 0.5, rep 0.1, 1 free nat per step). Set, the two replace kl_scale
    and kl_balance. None: off."""
    kl_rep: float | None = None
    """The representation term's weight of DreamerV3's split KL (see kl_dyn; set both or neither)."""
    reward_scale: float = 1.0
    """Weight of the reward log-likelihood."""
    obs_scale: float = 1.0
    """Weight of the observation (image or state) log-likelihood."""
    decode_share: float = 1.0
    """Share of the (B, T) frames the decoder reconstructs in each update, drawn at random: the observation loss
    is their average, an unbiased estimate of the average over all frames, while the KL and the reward take every
    frame. The decoder is about two thirds of an update's time; 1.0: every frame (as before the option)."""
    inverse_scale: float = 0.0
    """Weight of an inverse-dynamics loss: a_t predicted from the encoder's embeddings of frames t-2..t
    (world_model.inverse_dynamics_loss). 0: off (no head)."""
    augment_shift: int = 0
    """Random-shift augmentation (DrQ) of the encoder's input in training: each frame padded by this many
    pixels (edge replicated) and cropped back at a random offset; the decoder still reconstructs the
    unshifted frame. 0: off. Images only."""
    batch: int = 64
    """Sequences per world-model update."""
    length: int = 50
    """Sequence length of each world-model update."""
    lr: float = 6e-4
    grad_clip: float = 100.0
    steps: int = 25_000
    """World-model updates."""
    log_every: int = 100
    image_every: int = 2_000
    """Steps between reconstruction / open-loop image grids in TensorBoard."""
    checkpoint_every: int = 1_000


@dataclass(frozen=True)
class AgentConfig:
    """Defaults follow the COMBO / CQL authors' code and OfflineRL-Kit's COMBO (run_example/run_combo.py) unless a
    docstring says otherwise."""

    hidden: int = 256
    layers: int = 2
    """Hidden layers of the actor and of each critic (the references use 3 x 256; docs/results.md compares them)."""
    standardise: bool = False
    """Standardise the agent's inputs (latent features) by the real transitions' per-dimension mean and std, as TD3+BC
    and d3rlpy standardise states. False feeds the latents raw (COMBO's and LOMPO's code)."""
    batch: int = 256
    critic_trunk: int = 0
    """0: the critic reads concat(latent, action). N: the latent first goes through Linear(N) + LayerNorm + tanh
    (DrQ-v2's critic trunk, shared by the twin critics), so a 6-d action is not 6 of 166-326 input dims."""
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    """Soft target update rate. The target lags the critic by 1 / (tau * (1 - gamma)) updates (20k at 0.005): a run
    much shorter than a few lags ends with Q still climbing (results.json's q_data_rise_last_fifth says by how much)."""
    steps: int = 100_000
    """Agent updates (one critic and one actor step each)."""
    real_ratio: float = 0.5
    """f of eq. 2: share of each Bellman batch drawn from real transitions (the rest from rollouts)."""
    beta: float = 1.0
    """Weight of the conservative regulariser of eq. 2."""
    target_gap: float | None = None
    """None: beta fixed. A number: beta tuned during training by dual ascent (CQL's Lagrange form) so that the
    regulariser E_rho[Q] - E_D[Q] tracks this target, starting from `beta`: 0 asks for the paper's condition (Q on
    rho not above Q on data) at the smallest beta that meets it. Combo and cql only; ignored by the others."""
    beta_lr: float = 1e-3
    """Adam learning rate of log beta under `target_gap` (5000 updates can move beta by up to e^5)."""
    bc_loss: str = "mse"
    """BC's loss: 'mse' (squared error of the deterministic action; chosen by held-out action error on sawyer
    and walker) or 'nll' (tanh-Gaussian likelihood; see losses.bc_loss)."""
    bc_warmup: int = 0
    """Actor-critic algorithms: for the first this many updates the actor minimises the BC loss (`bc_loss`) plus
    eq. 3's entropy term instead of eq. 3, while the critic trains as usual on the policy it will take over from
    (CQL's practical warm start, its code's `policy_eval_start`). 0: eq. 3 from the first update."""
    td3bc_alpha: float = 0.0
    """Actor-critic algorithms: > 0 keeps TD3+BC's policy constraint in eq. 3 after any warm start, with TD3+BC's alpha:
    lambda = alpha / E|Q| on the Q term, the squared error to the dataset's actions averaged over the action's
    dimensions, each dataset row weighing the same in both terms (losses.actor_loss). TD3+BC's published alpha is 2.5;
    smaller pulls harder. 0: eq. 3 as written (COMBO's and the CQL authors' code)."""
    penalty_form: str = "logsumexp"
    """'logsumexp' (CQL(H) soft maximum over sampled actions) or 'policy' (eq. 2 as written)."""
    penalty_actions: int = 10
    """N uniform and N policy actions per state in the logsumexp form."""
    penalty_grad: str = "exact"
    """The logsumexp form's gradient: 'exact' (through all 2N actions) or 'sampled' (the 2N actions evaluated
    without a graph, the gradient through one action per state drawn from the softmax weights: the same
    expected gradient at a fraction of the backward pass; losses.conservative_penalty)."""
    rho_dataset: bool = False
    """COMBO only: also push Q down at dataset states (rho augmented with them, the paper's practical
    choice in Section 3); False pushes down at model-rollout states only, as eq. 2 is written."""
    rollout_length: int = 5
    """h: model-rollout horizon (the COMBO paper's 5 for its image tasks, as LOMPO's)."""
    rollout_batch: int = 12_500
    """Start states per rollout refresh: rollout_batch / rollout_every starts per update. OfflineRL-Kit's COMBO adds
    50k starts every 1000 updates (50 per update); 12.5k every 250 is the same proportion, refreshed 4x as often."""
    rollout_every: int = 250
    """Agent updates between rollout refreshes."""
    model_retain: int = 5_000
    """Updates a rollout stays in the FIFO model buffer: its capacity is rollout_batch x rollout_length x
    ceil(model_retain / rollout_every) transitions. OfflineRL-Kit's COMBO keeps 5 refreshes of 1000 updates."""
    lompo_lambda: float = 5.0
    """LOMPO's reward penalty weight on ensemble disagreement."""
    init_alpha: float = 0.1
    """Initial entropy temperature (the references start at 1; docs/results.md compares them)."""
    entropy_backup: bool = False
    """True: SAC's soft Bellman target r + gamma (min Q' - alpha log pi(a'|s')). False: the target without the
    entropy term (CQL's and COMBO's practical `deterministic_backup`, OfflineRL-Kit's COMBO default); the actor keeps
    its entropy bonus. With `td3bc_alpha` pulling the policy onto the data's saturated actions, log pi grows (tanh's
    Jacobian), alpha rises to hold the entropy target, and the soft target falls below the reward: CQL's Q on data
    went to -12 by 12.5k updates on walker (reward ~1 per step)."""
    target_entropy: float | None = None
    """None: minus the action dimension."""
    eval_every: int = 10_000
    eval_episodes: int = 5
    checkpoint_every: int = 5_000
    save_model_buffer: bool = True
    """Keep the model-rollout buffer in agent.pt: resume is then exact (on CPU) but each checkpoint rewrites
    it (1.6 GB at 1.25M transitions of 160-d latents). False: it is refilled by rollouts of the resumed policy."""
    log_every: int = 250


@dataclass(frozen=True)
class Config:
    env: str = "walker-walk"
    """walker-walk, cheetah-run, humanoid-walk (V-D4RL folders only), sawyer-door or sawyer-door-close."""
    dataset: str = "medium"
    """A flavour (medium, medium-replay, medium-expert, expert) under data/ENV/, or a folder path."""
    algo: str = "combo"
    """combo, lompo, lmbpo, cql or bc."""
    obs: str = "image"
    """'image' (the product) or 'state' (proprioceptive; same world model and agent code)."""
    preset: str = "cpu"
    seed: int = 0
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda[:N]'."""
    precision: str = "auto"
    """'auto': the world model under bf16 autocast where the hardware has bf16 (CUDA; CPUs with AVX512-BF16 or
    AMX, utils.native_bf16), fp32 elsewhere; the agent is fp32 (TF32 matmuls on CUDA) everywhere. 'fp32' or
    'bf16' force one."""
    logdir: str = "runs"
    threads: int = 0
    """torch CPU threads; 0 leaves torch's default."""
    default_episodes: int = 20
    """Episodes in a dataset built on the fly when the named flavour is missing under data/ (0: never build one;
    a missing dataset is an error naming the collect command)."""
    final_eval_episodes: int = 10
    eval_max_steps: int = 0
    """Cut evaluation episodes to this many agent steps (0: the env's full episode); for smoke tests."""
    eval_render: str = "auto"
    """How evaluation renders frames: 'auto' as the dataset's were (its metadata.json's `render`; MuJoCo's
    defaults for a folder without a manifest, e.g. V-D4RL's), or 'fast' / 'default' (envs.RENDER_SETTINGS)."""
    wm: WorldModelConfig = field(default_factory=WorldModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


_NESTED = {"wm": WorldModelConfig, "agent": AgentConfig}

# Keys that changed meaning: an old config (or a habit) that sets one fails with what to write instead.
RENAMED = {
    "agent.bc_weight": "use agent.td3bc_alpha, TD3+BC's own alpha (the old w = 0.4 on walker, f = 0.5, is alpha "
                       "0.5 / (6 x 0.4) = 0.21; see losses.actor_loss)",
    "agent.model_buffer": "use agent.model_retain, how many updates a rollout stays in the buffer",
}


def valid_keys() -> list[str]:
    top = [f.name for f in dataclasses.fields(Config) if f.name not in _NESTED]
    return top + [f"{g}.{f.name}" for g, cls in _NESTED.items() for f in dataclasses.fields(cls)]


def _cast(value, default, key):
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r}: expected true/false, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            cast = type(default)(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key {key!r}: expected a number, got {value!r}") from None
        if isinstance(default, int) and cast != value:
            raise ValueError(f"config key {key!r}: expected an integer, got {value!r}")
        return cast
    return str(value)


def merge(cfg: Config, updates: dict, source: str = "overrides") -> Config:
    """Apply a nested or dotted dict of updates; unknown keys raise with the valid ones listed."""
    flat = {}
    for k, v in updates.items():
        if isinstance(v, dict) and k in _NESTED:
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    valid = valid_keys()
    top, nested = {}, {name: {} for name in _NESTED}
    for k, v in flat.items():
        if k in RENAMED:
            raise ValueError(f"config key {k!r} in {source} was replaced: {RENAMED[k]}")
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"unknown config key {k!r} in {source}; {hint}valid keys: {', '.join(valid)}")
        if "." in k:
            group, name = k.split(".", 1)
            nested[group][name] = _cast(v, getattr(getattr(cfg, group), name), k)
        else:
            top[k] = _cast(v, getattr(cfg, k), k)
    for group, values in nested.items():
        if values:
            top[group] = dataclasses.replace(getattr(cfg, group), **values)
    return dataclasses.replace(cfg, **top)


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    return data


def merge_file(cfg: Config, path: Path, algo: str) -> Config:
    """A config file's keys, then its section named after `algo`, if any (`cql: {agent: {beta: 0.1}}`):
    each algorithm's key setting is chosen offline on its own, so CQL does not inherit COMBO's beta."""
    data = load_yaml(path)
    sections = {name: data.pop(name) for name in ALGOS if name in data}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ValueError(f"{path}: section {name!r} must be a mapping of config keys (the settings of "
                             f"--algo {name}), got {section!r}")
    cfg = merge(cfg, data, str(path))
    # Every section is merged, so that a typo in another algorithm's section fails this run too.
    merged = {name: merge(cfg, section, f"{path} (section {name!r})") for name, section in sections.items()}
    return merged.get(algo, cfg)


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value, e.g. agent.beta=0.5")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def resolve(preset: str = "cpu", env: str = "walker-walk", overrides: dict | None = None,
            config_dir: Path = CONFIG_DIR) -> Config:
    """defaults < configs/<robot>.yaml < configs/<env>.yaml < configs/<preset>.yaml < configs/<preset>-<obs>.yaml
    < overrides; within each file, its section for the run's algorithm (`merge_file`) comes after the rest.
    <robot> (the env name before its first '-') holds what a robot's tasks share, such as the reward scale that
    sets beta: sawyer-door and sawyer-door-close both reward 0 or 1 per step."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    overrides = dict(overrides or {})
    cfg = Config(env=env, preset=preset)
    algo = overrides.get("algo", cfg.algo)
    robot = env.split("-")[0]
    for name in dict.fromkeys((robot, env, preset)):
        path = config_dir / f"{name}.yaml"
        if path.exists():
            cfg = merge_file(cfg, path, algo)
    obs = overrides.get("obs", cfg.obs)
    path = config_dir / f"{preset}-{obs}.yaml"
    if path.exists():
        cfg = merge_file(cfg, path, algo)
    cfg = merge(cfg, overrides)
    validate(cfg)
    return cfg


def validate_world_model(wm: WorldModelConfig) -> None:
    if wm.norm not in ("none", "layer"):
        raise ValueError(f"config key 'wm.norm': {wm.norm!r}; expected 'none' or 'layer'")
    if wm.kl_free_mode not in ("step", "batch"):
        raise ValueError(f"config key 'wm.kl_free_mode': {wm.kl_free_mode!r}; expected 'step' or 'batch'")
    if not 0.0 < wm.decode_share <= 1.0:
        raise ValueError(f"config key 'wm.decode_share': {wm.decode_share}; expected in (0, 1]")
    if (wm.kl_dyn is None) != (wm.kl_rep is None):
        raise ValueError(f"config keys 'wm.kl_dyn' and 'wm.kl_rep': {wm.kl_dyn!r} and {wm.kl_rep!r}; set both "
                         "(DreamerV3: 0.5 and 0.1) or neither")


def validate(cfg: Config) -> None:
    from latent_combo.envs import RENDER_SETTINGS, check_env_id

    check_env_id(cfg.env)
    validate_world_model(cfg.wm)
    if cfg.algo not in ALGOS:
        raise ValueError(f"unknown algo {cfg.algo!r}; valid algos: {', '.join(ALGOS)}")
    if cfg.eval_render not in ("auto", *RENDER_SETTINGS):
        raise ValueError(f"config key 'eval_render': {cfg.eval_render!r}; expected 'auto', "
                         + " or ".join(repr(s) for s in RENDER_SETTINGS))
    if cfg.obs not in ("image", "state"):
        raise ValueError(f"config key 'obs': {cfg.obs!r}; expected 'image' or 'state'")
    if cfg.agent.penalty_grad not in ("exact", "sampled"):
        raise ValueError(f"config key 'agent.penalty_grad': {cfg.agent.penalty_grad!r}; expected 'exact' or 'sampled'")
    if cfg.agent.penalty_form not in ("logsumexp", "policy"):
        raise ValueError(f"config key 'agent.penalty_form': {cfg.agent.penalty_form!r}; "
                         "expected 'logsumexp' or 'policy'")
    if cfg.agent.bc_loss not in ("mse", "nll"):
        raise ValueError(f"config key 'agent.bc_loss': {cfg.agent.bc_loss!r}; expected 'mse' or 'nll'")
    if not 0.0 <= cfg.agent.real_ratio <= 1.0:
        raise ValueError(f"config key 'agent.real_ratio': {cfg.agent.real_ratio}; expected in [0, 1]")
    if cfg.algo == "combo" and not 0.0 < cfg.agent.real_ratio < 1.0:
        # COMBO pushes Q down on the batch's rollout rows and up on its real rows: it needs both.
        raise ValueError(f"config key 'agent.real_ratio': {cfg.agent.real_ratio}; COMBO needs 0 < f < 1 "
                         "(f = 1 without rollouts is --algo cql)")
    if cfg.agent.model_retain < cfg.agent.rollout_every:
        raise ValueError(f"config key 'agent.model_retain': {cfg.agent.model_retain} updates is less than one rollout "
                         f"refresh (agent.rollout_every = {cfg.agent.rollout_every}); expected at least that")
    if cfg.agent.td3bc_alpha < 0:
        raise ValueError(f"config key 'agent.td3bc_alpha': {cfg.agent.td3bc_alpha}; expected >= 0 (0 = off)")


def model_buffer_capacity(agent_cfg) -> int:
    """Transitions the model buffer holds: agent.model_retain updates' worth of rollout refreshes."""
    refreshes = -(-agent_cfg.model_retain // agent_cfg.rollout_every)
    return agent_cfg.rollout_batch * agent_cfg.rollout_length * refreshes


def from_dict(d: dict) -> Config:
    """Rebuild a Config from a saved run's config.yaml."""
    return merge(Config(), d, "saved config")
