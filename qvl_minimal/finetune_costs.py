"""What fine-tuning costs in memory, read off the config, and the measurement that checks it.

    finetune_memory(config, tokens, method)   bytes of weights, gradients, AdamW states, activations
    measure_saved_bytes(model, input_ids)     bytes autograd actually keeps for backward (the check)
    measure_step_peak(model, ids, optimizer)  a whole step's peak, from the profiler's allocations
    laptop_table(config, tokens)              full vs LoRA, float32 vs bfloat16, with and without
                                              checkpointing, against a 16 GB laptop

One training step holds, besides the weights and AdamW's states, whatever is alive at its peak:

    weights        every parameter, in `dtype` (LoRA: plus the adapters, float32)
    adam_states    AdamW's two moving averages per trained parameter (float32 by default)
    gradients      one per trained parameter, in the parameter's dtype
    activations    the tensors the forward saved for backward (below), for `tokens` tokens
    recompute      with checkpointing: one layer's activations, rebuilt during its backward
    loss_transient the gradients of the log-probabilities and of the logits, 2 x scored x vocab x 4,
                   alive together at the start of backward
    tied_gradient_transient   full, tied head: the table's gradient from the head and from the
                   embedding, and their sum, at the end of backward (2 extra tables)
    optimizer_transient       torch's per-tensor AdamW: sqrt(v) and sqrt(v)/c for one tensor while
                   the previous tensor's denominator is still held (max of prev + 2 x this)

    total = weights + adam_states + max(backward_start: gradients + activations + recompute + loss,
                                        backward_end: gradients + tied_gradient_transient,
                                        optimizer_step: gradients + optimizer_transient)

backward_start counts every gradient as present; they are in fact made layer by layer as the
activations are freed, and backward's own temporaries (gradients of one layer's activations) are
left out: measured, full fine-tuning's peak matches to the byte, LoRA's within 16% (tests).

"full" trains the language model (embedding = tied head, decoder, final norm); "lora" trains
adapters on `targets` (lora.py). The vision tower is frozen in both (Qwen's recipe; lora.py says
why), so it keeps weights only: nothing in it needs a gradient, so none of its activations are saved.
`tokens` counts every position through the decoder, visual tokens included.

What our decoder saves for backward, per token (D width, I MLP width, H heads of hd, a = bytes of
`dtype`, r rank; read off text.py and layers.py, and counted exactly by `measure_saved_bytes`):

    each RMSNorm    its input in float32 (a float32 copy in bfloat16) 4D, and 1/rms 4;
                    full: x / rms before the weight D*a (the weight's gradient needs it)
    Linear inputs   the two norm outputs D*a each, when their Linears train (q/k/v, gate/up)
    attention       q, k, v (keys and values repeated to H heads) and the output: 4 H*hd*a;
                    log-sum-exp of each softmax row 4H (float32)
    MLP             gate, silu(gate), up: 3 I*a; their product (down_proj's input) I*a if down trains
    LoRA            A x, r*a per adapted Linear (B's gradient needs it); in bfloat16 also the
                    adapters' bfloat16 copies (their float32 originals cast once per step)
    once            token ids 8, cos and sin 2*hd*a; the final norm; log-probabilities vocab*4 per
                    scored token (float32, as the reference computes its loss)

A layer whose input needs no gradient (LoRA's first: the embedding is frozen) saves less: only what
its adapters need. Gradient checkpointing (梯度检查点) keeps only each layer's input D*a and
recomputes the layer during backward.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from .config import Qwen25VLConfig
from .lora import DECODER_TARGETS
from .params import BYTES_PER_PARAMETER, count_parameters

GB = 10**9  # a "16 GB" laptop: 16 x 10^9 bytes (the marketing gigabyte)
ATTENTION_INPUTS, MLP_INPUTS = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")


def _shapes(config: Qwen25VLConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each decoder Linear."""
    t = config.text_config
    d, q, kv, i = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim, t.intermediate_size
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}


