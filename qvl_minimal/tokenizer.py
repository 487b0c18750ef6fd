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

The QwenTokenizer class (the BPE and the special ids) is qwen_tokenizer.py's; finding, loading and
writing the tokenizer files (`load_tokenizer`) is tokenizer_files.py's.
"""

from __future__ import annotations

import torch

# defined in qwen_tokenizer.py and tokenizer_files.py (which build on each other in that order, never on this
# module); importable from here too, beside encode_chat (chapters 06, 09, 11 and the appendix import them so)
from .qwen_tokenizer import IMAGE_PAD, SPECIAL_TOKENS, VIDEO_PAD, QwenTokenizer, render_chat_template  # noqa: F401
from .tokenizer_files import LAST_ADDED_ID, QWEN25VL_CHAT_TEMPLATE, load_tokenizer, tokenizer_folder  # noqa: F401
from .vision import check_grid

DEFAULT_SYSTEM = "You are a helpful assistant."


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
    return encode_parts(tokenizer, parts, counts)


def encode_parts(tokenizer: QwenTokenizer, parts: list[tuple[str, bool]], counts: dict) -> torch.Tensor:
    """(piece, is_control) pairs -> input_ids (1, L): control pieces as ids, the k-th <|image_pad|> (or
    <|video_pad|>) repeated counts[pad][k] times, the text between them encoded as plain text."""
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
