"""The whole model: vision tower + language model + head, and greedy / sampled generation.

    pixels --visual--> visual tokens --splice into the prompt's placeholders--> inputs_embeds
    input_ids, grids --get_rope_index--> (t, h, w) position ids, one delta per row
    inputs_embeds, positions --model (decoder)--> hidden states --head--> logits

Module names equal the checkpoint's keys: `visual.*`, `model.*`, and `lm_head.weight` only when
the head is not tied to the embedding table (3B ties them: logits = h @ embed_tokens.weight.T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GenerationConfig, Qwen25VLConfig
from .positions import get_rope_index
from .storage import upcast
from .text import KVCache, TextModel
from .vision import VisionTransformer


def splice_visual_tokens(inputs_embeds, input_ids, features, token_id: int, name: str = "visual"):
    """Replace, in order, the embeddings at positions where input_ids == token_id by `features`.

    inputs_embeds (B, L, D), input_ids (B, L), features (N, D) -> (B, L, D). The batch is read row
    by row, left to right, so the features of several images (across rows too) must come in
    prompt order. N must equal the number of placeholders exactly.
    """
    slots = input_ids == token_id  # (B, L)
    n_slots, n_features = int(slots.sum()), features.shape[0]
    if n_slots != n_features:
        raise ValueError(
            f"{name} tokens and features do not match: input_ids hold {n_slots} placeholder tokens "
            f"(id {token_id}) but the vision tower produced {n_features} features; each image or video "
            "needs exactly t*h*w/4 placeholders (its grid_thw in patches / the 2x2 merge)")
    out = inputs_embeds.clone()
    out[slots] = features.to(out.dtype)  # (N, D) written in row-major order of the slots
    return out


def _check_pair(pixels, grid, what: str, grid_name: str):
    if (pixels is None) != (grid is None):
        given, missing = (what, grid_name) if grid is None else (grid_name, what)
        raise ValueError(f"{given} given without {missing}; pass both (the preprocessor returns them together)")


class Qwen25VL(nn.Module):
    """Qwen2.5-VL: `visual` (VisionTransformer), `model` (TextModel), `lm_head` if untied."""

    def __init__(self, config: Qwen25VLConfig):
        super().__init__()
        self.config = config
        self.generation_config = GenerationConfig.for_config(config)  # load_pretrained reads the checkpoint's
        self.visual = VisionTransformer(config.vision_config)
        self.model = TextModel(config.text_config)
        if not config.text_config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)

    @property
    def language(self) -> TextModel:
        """The language model (here `model`; Qwen3-VL keeps it at `model.language_model`)."""
        return self.model

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., D) -> logits (..., vocab)."""
        if not self.config.text_config.tie_word_embeddings:
            return self.lm_head(h)  # (..., vocab)
        if getattr(self, "packed_head", None) is not None:  # packed.py's fast path: a packed copy of the table
            return self.packed_head(h)  # (..., vocab)
        weight = self.language.embed_tokens.weight  # (vocab, D): the tied head multiplies by the table
        if weight.dtype != h.dtype:  # bfloat16 storage (storage.py): the table upcast into the scratch buffer
            weight = upcast(self, weight)  # (vocab, D) float32
        return F.linear(h, weight)  # (..., vocab)

    def check_inputs(self, input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                     video_grid_thw, second_per_grid_ts):
        """Raise a ValueError naming the problem and the fix for inputs the model cannot use."""
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError("input_ids must be an integer tensor (B, L) of token ids; tokenize the prompt first")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (batch, seq_len) with seq_len >= 1, got {tuple(input_ids.shape)}; "
                             "add a batch axis with input_ids[None]")
        vocab = cfg.text_config.vocab_size
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab):
            raise ValueError(f"input_ids must lie in [0, {vocab}), found {int(input_ids.min())}.."
                             f"{int(input_ids.max())}; use the tokenizer of this checkpoint")
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                                 f"{tuple(input_ids.shape)}; give one 0/1 flag per token")
            if not ((attention_mask == 0) | (attention_mask == 1)).all():
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        _check_pair(pixel_values, image_grid_thw, "pixel_values", "image_grid_thw")
        _check_pair(pixel_values_videos, video_grid_thw, "pixel_values_videos", "video_grid_thw")
        if second_per_grid_ts is not None and video_grid_thw is None:
            raise ValueError("second_per_grid_ts given without a video; it belongs to pixel_values_videos")
        for token_id, pixels, what in ((cfg.image_token_id, pixel_values, "image"),
                                       (cfg.video_token_id, pixel_values_videos, "video")):
            n = int((input_ids == token_id).sum())
            if n and pixels is None:
                raise ValueError(f"input_ids hold {n} <|{what}_pad|> tokens but no {what} pixels were given; "
                                 f"pass the preprocessed {what} or remove its placeholders")

    def embed(self, input_ids, pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
              video_grid_thw=None) -> torch.Tensor:
        """Token embeddings with the visual features spliced in. -> (B, L, D)

        Pixels go to the vision tower's device and dtype (as the reference casts them), whatever the
        preprocessor gave (float32 on the CPU); the features then take the text embedding's dtype.
        """
        cfg = self.config
        x = self.model.embed_tokens(input_ids)  # (B, L, D)
        tower = self.visual.patch_embed.proj.weight  # its device and dtype are the tower's
        for pixels, grid, token_id, what in ((pixel_values, image_grid_thw, cfg.image_token_id, "image"),
                                             (pixel_values_videos, video_grid_thw, cfg.video_token_id, "video")):
            if pixels is not None:
                features = self.visual(pixels.to(device=tower.device, dtype=tower.dtype), grid)  # (N, D)
                x = splice_visual_tokens(x, input_ids, features.to(x.device), token_id, what)
        return x

    def prefill(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None,
                cache: KVCache | None = None):
        """Run the whole prompt once. -> (hidden states (B, L, D), position deltas (B, 1))."""
        self.check_inputs(input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                          video_grid_thw, second_per_grid_ts)
        x = self.embed(input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        position_ids, deltas = get_rope_index(self.config, input_ids, image_grid_thw, video_grid_thw,
                                              second_per_grid_ts, attention_mask)  # (3, B, L), (B, 1)
        return self.model(x, position_ids, attention_mask, cache), deltas  # (B, L, D), (B, 1)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None) -> torch.Tensor:
        """Logits (B, L, vocab) of every position (no cache). Padded positions hold garbage."""
        h, _ = self.prefill(input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                            video_grid_thw, second_per_grid_ts)
        return self.head(h)  # (B, L, vocab)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, attention_mask=None, pixel_values=None,
                 image_grid_thw=None, pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None,
                 temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 on_token=None) -> torch.Tensor:
        """New token ids (B, n), n <= max_new_tokens: prefill once, then one token at a time.

        Greedy (argmax) when temperature == 0, else sampling from softmax(logits / temperature)
        restricted to the smallest set of tokens whose probability reaches top_p. A row stops
        at eos (any id of `eos_token_id`, by default model.generation_config's: <|im_end|> and
        <|endoftext|>); afterwards it is filled with pad
        (<|endoftext|>) until every row has stopped. Batches must be LEFT padded, so that every
        row's next token goes at the end. A new token at cache position p gets the position id
        p + delta on all three axes (delta = last prompt id + 1 - L from get_rope_index: an image
        spends fewer ids than tokens, a slow video may spend more, padding spends none).
        on_token, if given, is called with each new (B,) token tensor as soon as it is chosen.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
        defaults = self.generation_config  # generation_config.json: stop on <|im_end|> or <|endoftext|>
        device = self.language.embed_tokens.weight.device
        if temperature > 0 and generator is not None and generator.device.type != device.type:
            raise ValueError(f"the generator is on {generator.device} but the model samples on {device}; make "
                             f"it there: torch.Generator(device={str(device)!r}).manual_seed(seed)")
        eos = torch.tensor(defaults.eos_token_id if eos_token_id is None else eos_token_id).flatten()
        pad = defaults.pad_token_id if pad_token_id is None else pad_token_id  # <|endoftext|> pads
        B = input_ids.shape[0]
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if attention_mask.shape == input_ids.shape and input_ids.ndim == 2 and not attention_mask[:, -1].all():
            raise ValueError("a row ends with padding (attention_mask[:, -1] == 0); pad on the LEFT for generation")

        cache = self.language.new_cache()
        h, deltas = self.prefill(input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                                 video_grid_thw, second_per_grid_ts, cache)  # (B, L, D), (B, 1)
        logits = self.head(h[:, -1])  # (B, vocab): only the last position predicts
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)  # (B,)
        new_tokens = []
        for step in range(max_new_tokens):
            token = next_token(logits, temperature, top_p, generator)  # (B,)
            token = torch.where(done, torch.full_like(token, pad), token)
            new_tokens.append(token)
            if on_token is not None:
                on_token(token)  # e.g. print it as it comes (streaming)
            done |= torch.isin(token, eos.to(token.device))
            if done.all() or step == max_new_tokens - 1:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)  # (B, T)
            position_ids = (cache.length + deltas).expand(3, B, 1)  # (3, B, 1): same id on t, h, w
            x = self.language.embed_tokens(token[:, None])  # (B, 1, D)
            h = self.language(x, position_ids, attention_mask, cache)  # (B, 1, D)
            logits = self.head(h[:, -1])  # (B, vocab)
        return torch.stack(new_tokens, dim=1)  # (B, n)


def next_token(logits, temperature: float = 0.0, top_p: float = 1.0, generator=None) -> torch.Tensor:
    """Pick one token per row from logits (B, vocab): argmax, or temperature / top-p sampling. -> (B,)"""
    if temperature == 0:  # float32 first: the same values (exact) and the same first maximum, 5x faster than in bfloat16
        return logits.float().argmax(dim=-1)  # (B,)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, vocab)
    probs, order = probs.sort(dim=-1, descending=True)  # (B, vocab) most likely first
    before = probs.cumsum(dim=-1) - probs  # (B, vocab) mass of the tokens ranked above each one
    if top_p < 1:
        probs = probs.masked_fill(before >= top_p, 0.0)  # keep the top tokens until their mass reaches top_p
    choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1); multinomial renormalises
    return order.gather(-1, choice)[:, 0]  # (B,)
