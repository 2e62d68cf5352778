"""Study modes (centralized, local, synthetic, mixed, federated, catphishing) composed from the library pieces."""
