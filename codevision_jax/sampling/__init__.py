"""Sampling: the jitted prefill/decode sampler (`Sampler`, `generate`)."""

from codevision_jax.sampling.sampler import Sampler, generate

__all__ = ["Sampler", "generate"]
