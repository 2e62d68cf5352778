"""Sampling (DDPM/DDIM with classifier-free guidance), the hub's diversity filter and the privacy screen."""
