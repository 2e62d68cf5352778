"""Training loops (latent diffusion model stages, classifiers) with checkpoint/resume and progress reporting."""
