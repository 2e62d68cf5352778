"""Shared test settings: headless plotting, few threads (the suite runs on 2 cores), offline Flower."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import torch

torch.set_num_threads(2)
