"""Inputs and model pairs shared by test_model.py and test_generate.py (not a test module)."""

import torch

import qvl_minimal as qvl
from qvl_minimal.random_prompts import PAD, left_padded, sample  # noqa: F401 (re-exported for the tests)
from qvl_minimal.reference import build_reference, reference_state_dict


def wide_config():
    return qvl.Qwen25VLConfig.preset("3b").replace(
        text_config={"num_hidden_layers": 2}, vision_config={"depth": 2, "fullatt_block_indexes": (1,)})


def load_pair(cfg):
    """(ours, reference) with the same random weights. The reference's tensors are shared, not copied
    (assign=True): the 3B-wide pair would otherwise hold its 1.2 GB embedding twice."""
    ref = build_reference(cfg)
    with torch.device("meta"):
        ours = qvl.Qwen25VL(cfg)
    ours.load_state_dict(reference_state_dict(ref, cfg), strict=True, assign=True)
    return ours.eval(), ref
