"""Test-wide settings. One torch thread per test process: CI has 2 cores and runs
two pytest-xdist workers, and oversubscribed threads make small forward passes
many times slower."""

import torch

torch.set_num_threads(1)