def lora_parameter_count(config: Qwen25VLConfig, rank: int = 8, targets=DECODER_TARGETS) -> int:
    """r * (in + out) per adapted Linear, in every decoder layer."""
    shapes = _shapes(config)
    if unknown := [t for t in targets if t not in shapes]:
        raise ValueError(f"finetune_memory models LoRA on the decoder's Linears {tuple(shapes)}; got {unknown}")
    return config.text_config.num_hidden_layers * sum(rank * sum(shapes[t]) for t in targets)


def _layer_saves(config, a: int, full: bool, adapted: set, rank: int, input_grad: bool) -> tuple[int, int, bool]:
    """What one decoder layer saves: (bytes per token, bytes once per step, does its output need a gradient).

    The bytes once per step are the float32 adapters cast to the activations' dtype (bfloat16 only):
    B's copy always, A's when its input needs a gradient (the input's gradient is x-bar = g A).
    """
    t, shapes = config.text_config, _shapes(config)
    d, i, heads, q = t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_attention_heads * t.head_dim
    per_token, once, grad = len(adapted) * rank * a, 0, input_grad  # A x of each adapter
    for half, inputs in (("attention", ATTENTION_INPUTS), ("mlp", MLP_INPUTS)):
        trains_inputs = full or bool(adapted & set(inputs))  # do this half's input Linears train?
        per_token += (4 * d + 4 if grad else 0) + (d * a if full else 0)  # norm: input in float32, 1/rms; x/rms
        per_token += d * a if trains_inputs else 0  # the norm's output, input of those Linears
        last = "o_proj" if half == "attention" else "down_proj"
        if a != 4:  # the adapters' casts: inputs with a gradient only after the norm, if the norm's input had one
            once += sum(rank * shapes[n][1] * a + (rank * shapes[n][0] * a if grad else 0) for n in adapted & set(inputs))
        grad = grad or trains_inputs
        if half == "attention":
            per_token += 4 * q * a + 4 * heads if grad else (q * a if last in adapted else 0)  # q, k, v, out; lse
        else:
            per_token += 3 * i * a if grad else 0  # gate, silu(gate), up
            per_token += i * a if full or last in adapted else 0  # silu(gate) * up: down_proj's input
        if a != 4 and last in adapted:
            once += rank * sum(shapes[last]) * a if grad else rank * shapes[last][1] * a
        grad = grad or last in adapted
    return per_token, once, grad


def _trained_sizes(config: Qwen25VLConfig, full: bool, rank: int, targets) -> list[int]:
    """Sizes of the trained tensors in the model's parameter order (full: the language model's)."""
    t, shapes = config.text_config, _shapes(config)
    if not full:  # lora_parameters: A then B of each adapted Linear, layer by layer
        order = [n for n in shapes if n in targets]
        return [rank * size for _ in range(t.num_hidden_layers) for n in order for size in shapes[n]]
    layer = [t.hidden_size]  # input_layernorm, then each Linear's weight (and bias), post_attention_layernorm
    for name, (fan_in, fan_out) in shapes.items():
        layer += [fan_in * fan_out] + ([fan_out] if name in ATTENTION_INPUTS else [])
        if name == "o_proj":
            layer.append(t.hidden_size)
    head = [] if t.tie_word_embeddings else [t.vocab_size * t.hidden_size]
    return [t.vocab_size * t.hidden_size] + layer * t.num_hidden_layers + [t.hidden_size] + head


