"""Configuration of Qwen2.5-VL: three dataclasses, the released presets, and config.json reading.

Every field carries a comment. The values come from the released checkpoints' config.json files
(Qwen/Qwen2.5-VL-{3B,7B,72B}-Instruct), not from the transformers class defaults, which differ
(the vision class defaults say hidden_size 3584 and tokens_per_second 4: both wrong for every
released checkpoint).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"  # the project's copy of the real 3B config.json


def read_json_object(file: Path, what: str) -> dict:
    """A JSON file that must hold an object -> the dict; else a ValueError naming the file and the fix."""
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise ValueError(f"{file}: not JSON ({str(e)[:100]}); the file is damaged: {what}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: holds a JSON {type(raw).__name__}, not an object {{name: value}}; {what}")
    return raw


def typed_fields(cls, values: dict, source: str) -> dict:
    """The entries of `values` that are fields of the dataclass `cls`, each checked against its annotation
    (int, float, bool, str, tuple of ints) -> keyword arguments for cls; a wrong type is a ValueError.
    Integers must be >= 0, floats finite and >= 0; the dataclasses check ranges beyond that."""
    checked = {}
    for f in fields(cls):
        if f.name not in values or f.type in ("VisionConfig", "TextConfig"):
            continue
        value, kind = values[f.name], f.type
        if kind.startswith("tuple"):
            good = isinstance(value, (list, tuple)) and all(type(v) is int and v >= 0 for v in value)
            value = tuple(value) if good else value
        elif kind == "float":
            good = type(value) in (int, float) and math.isfinite(value) and value >= 0
        else:
            good = {"int": lambda v: type(v) is int and v >= 0, "bool": lambda v: type(v) is bool,
                    "str": lambda v: isinstance(v, str)}[kind](value)
        if not good:
            what = {"int": "an integer >= 0", "float": "a finite number >= 0", "bool": "true or false",
                    "str": "a string"}.get(kind, "a list of integers >= 0")
            raise ValueError(f"{source}: {f.name} is {json.dumps(value)[:60]}, it must be {what}")
        checked[f.name] = value
    return checked


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{source}: {message}; this config.json is not one Qwen2.5-VL can run")


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 32  # number of vision blocks (ViT layers)
    hidden_size: int = 1280  # width of every patch feature inside the tower
    intermediate_size: int = 3420  # SwiGLU MLP width inside each block (not 3456)
    num_heads: int = 16  # attention heads per block; head_dim = 1280 / 16 = 80
    in_chans: int = 3  # RGB
    patch_size: int = 14  # a patch is 14 x 14 pixels
    temporal_patch_size: int = 2  # ... and 2 frames deep (a still image is repeated to 2 frames)
    spatial_merge_size: int = 2  # the merger joins 2 x 2 neighbouring patches into one token
    window_size: int = 112  # window side in pixels: 112 / 14 = 8 patches = 4 merge units
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)  # blocks that attend over the whole image
    out_hidden_size: int = 2048  # merger output width = the language model's hidden_size
    tokens_per_second: int = 2  # video: temporal position ids advance this many per second
    hidden_act: str = "silu"  # MLP activation inside the blocks

    @property
    def head_dim(self) -> int:  # 80 for every released size
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:  # length of one pixel_values row: 3 * 2 * 14 * 14 = 1176
        return self.in_chans * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int  # rows of the embedding matrix (151936 for 3B: the BPE vocabulary padded)
    hidden_size: int  # width of the residual stream (2048 for 3B)
    intermediate_size: int  # SwiGLU MLP width (11008 for 3B, not 4864)
    num_hidden_layers: int  # decoder layers (36 for 3B)
    num_attention_heads: int  # query heads (16 for 3B)
    num_key_value_heads: int  # key/value heads shared by groups of query heads (2 for 3B: GQA)
    rms_norm_eps: float = 1e-6  # epsilon inside every RMSNorm of the decoder
    rope_theta: float = 1_000_000.0  # base of the rotary frequencies
    max_position_embeddings: int = 128_000  # longest context the model was trained for
    mrope_section: tuple[int, int, int] = (16, 24, 24)  # frequencies given to (time, height, width)
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens' matrix (true for 3B only)
    hidden_act: str = "silu"  # MLP activation

    @property
    def head_dim(self) -> int:  # 128 for every released size
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class GenerationConfig:
    """generation_config.json: how the checkpoint's authors decode. `generate` stops on any of
    eos_token_id and pads with pad_token_id by default; the sampling values are listed for the
    caller (generate(temperature=..., top_p=...); it has no top_k or repetition penalty)."""

    eos_token_id: tuple[int, ...] = (151645, 151643)  # <|im_end|> and <|endoftext|>: either ends a row
    pad_token_id: int = 151643  # <|endoftext|> fills the rows that have finished
    do_sample: bool = False  # the released checkpoints say True, with top_k 1: in effect greedy
    temperature: float = 1.0  # released: 0.1
    top_p: float = 1.0  # released: 0.001
    top_k: int = 0  # 0 = no cut; released: 1
    repetition_penalty: float = 1.0  # released: 1.05

    @staticmethod
    def for_config(config: "Qwen25VLConfig") -> "GenerationConfig":
        """Without a generation_config.json: stop on eos (<|im_end|>) and bos (<|endoftext|>), as the
        released file does, and pad with <|endoftext|>."""
        eos = tuple(dict.fromkeys((config.eos_token_id, config.bos_token_id)))
        return GenerationConfig(eos_token_id=eos, pad_token_id=config.bos_token_id)

    @staticmethod
    def from_pretrained(path: str | Path, config: "Qwen25VLConfig | None" = None) -> "GenerationConfig":
        """Read a checkpoint's generation_config.json (the folder or the file); missing: the defaults."""
        file = Path(path) / "generation_config.json" if Path(path).is_dir() else Path(path)
        base = GenerationConfig() if config is None else GenerationConfig.for_config(config)
        if not file.is_file():
            return base
        raw = read_json_object(file, "delete it to use the defaults")
        values = {f.name: raw[f.name] for f in fields(GenerationConfig) if raw.get(f.name) is not None}
        eos = values.get("eos_token_id", base.eos_token_id)
        values["eos_token_id"] = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        if not values["eos_token_id"] or not all(type(i) is int and i >= 0 for i in values["eos_token_id"]):
            raise ValueError(f"{file}: eos_token_id {eos!r} must be a token id or a list of them; "
                             "fix it, or delete the file to use the defaults")
        try:
            values = typed_fields(GenerationConfig, values, str(file))
        except ValueError as e:
            raise ValueError(f"{e}; fix it, or delete the file to use the defaults") from None
        if not 0 < values.get("top_p", 1.0) <= 1:
            raise ValueError(f"{file}: top_p is {values['top_p']}, it must lie in (0, 1]; fix it, or delete the file")
        return replace(base, **values)


