"""Chapter 11: our model against the reference, stage by stage, on the same loaded tensors.

Both models run the same prompt; forward hooks record, during the prefill (the first call of
each module), the output of every stage:

    patch embedding -> vision block 0 .. n-1 -> merger        (the vision tower, window order)
    decoder input: spliced embeddings + 3D position ids      (what the language model receives)
    decoder layer 0 .. n-1 -> final norm                      (the language model)

`stages_of` names the stage modules of either model (`stage_modules` pairs them), `first_calls`
records them, `run_ours` / `run_reference` run a greedy generation under the hooks, and
`error_profile` draws the relative error of each stage on a log scale.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import matplotlib.pyplot as plt
import torch
from torch import nn


def stages_of(model) -> dict[str, nn.Module]:
    """Stage name -> module, in the order the data flows, for our Qwen25VL or the reference's
    Qwen2_5_VLForConditionalGeneration (whose `visual` and `language_model` are properties that
    point into its 4.52+ tree, model.visual and model.language_model).

    "decoder" is the whole language model: its inputs are the spliced embeddings and the
    position ids, its output the final-norm hidden states.
    """
    lm = model.language_model if hasattr(model, "language_model") else model.model  # reference / ours
    visual = model.visual  # ours: a module; the reference: a property for model.model.visual
    stages = {"patch embedding": visual.patch_embed}
    stages.update({f"vision block {i}": block for i, block in enumerate(visual.blocks)})
    stages["merger"] = visual.merger
    stages["decoder"] = lm
    stages.update({f"decoder layer {i}": layer for i, layer in enumerate(lm.layers)})
    return stages


def stage_modules(model, ref) -> dict[str, tuple[nn.Module, nn.Module]]:
    """Stage name -> (our module, the reference's module) whose outputs must agree."""
    theirs = stages_of(ref)
    return {name: (module, theirs[name]) for name, module in stages_of(model).items()}


@contextmanager
def first_calls(modules: dict[str, nn.Module]):
    """Record (args, kwargs, output) of each module's FIRST call while the block runs.

    In a generation the first call is the prefill over the whole prompt; the later calls (one
    new token each) are ignored. The hooks are removed on exit, even after an error.
    """
    calls: dict[str, tuple] = {}

    def hook_for(name):
        def hook(module, args, kwargs, output):
            calls.setdefault(name, (args, kwargs, output))
        return hook

    handles = [m.register_forward_hook(hook_for(n), with_kwargs=True) for n, m in modules.items()]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def output_of(call) -> torch.Tensor:
    """The hidden states a module returned: a tensor (ours), or the first item of a tuple or a
    ModelOutput (the reference's decoder layers return (hidden,), its language model an object)."""
    out = call[2]
    return out if isinstance(out, torch.Tensor) else out[0]


def decoder_inputs(call) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_embeds (B, L, D), position_ids (3, B, L)) the language model received.

    Ours takes them positionally; the reference by keyword. During generate, transformers 4.57
    prepends a 4th row of plain 1D text positions (used only to build its attention mask): drop it.
    """
    args, kwargs, _ = call
    embeds = kwargs.get("inputs_embeds", args[0] if args else None)
    positions = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
    return embeds, positions[1:] if positions.shape[0] == 4 else positions


def _record_stages(net, generate):
    """Run `generate()` with every stage of `net` hooked -> (stages dict, generate's result)."""
    modules = stages_of(net)
    with first_calls(modules) as calls:
        result = generate()
    stages = {name: output_of(calls[name]) for name in modules}  # in the order of the model
    stages["inputs_embeds"], stages["position_ids"] = decoder_inputs(calls["decoder"])
    return stages, result


@torch.no_grad()
def run_ours(model, inputs: dict, max_new_tokens: int) -> dict:
    """Our greedy generation under the hooks -> the stage outputs, "inputs_embeds", "position_ids",
    "new_tokens" (B, n) and "logits" (B, L, vocab): our head on the final hidden states."""
    stages, new = _record_stages(model, lambda: model.generate(max_new_tokens=max_new_tokens, **inputs))
    stages["new_tokens"] = new  # (B, n)
    stages["logits"] = model.head(stages["decoder"])  # (B, L, vocab)
    return stages


@torch.no_grad()
def run_reference(ref, inputs: dict, max_new_tokens: int) -> dict:
    """The reference's greedy generation (do_sample=False) under the hooks: the same keys as
    run_ours (logits from its own lm_head), plus "step_logits" (B, n, vocab), the logits each of
    its greedy steps chose from."""
    eos, pad = ref.config.text_config.eos_token_id, ref.config.text_config.bos_token_id
    stages, out = _record_stages(ref, lambda: ref.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
        output_logits=True, return_dict_in_generate=True))
    stages["new_tokens"] = out.sequences[:, inputs["input_ids"].shape[1]:]  # (B, n)
    stages["logits"] = ref.lm_head(stages["decoder"])  # (B, L, vocab)
    stages["step_logits"] = torch.stack(out.logits, dim=1)  # (B, n, vocab)
    return stages


