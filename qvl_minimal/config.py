"""Configuration of Qwen2.5-VL: three dataclasses, the released presets, and config.json reading.

Every field carries a comment. The values come from the released checkpoints' config.json files
(Qwen/Qwen2.5-VL-{3B,7B,72B}-Instruct), not from the transformers class defaults, which differ
(the vision class defaults say hidden_size 3584 and tokens_per_second 4: both wrong for every
released checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"  # the project's copy of the real 3B config.json


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
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{file}: not JSON ({e}); delete it to use the defaults") from None
        values = {f.name: raw[f.name] for f in fields(GenerationConfig) if raw.get(f.name) is not None}
        eos = values.get("eos_token_id", base.eos_token_id)
        values["eos_token_id"] = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        if not all(type(i) is int and i >= 0 for i in values["eos_token_id"]):
            raise ValueError(f"{file}: eos_token_id {eos!r} must be a token id or a list of them")
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
        return Qwen25VLConfig.from_dict(json.loads(file.read_text()), source=str(file))

    @staticmethod
    def from_dict(raw: dict, source: str = "config") -> "Qwen25VLConfig":
        """Build from the dict of a config.json: flat (as published) or nested (text_config)."""
        if raw.get("model_type") != "qwen2_5_vl":
            raise ValueError(
                f"{source}: model_type is {raw.get('model_type')!r}, expected 'qwen2_5_vl'; "
                "this is the config of another model (Qwen2-VL is 'qwen2_vl', Qwen2.5 text is 'qwen2')"
            )
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
            text["mrope_section"] = tuple(rope["mrope_section"])
        if "tie_word_embeddings" in raw:  # kept at the top level in both forms
            text["tie_word_embeddings"] = raw["tie_word_embeddings"]
        names = {f.name for f in fields(TextConfig)}
        required = {f.name for f in fields(TextConfig) if f.default is MISSING}  # fields without a default
        missing = sorted(required - text.keys())
        if missing:
            raise ValueError(f"{source}: missing required text fields {missing}")
        text_config = TextConfig(**{k: v for k, v in text.items() if k in names})

        vision = dict(raw.get("vision_config") or {})
        vision.setdefault("out_hidden_size", text_config.hidden_size)  # the merger feeds the LLM
        if "fullatt_block_indexes" in vision:
            vision["fullatt_block_indexes"] = tuple(vision["fullatt_block_indexes"])
        if "in_channels" in vision:  # newer writers rename in_chans
            vision["in_chans"] = vision.pop("in_channels")
        vnames = {f.name for f in fields(VisionConfig)}
        vision_config = VisionConfig(**{k: v for k, v in vision.items() if k in vnames})

        ids = {f.name: raw[f.name] for f in fields(Qwen25VLConfig) if f.name.endswith("_id") and f.name in raw}
        return Qwen25VLConfig(vision_config=vision_config, text_config=text_config, **ids)

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
