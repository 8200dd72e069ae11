"""latent-combo: COMBO from pixels in the latent space of a LOMPO-style recurrent world model."""

__version__ = "0.1.0"