def run_both(model, ref, ours_inputs: dict, ref_inputs: dict, max_new_tokens: int) -> tuple[dict, dict]:
    """(run_ours(...), run_reference(...)): both greedy generations, every stage recorded."""
    return run_ours(model, ours_inputs, max_new_tokens), run_reference(ref, ref_inputs, max_new_tokens)


COLORS = {"vision": "#3b75af", "decoder": "#e08a2c", "head": "#7a4ea3"}


def error_profile(rels: dict[str, float], tol: float = 1e-5, title: str = ""):
    """Relative error (max |ours - ref| / max |ref|) of each stage, in order, on a log scale.

    Stages whose name starts with "vision", "patch" or "merger" are blue, the language model's
    orange, the logits purple; exact zeros are drawn at the bottom edge with a hollow marker.
    """
    names, values = list(rels), [float(v) for v in rels.values()]
    floor = min([v for v in values if v > 0] + [tol]) / 10
    kind = ["vision" if n.startswith(("patch", "vision", "merger", "visual")) else
            "head" if n.startswith("logits") else "decoder" for n in names]
    fig, ax = plt.subplots(figsize=(8.0, 3.8), dpi=90)
    for i, (v, k) in enumerate(zip(values, kind)):
        ax.scatter(i, max(v, floor), s=36, color=COLORS[k] if v > 0 else "white", edgecolors=COLORS[k], zorder=3)
    ax.plot(range(len(values)), [max(v, floor) for v in values], color="#999999", lw=0.8, zorder=2)
    ax.axhline(tol, color="#c03030", ls="--", lw=1)
    ax.text(len(names) - 0.5, tol * 1.3, f"tolerance {tol:.0e}", color="#c03030", ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, max(tol, *values) * 8)
    crowded = len(names) > 30  # real depth (32 + 36 stages): label blocks and layers 4, 8, ... only
    labels = ["" if crowded and (m := re.fullmatch(r"(vision block|decoder layer) (\d+)", n)) and (int(m[2]) % 4 or int(m[2]) == 0) else n
              for n in names]
    ax.set_xticks(range(len(names)), labels, rotation=60, ha="right", fontsize=7 if crowded else 8)
    ax.set_ylabel("max |ours - ref| / max |ref|")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c) for c in COLORS.values()]
    ax.legend(handles, ["vision tower", "language model", "logits"], fontsize=8, loc="upper left", frameon=False)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="major", color="#e6e6e6", lw=0.6)
    fig.tight_layout()
    return fig


def stage_rels(ours: dict, theirs: dict) -> dict[str, float]:
    """Relative error per stage (the order of `stage_modules`, then the logits)."""
    def rel(a, b):
        a, b = a.double(), b.double()
        return ((a - b).abs().max() / b.abs().max()).item()

    skip = ("decoder", "inputs_embeds", "position_ids", "new_tokens", "logits", "step_logits")
    order = [n for n in ours if n not in skip]
    rels = {}
    for name in order:
        if name == "decoder layer 0":
            rels["spliced embeddings"] = rel(ours["inputs_embeds"], theirs["inputs_embeds"])
        rels[name] = rel(ours[name], theirs[name])
    rels["final norm"] = rel(ours["decoder"], theirs["decoder"])
    rels["logits"] = rel(ours["logits"], theirs["logits"])
    return rels


def standin_errors():
    """The figure of chapter 11, recomputed on the small stand-in checkpoint (seconds on a CPU)."""
    from ..preprocess import preprocess_image
    from ..reference import reference_processor, reference_sharing_weights
    from ..standin import standin_checkpoint
    from ..samples import sample_photo
    from ..tokenizer import build_chat_prompt, encode_chat, load_tokenizer
    from ..weights import load_pretrained

    folder = standin_checkpoint("small")
    model = load_pretrained(folder, progress=False)
    ref = reference_sharing_weights(model)
    photo, question, max_pixels = sample_photo(), "Describe this image.", 64 * 28 * 28
    pixel_values, grid = preprocess_image(photo, max_pixels=max_pixels)
    ids = encode_chat(load_tokenizer(folder), question, image_grid_thw=grid)
    theirs = reference_processor()(text=[build_chat_prompt(question, 1)], images=[photo], max_pixels=max_pixels,
                                   return_tensors="pt")
    ours, ref_out = run_both(model, ref, dict(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid),
                             dict(theirs), max_new_tokens=4)
    return error_profile(stage_rels(ours, ref_out), title="small stand-in checkpoint, float32: relative error per stage")


FIGURES = {"11_stage_errors": standin_errors}
