"""latent-combo: COMBO from pixels in the latent space of a LOMPO-style recurrent world model.

Importing the package registers its pixel envs with Gymnasium: `gymnasium.make("latent_combo/WalkerWalk-v0")`.
"""

__version__ = "0.1.0"

# Gymnasium id -> our env id. Registered with a string entry point, so that `import latent_combo` loads
# neither MuJoCo nor dm_control.
GYM_IDS = {"latent_combo/WalkerWalk-v0": "walker-walk", "latent_combo/CheetahRun-v0": "cheetah-run",
           "latent_combo/HumanoidWalk-v0": "humanoid-walk", "latent_combo/SawyerDoor-v0": "sawyer-door",
           "latent_combo/SawyerDoorClose-v0": "sawyer-door-close"}


def _register_gym_ids() -> None:
    import gymnasium

    for gym_id, env_id in GYM_IDS.items():
        if gym_id not in gymnasium.registry:
            gymnasium.register(gym_id, entry_point="latent_combo.envs:make_env", kwargs={"env_id": env_id})


_register_gym_ids()
