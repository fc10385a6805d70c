"""Numerics: diffusion schedules, samplers, MCMC, the denoiser spec, data spaces, exact toy teachers."""
