"""Chapter 06's exercises: the chat prompt, the pad expansion, the splice, a conversation, two quizzes.

    06.1  my_chat_prompt(question, num_images=0, num_videos=0, system=...) -> the ChatML prompt (str)
    06.2  my_expand(text, grids, pad="<|image_pad|>", merge=2) -> text with t*h*w/merge^2 pads per grid
    06.3  my_splice(embeds (B, L, D), input_ids (B, L), features (N, D), token_id) -> (B, L, D)
    06.4  quiz: tokens of the prompt with the photo and a 1000 x 1000 px image, the chapter's question
    06.5  quiz: the indices of the second image's pads in a two-image prompt
    06.6  my_two_turn_prompt(question_1, answer_1, question_2, images_1=1, images_2=0, system=...) -> str:
          a conversation with one answered turn, as the released chat template renders it

Every answer is compared with the library (`qvl_minimal.tokenizer`, `qvl_minimal.model`): prompts with
images and videos, Chinese and multi-line questions; expansions of images and of videos with several
time steps, and a refused count mismatch; splices into a batch of two rows, in prompt order; the
two-turn conversation against the released chat template (`QWEN25VL_CHAT_TEMPLATE`, rendered by jinja).
"""

from __future__ import annotations

import functools

import torch

from ..model import splice_visual_tokens
from ..tokenizer import (DEFAULT_SYSTEM, IMAGE_PAD, QWEN25VL_CHAT_TEMPLATE, VIDEO_PAD, build_chat_prompt,
                         encode_chat, expand_vision_pads, render_chat_template)
from .core import assert_answer, assert_tensor_matches, exercise

QUESTION = "What is this person wearing?"  # the chapter's question


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from ..tokenizer import load_tokenizer  # a second or two: loaded once per session

    return load_tokenizer()

PROMPTS = [  # (question, num_images, num_videos, system, what)
    (QUESTION, 1, 0, DEFAULT_SYSTEM, "the chapter's prompt"),
    (QUESTION, 0, 0, DEFAULT_SYSTEM, "text only"),
    ("Compare them.", 2, 0, "Be brief.", "two images, another system prompt"),
    ("What happens?", 0, 1, DEFAULT_SYSTEM, "a video"),
    ("两张图和一段视频有什么共同点？", 2, 1, "用中文回答。", "images, a video, Chinese text"),
    ("line one\nline two\n", 1, 0, DEFAULT_SYSTEM, "a multi-line question"),
    ("", 1, 0, DEFAULT_SYSTEM, "an empty question"),
]


@exercise("06.1", "the chat prompt")
def _(chat_prompt_mine) -> str:
    for question, images, videos, system, what in PROMPTS:
        mine = chat_prompt_mine(question, images, videos, system=system)
        expected = build_chat_prompt(question, images, videos, system=system)
        if mine != expected:
            first = next((i for i, (a, b) in enumerate(zip(mine, expected)) if a != b), min(len(mine), len(expected)))
            raise AssertionError(f"prompt for {images} image(s), {videos} video(s) [{what}]: differs from character "
                                 f"{first} on (yours has {len(mine)} characters, the right one {len(expected)}); "
                                 f"print repr() of yours and look at the newlines and the order of the turns")
    return f"{len(PROMPTS)} prompts incl. videos, Chinese and an empty question, exact"


EXPANSIONS = [  # (grids, the pad token, what)
    ([(1, 42, 36)], IMAGE_PAD, "the photo: 378 pads"),
    ([(1, 4, 4), (1, 2, 6)], IMAGE_PAD, "two images, the k-th pad takes the k-th grid"),
    ([(4, 16, 20)], VIDEO_PAD, "a video of 4 time steps"),
    ([(3, 6, 10), (1, 2, 2)], VIDEO_PAD, "two videos, one of a single merge unit"),
    ([], IMAGE_PAD, "no image: the text is unchanged"),
]


def _counts_message(mine: str, expected: str, pad: str, what: str) -> str:
    return (f"{what}: your text has {mine.count(pad)} {pad}, the right one {expected.count(pad)}"
            + ("" if mine.count(pad) != expected.count(pad) else "; the pads are in the wrong places"))


@exercise("06.2", "pad expansion")
def _(expand_mine) -> str:
    for grids, pad, what in EXPANSIONS:
        n = len(grids)
        text = build_chat_prompt("Describe.", n if pad == IMAGE_PAD else 0, n if pad == VIDEO_PAD else 0)
        mine = expand_mine(text, [list(g) for g in grids], pad=pad)
        kw = {"image_grid_thw" if pad == IMAGE_PAD else "video_grid_thw": grids or None}
        expected = expand_vision_pads(text, **kw)
        if mine != expected:
            raise AssertionError(_counts_message(mine, expected, pad, f"grids {grids} [{what}]"))
    text = build_chat_prompt("Describe.", 1)
    try:
        expand_mine(text, [[1, 4, 4], [1, 2, 2]])
    except ValueError:
        pass
    else:
        raise AssertionError("1 <|image_pad|> in the text but 2 grids must raise ValueError: the counts must match")
    return f"{len(EXPANSIONS)} expansions incl. videos of several time steps, and a refused mismatch, exact"


