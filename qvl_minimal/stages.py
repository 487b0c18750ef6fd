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
"""

from __future__ import annotations

from contextlib import contextmanager

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
