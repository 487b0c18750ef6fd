"""LoRA (低秩适配, low-rank adaptation), built from scratch, saved and loaded in PEFT's format.

Fine-tuning changes a weight W (out, in) by some dW. LoRA bets that the useful dW has low rank r
and learns it as the product of two thin matrices, with W frozen:

    x (..., in) --base_layer: W, bias (frozen)------------------------> (..., out) ---+--> y (..., out)
      \\--lora_dropout--> lora_A (r, in) --> (..., r) --> lora_B (out, r) --> * alpha/r --/

    y = base(x) + (alpha / r) * B(A(x))         merged: W' = W + (alpha / r) * B @ A, y = x W'^T + bias

B starts at zero (so the model is unchanged until training moves it) and A as PEFT initialises it
(kaiming-uniform with a = sqrt(5), nn.Linear's own default). A LoRA of rank 8 on a 2048 x 2048
projection trains 8 * (2048 + 2048) = 32,768 numbers instead of 4,194,304 (0.8%).

Which Linears (DECODER_TARGETS, scope "model.layers."): the seven projections of every decoder layer,
attention (q, k, v, o) and MLP (gate, up, down). The LoRA paper adapted q and v only; QLoRA (Dettmers
et al., 2023) found that adapting every Linear of the blocks is what matches full fine-tuning, and
the MLP holds two thirds of a layer's weights. The vision tower stays frozen and un-adapted, as in
Qwen's own fine-tuning recipe (tune_mm_vision off): it was trained on far more images than any
fine-tuning set, and with nothing to train in it, backward stops at the decoder, so none of the
tower's activations are kept (finetune_costs.py). `scope="visual."` or `""` adapts it too.

Names follow PEFT's layout, so that state dicts and adapter files line up with the ecosystem's:

    ours, in the model        model.layers.0.self_attn.q_proj.base_layer.weight           (out, in)
                              model.layers.0.self_attn.q_proj.lora_A.default.weight       (r, in)
                              model.layers.0.self_attn.q_proj.lora_B.default.weight       (out, r)
    adapter_model.safetensors base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight

The file names modules as transformers' Qwen2_5_VLForConditionalGeneration does (4.52+:
model.language_model.*, model.visual.*), wrapped in PEFT's `base_model.model.`, without the adapter
name; `checkpoint_check.RENAMES_452` translates between that tree and ours (an adapter saved against the
older tree, model.layers.*, loads too).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint_check import RENAMES_452, checkpoint_layout

DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LANGUAGE_MODEL = "model.layers."  # the decoder's layers: the default scope of add_lora
ADAPTER = "default"  # PEFT's name for a model's first (here: only) adapter
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = base(x) + (alpha/r) * B(A(x))."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        device = base.weight.device
        self.base_layer = base.requires_grad_(False)
        self.lora_dropout = nn.ModuleDict({ADAPTER: nn.Dropout(dropout) if dropout else nn.Identity()})
        self.lora_A = nn.ModuleDict({ADAPTER: nn.Linear(base.in_features, rank, bias=False, device=device, dtype=dtype)})
        self.lora_B = nn.ModuleDict({ADAPTER: nn.Linear(rank, base.out_features, bias=False, device=device, dtype=dtype)})
        self.rank, self.alpha, self.dropout, self.scaling = rank, alpha, dropout, alpha / rank
        self.merged = False  # True: W holds W + dW, and forward skips the low-rank path
        nn.init.kaiming_uniform_(self.lora_A[ADAPTER].weight, a=math.sqrt(5))  # (r, in)
        nn.init.zeros_(self.lora_B[ADAPTER].weight)  # (out, r): the model starts unchanged

    @property
    def A(self) -> torch.Tensor:
        return self.lora_A[ADAPTER].weight  # (r, in)

    @property
    def B(self) -> torch.Tensor:
        return self.lora_B[ADAPTER].weight  # (out, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., out)
        if self.merged:
            return y
        # float32 adapters compute in the activations' dtype: casting A and B (r x in, out x r) is cheap,
        # casting x would keep a float32 copy of every adapted input for backward
        A, B = self.A.to(x.dtype), self.B.to(x.dtype)  # (r, in), (out, r); no copy when dtypes agree
        z = F.linear(self.lora_dropout[ADAPTER](x), A)  # (..., r)
        return y + F.linear(z, B) * self.scaling  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        """dW = (alpha / r) * B @ A, (out, in), in the adapter's dtype."""
        return (self.B @ self.A) * self.scaling  # (out, r) @ (r, in)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self._check_mergeable()
            W = self.base_layer.weight  # (out, in)
            W += self.delta_weight().to(W.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract dW again (as PEFT does): W comes back to within one float rounding of itself."""
        if self.merged:
            W = self.base_layer.weight  # (out, in)
            W -= self.delta_weight().to(W.dtype)
            self.merged = False

    def _check_mergeable(self) -> None:
        if hasattr(self.base_layer, "_bfloat16"):
            raise ValueError("cannot merge LoRA into a model stored in bfloat16 (storage.py swaps its weights in "
                             "and out around each forward); load it with storage=None to merge")

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """{module name: LoRALinear} in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(model: nn.Module, targets=DECODER_TARGETS, rank: int = 8, alpha: float = 16, dropout: float = 0.0,
             scope: str = LANGUAGE_MODEL, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Freeze every parameter of `model`, then wrap each nn.Linear whose name starts with `scope` and
    ends with one of `targets` (a suffix of whole name parts: "q_proj", "mlp.down_proj") in a LoRALinear.

    The adapters are stored in float32 whatever the base's dtype (as PEFT's autocast_adapter_dtype does:
    AdamW's small updates survive) and compute in the activations' dtype. In
    place; returns the model. A target that matches no Linear in scope is an error (a typo would
    otherwise train nothing).
    """
    if isinstance(targets, str):
        targets = (targets,)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be module-name suffixes such as {DECODER_TARGETS}, got {targets!r}")
    if not (isinstance(rank, int) and rank >= 1) or not alpha > 0 or not 0 <= dropout < 1:
        raise ValueError(f"need an integer rank >= 1, alpha > 0 and 0 <= dropout < 1; got rank={rank!r}, "
                         f"alpha={alpha!r}, dropout={dropout!r}")
    if lora_modules(model):
        raise ValueError("the model already has LoRA adapters; merge and unload them (unload_lora) first")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(scope)}
    chosen = [n for n in linears if _matches(n, targets)]
    for t in targets:
        if not any(_matches(n, (t,)) for n in chosen):
            ends = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ValueError(f"LoRA target {t!r} matches no nn.Linear whose name starts with {scope!r}; "
                             f"the Linears there end with {ends}")
    model.requires_grad_(False)
    for name in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LoRALinear(linears[name], rank, alpha, dropout, dtype))
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters: every adapter's A and B (what the optimiser gets)."""
    return [p for m in lora_modules(model).values() for p in (m.A, m.B)]


def merge_lora(model: nn.Module) -> nn.Module:
    """W <- W + (alpha/r) B A in every LoRALinear; forward then runs the plain Linears (no extra cost)."""
    for m in lora_modules(model).values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo merge_lora: W <- W - (alpha/r) B A, and the low-rank path runs again."""
    for m in lora_modules(model).values():
        m.unmerge()
    return model


def unload_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put the plain nn.Linears back (PEFT's merge_and_unload), merged first unless merge=False.

    The model's names are then the checkpoint's again (no base_layer), ready for a hub-layout save;
    every parameter stays frozen (add_lora froze them).
    """
    for name, m in lora_modules(model).items():
        if merge:
            m.merge()
        else:
            m.unmerge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, m.base_layer)
    return model


# ----------------------------------------------------------------------------- PEFT's file format
def _to_reference(name: str) -> str:
    """Our module name -> transformers 4.52+'s (model.layers.0 -> model.language_model.layers.0)."""
    for theirs, ours in RENAMES_452:
        if name.startswith(ours):
            return theirs + name.removeprefix(ours)
    return name


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter's A (r, in) and B (out, r) under the key PEFT saves it with, e.g.
    base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight."""
    out = {}
    for name, m in lora_modules(model).items():
        key = PEFT_PREFIX + _to_reference(name)
        out[key + ".lora_A.weight"] = m.A.detach().contiguous()
        out[key + ".lora_B.weight"] = m.B.detach().contiguous()
    return out


def target_modules(model: nn.Module):
    """adapter_config.json's target_modules: a regex PEFT fullmatches against the reference's module
    names, e.g. ^model\\.language_model\\.layers\\.\\d+\\.(?:mlp\\.down_proj|...)$, when that regex picks
    exactly the adapted modules; otherwise the list of their full names (PEFT matches those exactly)."""
    names = [_to_reference(n) for n in lora_modules(model)]
    parts = [re.fullmatch(r"(.*?)\.(\d+)\.(.*)", n) for n in names]
    if all(parts):
        prefixes = "|".join(sorted({re.escape(p[1]) for p in parts}))
        suffixes = "|".join(sorted({re.escape(p[3]) for p in parts}))
        pattern = rf"^(?:{prefixes})\.\d+\.(?:{suffixes})$"
        everything = [_to_reference(n) for n, _ in model.named_modules() if ".base_layer" not in n and ".lora_" not in n]
        if [n for n in everything if re.fullmatch(pattern, n)] == names:
            return pattern
    return names


def adapter_config(model: nn.Module, base_model_name_or_path: str | None = None) -> dict:
    """The adapter_config.json PEFT writes for a plain LoRA (the fields PEFT reads; the rest default)."""
    mods = list(lora_modules(model).values())
    if not mods:
        raise ValueError("the model has no LoRA adapters; call add_lora first")
    if len({(m.rank, m.alpha, m.dropout) for m in mods}) > 1:
        raise ValueError("the adapters differ in rank, alpha or dropout; PEFT's file holds one of each")
    m = mods[0]
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "r": m.rank, "lora_alpha": m.alpha, "lora_dropout": m.dropout, "target_modules": target_modules(model),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {}, "inference_mode": True, "revision": None,
    }


def save_peft_adapter(model: nn.Module, folder, base_model_name_or_path: str | None = None) -> Path:
    """Write folder/adapter_config.json and folder/adapter_model.safetensors as PEFT's save_pretrained
    does; `peft.PeftModel.from_pretrained(transformers_model, folder)` loads them."""
    folder = Path(folder)
    config = adapter_config(model, base_model_name_or_path)
    if any(m.merged for m in lora_modules(model).values()):
        raise ValueError("the adapters are merged into the weights; unmerge_lora first (A and B are saved as they are, "
                         "and a loader would add them a second time)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(lora_state_dict(model), folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder


UNSUPPORTED = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none",
               "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}


def load_peft_adapter(model: nn.Module, folder) -> nn.Module:
    """Read a PEFT LoRA folder into `model`: adds the adapters the file names (if the model has none
    yet; otherwise they must be the same modules and rank) and copies A and B. The inverse of
    save_peft_adapter; adapters written by PEFT itself load too."""
    folder = Path(folder)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found; a PEFT adapter folder holds adapter_config.json and "
                                    "adapter_model.safetensors (written by save_pretrained or save_peft_adapter)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_file}: peft_type {config.get('peft_type')!r}; only LoRA adapters load here")
    for key, plain in UNSUPPORTED.items():
        if config.get(key, plain) not in (plain, None, {}, False):
            raise ValueError(f"{config_file}: {key}={config[key]!r} is not supported by this LoRA "
                             f"(only plain LoRA: {key}={plain!r}); load it with peft instead")
    tensors = load_file(weights_file)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        hit = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.+)\.lora_([AB])\.weight", key)
        if not hit:
            raise ValueError(f"{weights_file.name}: unexpected tensor {key!r}; expected "
                             f"{PEFT_PREFIX}<module>.lora_A.weight / .lora_B.weight")
        pairs.setdefault(hit[1], {})[hit[2]] = tensor
    _, rename = checkpoint_layout(list(pairs), weights_file.name)  # 4.52+'s tree or the older one -> ours
    pairs = {rename(name): ab for name, ab in pairs.items()}
    if broken := [n for n, ab in pairs.items() if set(ab) != {"A", "B"}]:
        raise ValueError(f"{weights_file.name}: {broken[0]} has only lora_{''.join(pairs[broken[0]])}; each module needs A and B")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    if not lora_modules(model):
        add_lora(model, targets=tuple(pairs), rank=rank, alpha=alpha, dropout=float(config.get("lora_dropout", 0.0)),
                 scope="")
    have = lora_modules(model)
    if any(m.merged for m in have.values()):
        raise ValueError("the model's adapters are merged into its weights; unmerge_lora before loading new ones")
    if set(have) != set(pairs) or any(m.rank != rank or m.alpha != alpha for m in have.values()):
        raise ValueError(f"the model's LoRA adapters ({len(have)} modules) differ from {folder.name}'s "
                         f"({len(pairs)} modules, rank {rank}, alpha {alpha:g}); load it into a model without adapters")
    with torch.no_grad():
        for name, m in have.items():
            for which, param in (("A", m.A), ("B", m.B)):
                stored = pairs[name][which]
                if stored.shape != param.shape:
                    raise ValueError(f"{weights_file.name}: {name}.lora_{which} has shape {tuple(stored.shape)}, "
                                     f"the model needs {tuple(param.shape)}; the adapter belongs to another model")
                param.copy_(stored)
    return model
