"""Metrics, statistics, fidelity measures and the predictions.csv contract."""
