"""Shared test settings: headless plotting, few threads (the suite runs on 2 cores), offline Flower."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import sys
from pathlib import Path

import torch

# Helper modules beside the tests (fixtures, stand-ins) import by bare name even when tests/ is a package.
sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(2)
