"""robust: train, attack, sweep and report adversarial-robustness experiments from Hydra configs."""

__version__ = "0.1.0"
