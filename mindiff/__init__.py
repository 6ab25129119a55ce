"""mindiff: train, sweep and compare minimal diffusion models."""

__version__ = "0.1.0"
