"""Benchmarks run on the embedded tiny model with one torch thread unless a test says otherwise."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

torch.set_num_threads(1)
