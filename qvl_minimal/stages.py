"""Every stage of our model and of the reference, recorded on the same prompt (chapter 11).

Both models run the same prompt; forward hooks record, during the prefill (the first call of
each module), the output of every stage:

    patch embedding -> vision block 0 .. n-1 -> merger        (the vision tower, window order)
    decoder input: spliced embeddings + 3D position ids      (what the language model receives)
    decoder layer 0 .. n-1 -> final norm                      (the language model)

`stages_of` names the stage modules of either model (`stage_modules` pairs them), `first_calls`
records them, `run_ours` / `run_reference` run a greedy generation under the hooks, and
`stage_rels` gives the relative error of each stage. Nothing here imports transformers: the
reference model is passed in.

`diverge(model_a, model_b, inputs)` (chapter 13) is the same recorder as a debugging tool: one
forward of each model, every call of every stage recorded, the relative error of each stage and
the first stage over the tolerance. It works on any two models with the checkpoint's module
names: ours against ours-with-a-bug, ours against the reference on shared weights, your port
against either.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .reference import compare


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
def first_calls(modules: dict[str, nn.Module], every: bool = False):
    """Record (args, kwargs, output) of each module's FIRST call while the block runs.

    In a generation the first call is the prefill over the whole prompt; the later calls (one
    new token each) are ignored. every=True records a list of ALL calls instead (the vision
    tower runs once for the images and once for the videos). The hooks are removed on exit,
    even after an error.
    """
    calls: dict[str, tuple | list] = {}

    def hook_for(name):
        def hook(module, args, kwargs, output):
            if every:
                calls.setdefault(name, []).append((args, kwargs, output))
            else:
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


def stage_rels(ours: dict, theirs: dict) -> dict[str, float]:
    """Relative error per stage (the order of `stage_modules`, then the logits)."""
    def rel(a, b):  # max |a - b| / max |b|, as everywhere in the book
        return compare("", a, b, check=False, show=False).rel

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


# ----------------------------------------------------------------------------- diverge (chapter 13)
def _module(model, path: str) -> nn.Module:
    """The submodule at a checkpoint path ("visual.blocks.0.attn", "model.layers.1.mlp"), in our tree
    or in the reference's 4.52+ tree (model.visual.*, model.language_model.*)."""
    from .reference import from_checkpoint_keys  # a pure key mapping: imports no transformers

    for candidate in (path, next(iter(from_checkpoint_keys({path: None})))):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise KeyError(f"no module {path!r} in {type(model).__name__}; give a checkpoint path such as "
                   "'visual.blocks.0.attn' or 'model.layers.0.self_attn'")


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One call: its tensor; several (a tower run for images, then for videos): joined along rows."""
    return tensors[0] if len(tensors) == 1 else torch.cat([t.flatten(0, -2) for t in tensors])


@torch.no_grad()
def record_stages(model, inputs: dict, paths: list[str] | None = None) -> dict[str, torch.Tensor]:
    """One forward `model(**inputs)` with hooks -> stage name -> output, in the order the data flows.

    Default stages: patch embedding, vision block 0.., merger, spliced embeddings, position ids,
    decoder layer 0.., final norm, logits. A stage that never ran (no image: no vision stages) is
    absent. With `paths` (checkpoint module paths), those modules are recorded instead, each by its
    path; "PATH:input" records the first input of the module at PATH (bisecting inside a stage).
    """
    if paths is None:
        modules = stages_of(model)
    else:
        modules = {p: _module(model, p.removesuffix(":input")) for p in paths}
    with first_calls(modules, every=True) as calls:
        out = model(**inputs)
    stages: dict[str, torch.Tensor] = {}
    for name in modules:
        if name not in calls:
            continue  # this stage did not run on these inputs
        if paths is not None and name.endswith(":input"):
            stages[name] = _joined([args[0] if args else next(iter(kw.values())) for args, kw, _ in calls[name]])
        elif paths is None and name == "decoder":  # the language model's inputs; its output comes last
            stages["spliced embeddings"], stages["position ids"] = decoder_inputs(calls[name][0])
        else:
            stages[name] = _joined([output_of(call) for call in calls[name]])
    if paths is None:
        stages["final norm"] = output_of(calls["decoder"][0])  # (B, L, D)
        stages["logits"] = out if isinstance(out, torch.Tensor) else out.logits  # (B, L, vocab)
    return stages


def stage_rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """max |a - b| / max |b| (compare's relative error); inf when a stage is missing or shapes differ."""
    if a is None or b is None or a.shape != b.shape:
        return float("inf")
    return compare("", a, b, check=False, show=False).rel


@dataclass
class Divergence:
    """Relative error of every stage of model_a against model_b, and the first one over `tol`."""

    rels: dict[str, float]  # stage -> max |a - b| / max |b|, in the order the data flows
    tol: float  # a stage diverges when its rel >= tol

    @property
    def first(self) -> str | None:
        """The first stage whose relative error reaches the tolerance (None: all agree)."""
        return next((name for name, rel in self.rels.items() if rel >= self.tol), None)

    def __str__(self) -> str:
        lines = [f"{'PASS' if rel < self.tol else 'FAIL'} {name}: rel={rel:.1e}" for name, rel in self.rels.items()]
        verdict = f"first divergence: {self.first}" if self.first else f"no divergence: all {len(self.rels)} stages agree"
        return "\n".join(lines + [f"{verdict} (tol rel < {self.tol:.0e})"])


def diverge(model_a, model_b, inputs: dict, tol: float = 1e-5, inputs_b: dict | None = None,
            paths: list[str] | None = None) -> Divergence:
    """Run both models on one input, every stage hooked; -> Divergence (rels per stage, .first).

    model_b is the one trusted (the reference, or the library's model): rel = max |a - b| / max |b|;
    it may also be the dict record_stages(model_b, ...) returned, to reuse one run of it.
    `inputs` are the keyword arguments of a forward (input_ids, attention_mask, pixel_values,
    image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts); `inputs_b` if model_b
    needs its own. `paths` bisects inside a stage (see record_stages). tol 1e-5 suits float32.
    """
    a = record_stages(model_a, inputs, paths)
    b = model_b if isinstance(model_b, dict) else record_stages(model_b, inputs if inputs_b is None else inputs_b, paths)
    names = list(b) + [n for n in a if n not in b]  # model_b's order; stages only model_a ran at the end
    return Divergence({name: stage_rel(a.get(name), b.get(name)) for name in names}, tol)
