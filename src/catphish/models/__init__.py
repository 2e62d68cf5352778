"""Pure ``nn.Module``s (autoencoder, diffusion UNet, classifiers): no I/O, no CLI, no site logic."""
