"""QwenTokenizer: Qwen's byte-level BPE (a `tokenizers.Tokenizer`) with the special token ids Qwen2.5-VL needs.

    QwenTokenizer(backend, chat_template, source)   checks that every id of SPECIAL_TOKENS is where the
                                                    model's embedding rows expect it
    render_chat_template(template, messages)        a checkpoint's jinja chat template, as transformers renders it

The prompt around it (encode_chat, the pads for visual tokens) is tokenizer.py's; finding and reading
the files is tokenizer_files.py's. Both build on this module, which imports neither.
"""

from __future__ import annotations

import functools
import json

import torch
from tokenizers import Tokenizer

SPECIAL_TOKENS = {  # fixed ids: they index rows of the checkpoint's embedding matrix
    "<|endoftext|>": 151643,  # bos and pad
    "<|im_start|>": 151644,  # a chat turn begins: <|im_start|>role\n
    "<|im_end|>": 151645,  # a chat turn ends; eos of generation
    "<|object_ref_start|>": 151646,  # grounding: <|object_ref_start|>the red car<|object_ref_end|>
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,  # grounding: <|box_start|>(x1,y1),(x2,y2)<|box_end|>
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,  # an image or video begins
    "<|vision_end|>": 151653,  # ... and ends
    "<|vision_pad|>": 151654,  # unused
    "<|image_pad|>": 151655,  # one per visual token of an image
    "<|video_pad|>": 151656,  # one per visual token of a video
}
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


class QwenTokenizer:
    """encode(text) -> ids, decode(ids) -> text, and the special token ids as attributes.

    A thin wrapper over a `tokenizers.Tokenizer` (the fast Rust implementation of byte-level BPE);
    chapter 06 rebuilds the algorithm in plain Python and checks it against this.
    """

    def __init__(self, backend: Tokenizer, chat_template: str | None = None, source: str = "?"):
        self.backend, self.chat_template, self.source = backend, chat_template, source
        for token, expected in SPECIAL_TOKENS.items():  # every id the model relies on
            found = backend.token_to_id(token)
            if found != expected:
                raise ValueError(
                    f"{source}: {token} has id {found}, Qwen2.5-VL needs {expected}; these are not "
                    "Qwen2.5-VL tokenizer files (use the checkpoint's tokenizer.json)"
                )
        self.special_tokens = dict(SPECIAL_TOKENS)
        self.pad_id = self.bos_id = SPECIAL_TOKENS["<|endoftext|>"]
        self.im_start_id = SPECIAL_TOKENS["<|im_start|>"]
        self.eos_id = self.im_end_id = SPECIAL_TOKENS["<|im_end|>"]
        self.vision_start_id = SPECIAL_TOKENS["<|vision_start|>"]
        self.vision_end_id = SPECIAL_TOKENS["<|vision_end|>"]
        self.image_pad_id = SPECIAL_TOKENS[IMAGE_PAD]
        self.video_pad_id = SPECIAL_TOKENS[VIDEO_PAD]

    @property
    def vocab_size(self) -> int:  # BPE pieces + added tokens: 151665 (the model's rows: 151936)
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, split_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Added-token strings written in the text (<|image_pad|>) become their
        one id; with split_special_tokens=True (as for a user's text) they are plain characters."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}; for a batch, encode each text")
        backend = self.text_backend if split_special_tokens else self.backend
        return backend.encode(text, add_special_tokens=False).ids

    def tokens(self, text: str, split_special_tokens: bool = False) -> list[str]:
        """The pieces of `text` as vocabulary strings (bytes shown through the byte-to-char map)."""
        backend = self.text_backend if split_special_tokens else self.backend
        return backend.encode(text, add_special_tokens=False).tokens

    @functools.cached_property
    def text_backend(self) -> Tokenizer:
        """The same BPE, normaliser and pre-split without the 22 added tokens: every string is text.
        (The backend's own `encode_special_tokens` flag would still match <tool_call> and the other
        added tokens that are not marked special.)"""
        plain = Tokenizer(self.backend.model)  # shares the vocabulary and merges, no copy
        for part in ("normalizer", "pre_tokenizer", "decoder"):
            if getattr(self.backend, part) is not None:
                setattr(plain, part, getattr(self.backend, part))
        return plain

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of a list / 1-D tensor of ids (special tokens kept unless skip_special_tokens)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        if ids and not isinstance(ids[0], int):
            raise ValueError("decode takes one sequence of ids; for a batch, decode each row")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render this tokenizer's chat template (the checkpoint's chat_template.json) with jinja2."""
        if self.chat_template is None:
            raise ValueError(f"{self.source} has no chat template; use build_chat_prompt(...) instead")
        return render_chat_template(self.chat_template, messages, add_generation_prompt, **kwargs)

    def __repr__(self) -> str:
        return f"QwenTokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = True,
                         **kwargs) -> str:
    """Render a jinja chat template the way transformers does (sandboxed, trim/lstrip blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # only this function needs jinja2

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **kwargs)
