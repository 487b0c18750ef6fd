"""Configuration of Qwen3-VL: what differs from Qwen2.5-VL's config, field by field.

Same three-part shape as `qvl_minimal.config` (vision, text, the ids), read from the nested
config.json that Qwen3-VL checkpoints carry (`text_config`, `vision_config`, model_type
"qwen3_vl"). The defaults are transformers 4.57.6's class defaults (Qwen3VLVisionConfig,
Qwen3VLTextConfig); a checkpoint's config.json overrides them.

New or changed fields:
    vision  patch_size 16 (was 14), num_position_embeddings (the learned 48 x 48 position table),
            deepstack_visual_indexes (blocks whose output feeds the decoder), hidden_act
            "gelu_pytorch_tanh"; gone: window_size, fullatt_block_indexes, tokens_per_second
    text    head_dim set on its own (not hidden_size / heads), rope_theta 5e6, mrope_section
            (24, 20, 20) laid out interleaved, attention_bias (False: no q/k/v biases)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..config import read_json_object, typed_fields

MODEL_TYPE = "qwen3_vl"


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{source}: {message}; this config.json is not one Qwen3-VL can run")


@dataclass(frozen=True)
class Qwen3VisionConfig:
    depth: int = 27  # vision blocks
    hidden_size: int = 1152  # width of a patch feature inside the tower
    intermediate_size: int = 4304  # the GELU MLP's width
    num_heads: int = 16  # head_dim = 1152 / 16 = 72
    in_channels: int = 3  # RGB
    patch_size: int = 16  # a patch is 16 x 16 pixels (Qwen2.5-VL: 14)
    temporal_patch_size: int = 2  # ... and 2 frames deep
    spatial_merge_size: int = 2  # 2 x 2 patches -> one token
    out_hidden_size: int = 3584  # merger output width = the decoder's hidden_size
    num_position_embeddings: int = 2304  # learned absolute positions: a 48 x 48 table
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)  # blocks whose output also feeds the decoder
    hidden_act: str = "gelu_pytorch_tanh"  # GELU with the tanh approximation, in the blocks' MLP

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:  # one pixel_values row: 3 * 2 * 16 * 16 = 1536
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def in_chans(self) -> int:  # the name qvl_minimal.vision uses
        return self.in_channels

    @property
    def grid_side(self) -> int:  # 48: the position table is grid_side x grid_side
        return round(self.num_position_embeddings**0.5)

    @property
    def tokens_per_second(self) -> int:
        """0: a frame's time position id does not advance with time (the time is written as text)."""
        return 0


@dataclass(frozen=True)
class Qwen3TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016  # SwiGLU width
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32  # 1 = multi-query attention
    head_dim: int = 128  # set on its own: heads * head_dim need not equal hidden_size
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5_000_000.0
    max_position_embeddings: int = 128_000
    mrope_section: tuple[int, int, int] = (24, 20, 20)  # frequencies of (time, height, width)
    mrope_interleaved: bool = True  # t, h, w, t, h, w, ... instead of three blocks
    attention_bias: bool = False  # no bias on q, k, v, o
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"


