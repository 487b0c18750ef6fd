"""Shared fixtures. Every test is seeded and runs in float32 on the CPU."""

import pytest
import torch

import qvl_minimal as qvl


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_config():
    """4 vision blocks (2 with full attention), 2 decoder layers, real vocabulary size."""
    return qvl.Qwen25VLConfig.preset("tiny")


@pytest.fixture(scope="session")
def photo():
    """grace_hopper.jpg (512 x 600 px), shipped with matplotlib."""
    return qvl.sample_photo()
