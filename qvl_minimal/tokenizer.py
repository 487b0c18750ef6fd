"""Text -> token ids, the chat prompt, and room for the picture: one pad per visual token.

Qwen2.5-VL reads text with the Qwen byte-level BPE tokenizer (分词器): UTF-8 bytes, pre-split by a
regex, merged by 151,387 learned merges into a vocabulary of 151,643 pieces, plus added special
tokens (特殊标记) from id 151643 on. An image enters the prompt as one `<|image_pad|>` between
`<|vision_start|>` and `<|vision_end|>`; before the model runs, that single pad is expanded into
one pad per visual token (视觉标记), t*h*w / merge_size**2 of them, whose embeddings the model then
replaces, in order, with the vision tower's output (model.py).

User text is text: `encode_chat` places the template's control tokens (<|im_start|>, the vision
block) as ids itself and encodes the question and the system prompt with the special-token strings
read as plain characters, so a question holding "<|im_end|>\n<|im_start|>system" cannot open a
turn of its own (the reference's processor, by default, would read those as control tokens).

Finding, loading and writing the tokenizer files (`load_tokenizer`) is tokenizer_files.py's job.
"""

from __future__ import annotations

import functools
import json

import torch
from tokenizers import Tokenizer

# defined in tokenizer_files.py; importable from here too, beside encode_chat (chapters 06, 09, 11 and the
# appendix import them from this module)
from .tokenizer_files import LAST_ADDED_ID, QWEN25VL_CHAT_TEMPLATE, load_tokenizer, tokenizer_folder  # noqa: F401
from .vision import check_grid

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
DEFAULT_SYSTEM = "You are a helpful assistant."
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


def chat_messages(question: str, num_images: int = 0, num_videos: int = 0,
                  system: str = DEFAULT_SYSTEM) -> list[dict]:
    """The same prompt as build_chat_prompt, as the messages a chat template takes."""
    content = [{"type": "image"}] * num_images + [{"type": "video"}] * num_videos
    content = content + [{"type": "text", "text": question}]
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def chat_parts(question: str, num_images: int = 0, num_videos: int = 0,
               system: str = DEFAULT_SYSTEM) -> list[tuple[str, bool]]:
    """build_chat_prompt's text as (piece, is_control) pairs: the template's own control tokens
    (is_control=True) apart from the text around them, the question and the system prompt."""
    for name, n in (("num_images", num_images), ("num_videos", num_videos)):
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    if not isinstance(question, str) or not isinstance(system, str):
        raise TypeError("question and system must be str")
    start, end = ("<|im_start|>", True), ("<|im_end|>", True)
    vision = [("<|vision_start|>", True), (IMAGE_PAD, True), ("<|vision_end|>", True)] * num_images
    vision += [("<|vision_start|>", True), (VIDEO_PAD, True), ("<|vision_end|>", True)] * num_videos
    return [start, ("system\n", False), (system, False), end, ("\n", False),
            start, ("user\n", False), *vision, (question, False), end, ("\n", False),
            start, ("assistant\n", False)]


def build_chat_prompt(question: str, num_images: int = 0, num_videos: int = 0,
                      system: str = DEFAULT_SYSTEM) -> str:
    """One user turn in Qwen's chat format (ChatML), ready for the assistant's answer.

    Each image (then each video) is one <|vision_start|><|image_pad|><|vision_end|> block before
    the question; expand_vision_pads then makes room for its visual tokens. The text is for reading:
    encode_chat (not tokenizer.encode of this text) keeps the question's text from becoming control tokens.
    """
    return "".join(piece for piece, _ in chat_parts(question, num_images, num_videos, system))


def vision_token_counts(grid_thw, merge_size: int = 2, name: str = "grid_thw") -> list[int]:
    """Visual tokens per image/video: t * h * w / merge_size**2 (the merger joins 2x2 patches)."""
    if grid_thw is None or len(grid_thw) == 0:
        return []
    grid = check_grid(grid_thw, merge_size, name)  # (num, 3), checked
    return (grid.prod(dim=-1) // merge_size**2).tolist()


def expand_vision_pads(text: str, image_grid_thw=None, video_grid_thw=None, merge_size: int = 2) -> str:
    """Replace the k-th <|image_pad|> by t*h*w/merge_size**2 copies for the k-th image grid
    (and the same for <|video_pad|> and video grids). Counts of pads and grids must match."""
    for pad, grid, name in ((IMAGE_PAD, image_grid_thw, "image_grid_thw"),
                            (VIDEO_PAD, video_grid_thw, "video_grid_thw")):
        counts, parts = vision_token_counts(grid, merge_size, name), text.split(pad)
        if len(parts) - 1 != len(counts):
            hint = (f" (was the text expanded already, or does the question hold {pad}? encode_chat "
                    "reads the question as plain text)") if len(parts) - 1 > len(counts) > 0 else ""
            raise ValueError(f"the text has {len(parts) - 1} {pad} but {name} has {len(counts)} rows{hint}; "
                             f"write one {pad} per {name.split('_')[0]} (build_chat_prompt does)")
        text = parts[0] + "".join(pad * n + part for n, part in zip(counts, parts[1:]))
    return text


def encode_chat(tokenizer: QwenTokenizer, question: str, image_grid_thw=None, video_grid_thw=None,
                system: str = DEFAULT_SYSTEM, merge_size: int = 2) -> torch.Tensor:
    """Chat prompt -> input_ids (1, L) with one pad per visual token, for the model.

    The template's control tokens are placed as ids; the text between them is encoded with the
    special-token strings read as plain text, so the question and the system prompt never yield a
    control id. For every ordinary question the ids equal the reference processor's (the Rust
    tokenizer also encodes the text between added tokens piece by piece).
    """
    counts = {IMAGE_PAD: vision_token_counts(image_grid_thw, merge_size, "image_grid_thw"),
              VIDEO_PAD: vision_token_counts(video_grid_thw, merge_size, "video_grid_thw")}
    parts = chat_parts(question, len(counts[IMAGE_PAD]), len(counts[VIDEO_PAD]), system)
    pads = {pad: iter(n) for pad, n in counts.items()}  # the k-th pad gets the k-th grid's count
    ids, text = [], ""
    for piece, control in parts + [("", True)]:  # a final control piece flushes the text
        if not control:
            text += piece
            continue
        ids += tokenizer.encode(text, split_special_tokens=True) if text else []
        text = ""
        if piece:
            ids += [tokenizer.special_tokens[piece]] * (next(pads[piece]) if piece in pads else 1)
    return torch.tensor([ids], dtype=torch.long)  # (1, L)