def _batch(pads_per_row: list[int], length: int, token_id: int, dim: int):
    ids = torch.randint(0, 151000, (len(pads_per_row), length))  # (B, L) text
    for row, n in enumerate(pads_per_row):
        start = int(torch.randint(0, length - n + 1, ()))
        ids[row, start:start + n] = token_id
    return torch.randn(len(pads_per_row), length, dim), ids, torch.randn(sum(pads_per_row), dim)


@exercise("06.3", "splicing visual tokens")
def _(splice_mine) -> str:
    cases = [([12], 30, IMAGE_PAD, "one prompt"), ([5, 9], 24, IMAGE_PAD, "two rows: features in row-major order"),
             ([3, 0, 4], 10, VIDEO_PAD, "three rows, one without pads, video pads"), ([0], 6, IMAGE_PAD, "no pads")]
    ids_of = {IMAGE_PAD: 151655, VIDEO_PAD: 151656}
    for pads, length, pad, what in cases:
        embeds, input_ids, features = _batch(pads, length, ids_of[pad], 16)
        before = embeds.clone()
        mine = splice_mine(embeds, input_ids, features, ids_of[pad])
        if not torch.equal(embeds, before):
            raise AssertionError(f"[{what}]: your function changed the embeddings it was given; write into a copy")
        expected = splice_visual_tokens(before, input_ids, features, ids_of[pad])
        assert_tensor_matches(mine, expected, f"spliced embeddings, pads per row {pads} [{what}]")
    embeds, input_ids, features = _batch([4], 10, ids_of[IMAGE_PAD], 8)
    try:
        splice_mine(embeds, input_ids, features[:-1], ids_of[IMAGE_PAD])
    except ValueError:
        pass
    else:
        raise AssertionError("4 pads but 3 features must raise ValueError: the counts must match exactly")
    return f"{len(cases)} batches incl. rows without pads, and a refused mismatch, exact"


SQUARE = (1000, 1000)  # 06.4: the second image, height x width in pixels


def _two_image_tokens() -> int:
    from ..preprocess import smart_resize
    from ..samples import sample_photo

    photo = sample_photo()
    grids = [(1, *(side // 14 for side in smart_resize(photo.height, photo.width))),
             (1, *(side // 14 for side in smart_resize(*SQUARE)))]
    return int(encode_chat(_tokenizer(), QUESTION, image_grid_thw=grids).shape[1])


@exercise("06.4", "tokens of a two-image prompt", expected=_two_image_tokens)
def _(answer) -> str:
    assert_answer(answer, _two_image_tokens(), "tokens",
                  hint="start from the photo's prompt; a second image adds its markers and t*h*w/4 pads, and "
                       "smart_resize rounds each side to the nearest multiple of 28")
    return "exact"


@exercise("06.5", "where the second image lands")
def _(answer) -> str:
    ids = encode_chat(_tokenizer(), "Compare them.", image_grid_thw=[(1, 4, 4), (1, 2, 6)])[0]
    expected = (ids == 151655).nonzero()[4:, 0].tolist()
    mine = answer.tolist() if isinstance(answer, torch.Tensor) else list(answer) if answer is not None else answer
    assert_answer(mine, expected, "indices of the second image's pads",
                  hint="count the tokens of the system turn, the user header, image 1 and the markers between")
    return "exact"


def _conversation(question_1, answer_1, question_2, images_1=1, images_2=0, system=DEFAULT_SYSTEM) -> str:
    """The released chat template's rendering of system, user, assistant, user, and an open assistant turn."""
    def user(question, images):
        return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": question}]}

    messages = [{"role": "system", "content": system}, user(question_1, images_1),
                {"role": "assistant", "content": answer_1}, user(question_2, images_2)]
    return render_chat_template(QWEN25VL_CHAT_TEMPLATE, messages, add_generation_prompt=True)


CONVERSATIONS = [  # (question_1, answer_1, question_2, images_1, images_2, system, what)
    (QUESTION, "A dark suit and a white shirt.", "What colour is the tie?", 1, 0, DEFAULT_SYSTEM,
     "an image in the first turn"),
    ("Describe the first picture.", "A portrait.", "And this one?", 1, 1, DEFAULT_SYSTEM,
     "an image in each turn"),
    ("Hi.", "Hello! How can I help?", "Compare these.", 0, 2, "Be brief.",
     "two images in the second turn, another system prompt"),
    ("这是什么？", "一张照片。\n照片里有一个人。", "她穿着什么？", 1, 0, "用中文回答。",
     "Chinese, an answer of two lines"),
]


@exercise("06.6", "a two-turn conversation by hand")
def _(two_turn_mine) -> str:
    for q1, a1, q2, images_1, images_2, system, what in CONVERSATIONS:
        mine = two_turn_mine(q1, a1, q2, images_1=images_1, images_2=images_2, system=system)
        expected = _conversation(q1, a1, q2, images_1, images_2, system)
        if not isinstance(mine, str):
            raise AssertionError(f"[{what}]: return the prompt as one str, got {type(mine).__name__}")
        if mine != expected:
            first = next((i for i, (a, b) in enumerate(zip(mine, expected)) if a != b),
                         min(len(mine), len(expected)))
            raise AssertionError(f"conversation [{what}]: differs from character {first} on (yours has "
                                 f"{len(mine)} characters, the right one {len(expected)}); print repr() of "
                                 f"yours around character {first}: how does the model's earlier answer end, "
                                 f"and where do the images of each turn go?")
    return f"{len(CONVERSATIONS)} conversations incl. images in either turn and Chinese, exact"