@dataclass(frozen=True)
class Qwen25VLConfig:
    vision_config: VisionConfig  # the vision tower and merger
    text_config: TextConfig  # the language model
    image_token_id: int = 151655  # <|image_pad|>: replaced by visual tokens
    video_token_id: int = 151656  # <|video_pad|>
    vision_start_token_id: int = 151652  # <|vision_start|>
    vision_end_token_id: int = 151653  # <|vision_end|>
    bos_token_id: int = 151643  # <|endoftext|>
    eos_token_id: int = 151645  # <|im_end|>: generation stops here

    @staticmethod
    def preset(name: str) -> "Qwen25VLConfig":
        """The released sizes "3b", "7b", "72b", or "tiny" (a small config for tests and demos)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]

    @staticmethod
    def from_pretrained(path: str | Path) -> "Qwen25VLConfig":
        """Read a checkpoint's config.json (give the folder or the file); flat or nested form."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json at {file}; point at a checkpoint folder or its config.json")
        return Qwen25VLConfig.from_dict(read_json_object(file, "download it again"), source=str(file))

    @staticmethod
    def from_dict(raw: dict, source: str = "config") -> "Qwen25VLConfig":
        """Build from the dict of a config.json: flat (as published) or nested (text_config). Every field
        is checked (type, range, and the shapes agreeing with each other) before anything is built."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: a config is a JSON object {{name: value}}, not a {type(raw).__name__}")
        if raw.get("model_type") != "qwen2_5_vl":
            raise ValueError(
                f"{source}: model_type is {raw.get('model_type')!r}, expected 'qwen2_5_vl'; "
                "this is the config of another model (Qwen2-VL is 'qwen2_vl', Qwen2.5 text is 'qwen2')"
            )
        for part in ("text_config", "vision_config", "rope_scaling"):
            for where in (raw, raw.get("text_config") or {}):
                if not isinstance(where.get(part) or {}, dict):
                    raise ValueError(f"{source}: {part} is a {type(where[part]).__name__}, not an object")
        text = dict(raw.get("text_config") or raw)  # nested form (newer writers) or flat form
        rope = text.get("rope_scaling") or raw.get("rope_scaling") or {}
        kind = rope.get("type") or rope.get("rope_type") or "mrope"
        if kind not in ("mrope", "default"):  # newer writers store M-RoPE as rope_type "default"
            raise ValueError(
                f"{source}: rope_scaling of type {kind!r} is not implemented here: qvl_minimal computes plain "
                f"M-RoPE, and ignoring {kind!r} would silently change every position past the trained length. "
                "Remove the scaling from config.json (keep {'type': 'mrope', 'mrope_section': [16, 24, 24]}) "
                "and keep prompts within 32,768 tokens, or use an implementation that supports it")
        if "mrope_section" in rope:
            text["mrope_section"] = rope["mrope_section"]
        if "tie_word_embeddings" in raw:  # kept at the top level in both forms
            text["tie_word_embeddings"] = raw["tie_word_embeddings"]
        names = {f.name for f in fields(TextConfig)}
        required = {f.name for f in fields(TextConfig) if f.default is MISSING}  # fields without a default
        missing = sorted(required - text.keys())
        if missing:
            raise ValueError(f"{source}: missing required text fields {missing}")
        text_config = TextConfig(**typed_fields(TextConfig, {k: v for k, v in text.items() if k in names}, source))

        vision = dict(raw.get("vision_config") or {})
        vision.setdefault("out_hidden_size", text_config.hidden_size)  # the merger feeds the LLM
        if "in_channels" in vision:  # newer writers rename in_chans
            vision["in_chans"] = vision.pop("in_channels")
        vision_config = VisionConfig(**typed_fields(VisionConfig, vision, f"{source}: vision_config"))

        ids = typed_fields(Qwen25VLConfig, {k: v for k, v in raw.items() if k.endswith("_id")}, source)
        config = Qwen25VLConfig(vision_config=vision_config, text_config=text_config, **ids)
        config.check(source)
        return config

    def check(self, source: str = "config") -> None:
        """The sizes agree with each other and with what this implementation computes; else a ValueError."""
        v, t = self.vision_config, self.text_config
        sizes = {**{f"vision_config.{k}": getattr(v, k) for k in ("depth", "hidden_size", "intermediate_size",
                 "num_heads", "in_chans", "patch_size", "temporal_patch_size", "spatial_merge_size",
                 "window_size", "out_hidden_size", "tokens_per_second")},
                 **{k: getattr(t, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings")}}
        for name, size in sizes.items():
            _require(size >= 1, source, f"{name} is {size}, it must be at least 1")
        _require(t.rms_norm_eps > 0 and t.rope_theta > 0, source,
                 f"rms_norm_eps ({t.rms_norm_eps}) and rope_theta ({t.rope_theta}) must be > 0")
        _require(v.hidden_size % v.num_heads == 0 and t.hidden_size % t.num_attention_heads == 0, source,
                 "hidden_size must be a multiple of the number of heads (vision and text)")
        _require(t.num_attention_heads % t.num_key_value_heads == 0, source,
                 f"num_attention_heads {t.num_attention_heads} is not a multiple of num_key_value_heads "
                 f"{t.num_key_value_heads}")
        _require(len(t.mrope_section) == 3 and 2 * sum(t.mrope_section) == t.head_dim, source,
                 f"mrope_section {list(t.mrope_section)} must be 3 numbers summing to head_dim / 2 = {t.head_dim // 2}")
        _require(v.out_hidden_size == t.hidden_size, source,
                 f"vision_config.out_hidden_size {v.out_hidden_size} differs from hidden_size {t.hidden_size}")
        _require(all(i < v.depth for i in v.fullatt_block_indexes), source,
                 f"fullatt_block_indexes {list(v.fullatt_block_indexes)} name blocks beyond depth {v.depth}")
        _require(v.window_size % (v.patch_size * v.spatial_merge_size) == 0, source,
                 f"window_size {v.window_size} is not a multiple of patch_size x spatial_merge_size")
        _require(v.hidden_act == t.hidden_act == "silu", source,
                 f"hidden_act {v.hidden_act!r} / {t.hidden_act!r}: only 'silu' is implemented here")

    def to_dict(self) -> dict:
        """The flat config.json form the released checkpoints use."""
        text = asdict(self.text_config)
        mrope = list(text.pop("mrope_section"))
        vision = asdict(self.vision_config)
        vision["fullatt_block_indexes"] = list(vision["fullatt_block_indexes"])
        ids = {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith("_id")}
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            **text,
            **ids,
            "rope_scaling": {"type": "mrope", "mrope_section": mrope},
            "vision_config": vision,
        }

    def replace(self, **changes) -> "Qwen25VLConfig":
        """A copy with fields changed; "vision_config" / "text_config" take dicts of changes."""
        v = replace(self.vision_config, **changes.pop("vision_config", {}))
        t = replace(self.text_config, **changes.pop("text_config", {}))
        return replace(self, vision_config=v, text_config=t, **changes)


def _released(hidden, layers, heads, kv_heads, intermediate, vocab, tied) -> Qwen25VLConfig:
    return Qwen25VLConfig(
        vision_config=VisionConfig(out_hidden_size=hidden),
        text_config=TextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            tie_word_embeddings=tied,
        ),
    )


PRESETS: dict[str, Qwen25VLConfig] = {
    "3b": _released(2048, 36, 16, 2, 11008, 151936, tied=True),
    "7b": _released(3584, 28, 28, 4, 18944, 152064, tied=False),
    "72b": _released(8192, 80, 64, 8, 29568, 152064, tied=False),
    # Small enough to run in milliseconds, yet every mechanism is live: 2 of its 4 vision blocks
    # use full attention, GQA groups of 2, an untied head, and the real vocabulary size (so the
    # real special-token ids work).
    "tiny": Qwen25VLConfig(
        vision_config=VisionConfig(
            depth=4, hidden_size=64, intermediate_size=96, num_heads=4, out_hidden_size=64,
            fullatt_block_indexes=(1, 3),
        ),
        text_config=TextConfig(
            vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3),
        ),
    ),
}