@dataclass(frozen=True)
class Qwen3VLConfig:
    vision_config: Qwen3VisionConfig
    text_config: Qwen3TextConfig
    image_token_id: int = 151655  # <|image_pad|>
    video_token_id: int = 151656  # <|video_pad|>
    vision_start_token_id: int = 151652  # <|vision_start|>
    vision_end_token_id: int = 151653  # <|vision_end|>
    bos_token_id: int = 151643  # <|endoftext|>
    eos_token_id: int = 151645  # <|im_end|>

    @staticmethod
    def from_pretrained(path: str | Path) -> "Qwen3VLConfig":
        """Read a checkpoint's config.json (the folder or the file)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json at {file}; point at a checkpoint folder or its config.json")
        return Qwen3VLConfig.from_dict(read_json_object(file, "download it again"), source=str(file))

    @staticmethod
    def from_dict(raw: dict, source: str = "config") -> "Qwen3VLConfig":
        """Build from a config.json dict (nested: text_config, vision_config), every field type-checked."""
        if not isinstance(raw, dict) or raw.get("model_type") != MODEL_TYPE:
            found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"{source}: model_type is {found!r}, expected {MODEL_TYPE!r}; "
                             "Qwen2.5-VL checkpoints load with qvl_minimal.Qwen25VLConfig")
        text, vision = dict(raw.get("text_config") or {}), dict(raw.get("vision_config") or {})
        rope = text.get("rope_scaling") or {}
        kind = rope.get("rope_type") or rope.get("type") or "default"
        _require(kind == "default", source, f"rope_scaling of type {kind!r} is not implemented here")
        for key in ("mrope_section", "mrope_interleaved"):
            if key in rope:
                text[key] = rope[key]
        if "tie_word_embeddings" in raw:  # the top level decides (the reference ties from there)
            text["tie_word_embeddings"] = raw["tie_word_embeddings"]
        text_config = Qwen3TextConfig(**typed_fields(Qwen3TextConfig, text, f"{source}: text_config"))
        vision.setdefault("out_hidden_size", text_config.hidden_size)
        vision_config = Qwen3VisionConfig(**typed_fields(Qwen3VisionConfig, vision, f"{source}: vision_config"))
        ids = {k: v for k, v in {**text, **raw}.items() if k.endswith("_token_id") and v is not None}
        ids = typed_fields(Qwen3VLConfig, ids, source)
        config = Qwen3VLConfig(vision_config=vision_config, text_config=text_config, **ids)
        config.check(source)
        return config

    def check(self, source: str = "config") -> None:
        """The sizes agree with each other and with what this implementation computes."""
        v, t = self.vision_config, self.text_config
        _require(v.hidden_size % v.num_heads == 0, source, "vision hidden_size must be a multiple of num_heads")
        _require(t.num_attention_heads % t.num_key_value_heads == 0, source,
                 "num_attention_heads must be a multiple of num_key_value_heads")
        _require(len(t.mrope_section) == 3 and 2 * sum(t.mrope_section) == t.head_dim, source,
                 f"mrope_section {list(t.mrope_section)} must be 3 numbers summing to head_dim / 2")
        _require(t.mrope_interleaved, source, "mrope_interleaved false (the Qwen2.5-VL layout) is not built here")
        _require(v.out_hidden_size == t.hidden_size, source, "vision out_hidden_size must equal hidden_size")
        _require(v.grid_side**2 == v.num_position_embeddings, source,
                 f"num_position_embeddings {v.num_position_embeddings} must be a square (48 x 48 = 2304)")
        _require(all(i < v.depth for i in v.deepstack_visual_indexes), source,
                 f"deepstack_visual_indexes {list(v.deepstack_visual_indexes)} name blocks beyond depth {v.depth}")
        _require(len(v.deepstack_visual_indexes) <= t.num_hidden_layers, source,
                 "more DeepStack features than decoder layers to add them to")
        _require(v.hidden_act == "gelu_pytorch_tanh" and t.hidden_act == "silu", source,
                 f"hidden_act {v.hidden_act!r} / {t.hidden_act!r}: only gelu_pytorch_tanh / silu are built")

    def to_dict(self) -> dict:
        """The nested config.json form (what the reference's Qwen3VLConfig(**d) reads)."""
        text = {f.name: getattr(self.text_config, f.name) for f in fields(self.text_config)}
        text["rope_scaling"] = {"rope_type": "default", "mrope_section": list(text.pop("mrope_section")),
                                "mrope_interleaved": text.pop("mrope_interleaved")}
        vision = {f.name: getattr(self.vision_config, f.name) for f in fields(self.vision_config)}
        vision["deepstack_visual_indexes"] = list(vision["deepstack_visual_indexes"])
        ids = {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith("_id")}
        text.update(bos_token_id=ids.pop("bos_token_id"), eos_token_id=ids.pop("eos_token_id"))
        return {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": MODEL_TYPE,
                "tie_word_embeddings": text["tie_word_embeddings"], **ids,
                "text_config": text, "vision_config": vision}

    def replace(self, **changes) -> "Qwen3VLConfig":
        """A copy with fields changed; "vision_config" / "text_config" take dicts of changes."""
        v = replace(self.vision_config, **changes.pop("vision_config", {}))
        t = replace(self.text_config, **changes.pop("text_config", {}))
        return replace(self, vision_config=v, text_config=t, **changes)


def _released(vision: tuple, text: tuple, deepstack: tuple[int, ...], tied: bool) -> Qwen3VLConfig:
    """A released checkpoint's sizes. vision = (depth, hidden, intermediate, heads);
    text = (hidden, intermediate, layers, heads, kv_heads); the rest (patch 16, the 48 x 48 position
    table, head_dim 128, vocab 151936, mrope_section (24, 20, 20) interleaved, rope_theta 5e6) is
    the same in every released dense config.json."""
    depth, width, mlp, heads = vision
    hidden, inter, layers, q_heads, kv_heads = text
    return Qwen3VLConfig(
        vision_config=Qwen3VisionConfig(depth=depth, hidden_size=width, intermediate_size=mlp, num_heads=heads,
                                        out_hidden_size=hidden, deepstack_visual_indexes=deepstack),
        text_config=Qwen3TextConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                    num_attention_heads=q_heads, num_key_value_heads=kv_heads, head_dim=128,
                                    vocab_size=151936, max_position_embeddings=262144, tie_word_embeddings=tied),
    )


# The config.json values of the released Instruct checkpoints, read from copies of those files
# (the Hugging Face pages themselves could not be fetched here):
#   4b: huggingface.co/TechCarbasa/MyModels, commit 400bbbf (".../Qwen3-VL-4B-Instruct/config.json",
#       text_config); a full copy (text and vision) in DiffSynth's Qwen3-VL encoder wrapper; the vision
#       sizes again in ollama.com/dhiltgen/qwen3-vl:4b-instruct-q4_K_M (GGUF metadata: 24 blocks, 1024
#       wide, MLP 4096, 16 heads, DeepStack [5, 11, 17], projection 2560).
#   8b: huggingface.co/Steinate/Cortex config.json and huggingface.co/rooty2020/VaLR-prototype
#       config.json (text_config, tie_word_embeddings false); ollama.com/library/qwen3-vl:8b-instruct-bf16
#       (GGUF metadata: 36 x 4096, FFN 12288, 32/8 heads, tower 27 x 1152, 16 heads, DeepStack
#       [8, 16, 24]); a printed Qwen3-VL-8B-Instruct config.json (transformers 4.57.3) with vision
#       intermediate_size 4304 and out_hidden_size 4096.
# Qwen3-VL-2B is absent: its config.json could not be read from a source here (copies disagreed).
PRESETS: dict[str, Qwen3VLConfig] = {
    "4b": _released((24, 1024, 4096, 16), (2560, 9728, 36, 32, 8), (5, 11, 17), tied=True),
    "8b": _released((27, 1152, 4304, 16), (4096, 12288, 36, 32, 8), (8, 16, 24), tied=False),
}


def preset(name: str) -> Qwen3VLConfig:
    """A released size by name ("4b", "8b"), like `Qwen25VLConfig.preset`."""
    if name not in PRESETS:
        raise ValueError(f"unknown Qwen3-VL preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


Qwen3VLConfig.preset = staticmethod(preset)