def finetune_memory(config: Qwen25VLConfig, tokens: int, method: str = "full", rank: int = 8,
                    targets=DECODER_TARGETS, checkpointing: bool = False, dtype: str = "float32",
                    scored_tokens: int | None = None, adam_dtype: str = "float32") -> dict[str, int]:
    """Bytes of one training step's peak (the module docstring lists each term), computed from the config.

    tokens: positions through the decoder (batch x length); scored_tokens: positions whose next token
    is scored (default: all, as a causal-LM loss over the whole sequence). dtype: the weights' and
    activations' ("bfloat16": pure bfloat16 training, no float32 master copy). Keys: the bytes of the module
    docstring's terms and `total`; activations_per_token (bytes); trained_parameters (a count);
    peak_moment (which of the three moments is the peak).
    adam_dtype: AdamW's moving averages; float32 is the careful choice (torch.optim.AdamW keeps them in
    the parameter's dtype: bfloat16 for a bfloat16 model, whose tiny updates then round away).
    """
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', got {method!r}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    t, a = config.text_config, BYTES_PER_PARAMETER[dtype]
    scored = tokens if scored_tokens is None else scored_tokens
    counts, full = count_parameters(config), method == "full"
    adapted = set() if full else set(targets)
    adapters = 0 if full else lora_parameter_count(config, rank, targets)
    trained = counts["text"] if full else adapters
    out = {"trained_parameters": trained,
           "weights": counts["total"] * a + adapters * 4,
           "gradients": trained * (a if full else 4),
           "adam_states": 2 * trained * BYTES_PER_PARAMETER[adam_dtype]}
    layers, grad, casts = [], full, 0  # full: the embedding trains, so even the first layer's input needs a gradient
    for _ in range(t.num_hidden_layers):
        per_token, once, grad = _layer_saves(config, a, full, adapted, rank, grad)
        layers.append(per_token)
        casts += once
    d = t.hidden_size
    once = 8 + 2 * t.head_dim * a  # token ids; cos and sin
    final_norm = (4 * d + 4 if grad else 0) + (2 * d * a if full else 0)  # + x/rms and the head's input
    per_token = (t.num_hidden_layers * d * a if checkpointing else sum(layers)) + once + final_norm
    out["activations"] = tokens * per_token + scored * t.vocab_size * 4 + (0 if checkpointing else casts)
    out["activations_per_token"] = per_token
    out["recompute"] = tokens * max(layers) if checkpointing else 0  # one layer rebuilt during its backward
    out["loss_transient"] = 2 * scored * t.vocab_size * 4
    table = t.vocab_size * d  # the embedding (= the tied head)
    sizes = _trained_sizes(config, full, rank, targets)  # in the order AdamW walks them
    # torch's per-tensor AdamW (the CPU default): sqrt(v) and sqrt(v)/c, two temporaries the size of the
    # tensor, while the previous tensor's denominator is still held by its loop variable
    out["optimizer_transient"] = max(p + 2 * c for p, c in zip([0] + sizes, sizes)) * BYTES_PER_PARAMETER[adam_dtype]
    out["tied_gradient_transient"] = 2 * table * a if full and t.tie_word_embeddings else 0
    moments = {  # what is alive, besides the weights and AdamW's states, at the three candidate peaks
        "backward_start": out["gradients"] + out["activations"] + out["recompute"] + out["loss_transient"],
        "backward_end": out["gradients"] + out["tied_gradient_transient"],
        "optimizer_step": out["gradients"] + out["optimizer_transient"],
    }
    out["peak_moment"] = max(moments, key=moments.get)  # a name, not bytes
    out["total"] = out["weights"] + out["adam_states"] + max(moments.values())
    return out


def laptop_table(config: Qwen25VLConfig | None = None, tokens: int = 1024, budget: int = 16 * GB,
                 usable: float = 0.75, **kwargs) -> list[dict]:
    """Every (method, dtype, checkpointing) for one sequence of `tokens`: its total, and whether it fits
    in `usable` of a `budget`-byte laptop (the rest: the operating system, Python, the browser)."""
    config = config or Qwen25VLConfig.preset("3b")
    rows = []
    for method in ("full", "lora"):
        for dtype in ("float32", "bfloat16"):
            for checkpointing in (False, True):
                m = finetune_memory(config, tokens, method, checkpointing=checkpointing, dtype=dtype, **kwargs)
                rows.append({"method": method, "dtype": dtype, "checkpointing": checkpointing, **m,
                             "fits": m["total"] <= usable * budget})
    return rows


