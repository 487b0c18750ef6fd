"""The only door to the reference implementation (Hugging Face transformers 4.57.6).

No module of the model's core imports this file or transformers; chapters and tests do, to check
that what we built computes what the reference computes. Four jobs:

1. `reference_config(config)`: our `Qwen25VLConfig` -> a transformers `Qwen2_5_VLConfig`.
2. `build_reference(config, seed)`: the transformers model with random weights (float32, eval
   mode), every parameter random (biases and norm weights too, so that none is trivially 0 or 1).
3. `to_checkpoint_keys` / `from_checkpoint_keys`: the 4.52+ module tree (`model.visual.*`,
   `model.language_model.*`) <-> the key layout of the checkpoints on disk (`visual.*`, `model.*`,
   `lm_head.weight` only when the head is untied), which is also our own module tree.
4. `compare(name, ours, ref, tol)`: a one-line report: max abs error, relative error, PASS/FAIL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .config import Qwen25VLConfig

TRANSFORMERS_VERSION = "4.57.6"  # the pinned reference; 5.x changed the position ids after a video


def _transformers():
    import transformers  # lazily: only chapters and tests need it

    if transformers.__version__ != TRANSFORMERS_VERSION:
        raise RuntimeError(
            f"the reference is transformers=={TRANSFORMERS_VERSION}, found {transformers.__version__}; "
            'reinstall with pip install -e ".[dev]"'
        )
    return transformers


def reference_config(config: Qwen25VLConfig, attn_implementation: str = "sdpa"):
    """Our config as a transformers Qwen2_5_VLConfig (attention: "eager" or "sdpa")."""
    flat = config.to_dict()
    flat["vision_config"]["in_channels"] = flat["vision_config"]["in_chans"]
    hf = _transformers().Qwen2_5_VLConfig(**flat)
    hf._attn_implementation = attn_implementation
    return hf


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Fill every parameter from a seeded generator, in the order of named_parameters().

    Matrices and biases ~ N(0, std); norm weights ~ 1 + N(0, 0.1) (a 1-D tensor named *norm*,
    *ln_q* or ending in `.weight` of a norm). Same seed, same config -> same weights everywhere.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        is_norm = p.ndim == 1 and re.search(r"(norm|ln_q)[^.]*\.weight$", name)
        p.copy_(1 + 0.1 * noise if is_norm else std * noise)
    return model


def build_reference(config: Qwen25VLConfig, seed: int | None = 0, attn_implementation: str = "sdpa",
                    device: str = "cpu"):
    """transformers' Qwen2_5_VLForConditionalGeneration for `config`, float32, eval mode.

    seed=None keeps transformers' own initialisation; device="meta" builds it without memory
    (for counting parameters).
    """
    tf = _transformers()
    hf_config = reference_config(config, attn_implementation)
    with torch.device(device):
        model = tf.Qwen2_5_VLForConditionalGeneration._from_config(hf_config, torch_dtype=torch.float32)
    if seed is not None and device != "meta":
        randomize_(model, seed)
        if config.text_config.tie_word_embeddings:
            model.tie_weights()
    return model.eval()


_TO_CHECKPOINT = [("model.visual.", "visual."), ("model.language_model.", "model.")]


def to_checkpoint_keys(state_dict: dict, tied: bool) -> dict:
    """Reference (4.52+) state dict -> checkpoint key layout (`visual.*`, `model.*`, `lm_head.*`)."""
    out = {}
    for key, value in state_dict.items():
        if key == "lm_head.weight" and tied:
            continue  # the 3B checkpoint stores no lm_head: it is embed_tokens
        for old, new in _TO_CHECKPOINT:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def from_checkpoint_keys(state_dict: dict) -> dict:
    """Checkpoint key layout -> the reference's 4.52+ module tree (inverse of the above)."""
    out = {}
    for key, value in state_dict.items():
        for new, old in ((n, o) for o, n in _TO_CHECKPOINT):
            if key.startswith(new):
                key = old + key[len(new):]
                break
        out[key] = value
    return out


def reference_state_dict(model, config: Qwen25VLConfig) -> dict:
    """The reference model's weights under the checkpoint's key names (ready for our model)."""
    return to_checkpoint_keys(model.state_dict(), config.text_config.tie_word_embeddings)


@dataclass
class Report:
    name: str  # what was compared
    max_abs: float  # max |ours - ref|
    rel: float  # max |ours - ref| / max |ref|
    tol: float  # the bound rel must stay under (0 for integer tensors: exact)
    passed: bool

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        bound = "exact" if self.tol == 0 else f"tol rel < {self.tol:.0e}"
        return f"{verdict} {self.name}: max_abs={self.max_abs:.1e} rel={self.rel:.1e} ({bound})"


def compare(name: str, ours, ref, tol: float = 1e-5, *, check: bool = True, show: bool = True) -> Report:
    """Compare two tensors; relative error = max|ours - ref| / max|ref|; integers must be equal.

    Prints a one-line report (unless show=False) and raises AssertionError on FAIL (unless
    check=False). Shapes must match exactly.
    """
    ours, ref = torch.as_tensor(ours).detach().cpu(), torch.as_tensor(ref).detach().cpu()
    if ours.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}")
    exact = not (ours.is_floating_point() or ref.is_floating_point())
    diff = (ours.double() - ref.double()).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    report = Report(name, max_abs, rel, 0.0 if exact else tol, max_abs == 0 if exact else rel < tol)
    if show:
        print(report)
    if check and not report.passed:
        raise AssertionError(str(report))
    return report