def max_tokens(config: Qwen25VLConfig, method: str, budget: float, **kwargs) -> int:
    """The longest sequence (every token scored, at most the trained context) whose step fits in
    `budget` bytes; 0 if none does. The total never falls as tokens grow: a binary search."""
    fits = lambda n: finetune_memory(config, n, method, **kwargs)["total"] <= budget  # noqa: E731
    low, high = 0, config.text_config.max_position_embeddings
    if not fits(1):
        return 0
    if fits(high):
        return high
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def format_laptop_table(rows: list[dict], usable: float) -> list[str]:
    """laptop_table's rows as aligned lines, GB = 10^9 bytes; `activ.` = activations + recompute + the
    loss's transient. The total is not the sum of the columns: it is the largest of the three moments."""
    lines = [f"{'method':6} {'dtype':8} {'ckpt':4} {'weights':>7} {'grads':>6} {'AdamW':>6} {'activ.':>6} "
             f"{'total':>6}  {'peak at':14}  fits in {usable:g} GB?"]
    for r in rows:
        gb = {k: r[k] / GB for k in ("weights", "gradients", "adam_states", "total")}
        act = (r["activations"] + r["recompute"] + r["loss_transient"]) / GB
        lines.append(f"{r['method']:6} {r['dtype']:8} {'yes' if r['checkpointing'] else 'no':4} {gb['weights']:7.2f} "
                     f"{gb['gradients']:6.2f} {gb['adam_states']:6.2f} {act:6.2f} {gb['total']:6.2f}  "
                     f"{r['peak_moment']:14}  {'yes' if r['fits'] else 'no'}")
    return lines


# ----------------------------------------------------------------------------- the measurement
def measure_step_peak(model, input_ids: torch.Tensor, optimizer, checkpointing: bool = False) -> int:
    """Peak bytes allocated above the weights and AdamW's states during one training step (forward,
    backward, optimizer.step) on input_ids, from the profiler's record of every CPU allocation and free.

    A first step runs unrecorded, so that AdamW's states exist (as in every step after the first), and
    the gradients are set to None before the recorded one (optimizer.zero_grad's default).
    """
    for recorded in (False, True):
        optimizer.zero_grad(set_to_none=True)
        with torch.profiler.profile(profile_memory=True) if recorded else nullcontext() as prof:
            _, loss = measure_saved_bytes(model, input_ids, checkpointing)
            loss.backward()
            optimizer.step()
            del loss
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:  # + allocation, - free, in the order they happened
        live += nbytes
        peak = max(peak, live)
    return peak



@contextmanager
def checkpointed_layers(model):
    """Each decoder layer run under torch.utils.checkpoint: only its inputs are kept; backward reruns it."""
    from torch.utils.checkpoint import checkpoint

    layers = list(model.model.layers)
    for layer in layers:
        layer.forward = (lambda f: lambda *args: checkpoint(f, *args, use_reentrant=True))(layer.forward)
    # the re-entrant form returns no gradient unless an input needs one: with a frozen embedding (LoRA),
    # mark its output (what transformers' enable_input_require_grads does)
    hook = model.model.embed_tokens.register_forward_hook(lambda module, args, out: out.requires_grad_(True))
    try:
        yield model
    finally:
        hook.remove()
        for layer in layers:
            del layer.forward  # the class's forward again


def measure_saved_bytes(model, input_ids: torch.Tensor, checkpointing: bool = False) -> tuple[int, torch.Tensor]:
    """(bytes autograd keeps for backward, the loss) of a text-only causal-LM step on input_ids (B, L).

    Every tensor the forward saves passes through a saved_tensors_hooks pack hook; we add up the
    storages (a view shares its storage: counted once), leaving out the parameters'. Exact and
    deterministic, unlike the process's memory. The loss scores every position but the last, in
    float32 (the reference's upcast). Checkpointing uses the re-entrant form, whose saved inputs the
    hook sees (the non-reentrant one keeps them out of its sight).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with checkpointed_layers(model) if checkpointing else nullcontext():
            h, _ = model.prefill(input_ids)  # (B, L, D)
            logits = model.head(h)[:, :-1]  # (B, L-1, vocab); head(h[:, :-1]) would take a slow bfloat16 path
            loss = F.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())
    return sum(seen.values()), loss
