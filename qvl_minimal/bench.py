"""`python -m qvl_minimal bench`: our model against the reference, in one process, on this machine.

    bench            3B widths, reduced depth (2 vision blocks, one of them full attention; 2 decoder
                     layers): every row is work at the real sizes, the load is of that checkpoint; work
                     done once per image or prompt weighs more here than in the whole model
    bench --quick    the tiny preset (seconds; what the tests run)
    bench --full     the whole 3B architecture end to end (see bench_full.py)

Each row is timed ours, reference, ours, reference, ... (alternating, so that a noisy neighbour
hurts both alike) and the median of `--repeats` runs is kept. The ratio ours / reference is the
number to read on a busy machine. The machine's ceilings are measured in the same run: a large
matrix product's GFLOP/s per dtype and a large copy's GB/s; each row is then a fraction of its
ceiling: the vision tower and the prefill by their FLOPs (params.vision_flops, costs.prefill_flops),
decode by the bytes of weights it must read per token (costs.decode_weight_bytes) over the read speed.
bfloat16 rows run only where dtypes.choose_dtype says the CPU multiplies bfloat16 natively.
"Ours" is the model as `describe` runs it: packed.pack_linears applied where it is exact (bfloat16;
one line per dtype says what was packed), the reference sharing the plain weights it had before.
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time

import psutil
import torch

from .costs import decode_weight_bytes, prefill_flops
from .params import vision_flops

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def configure(parser) -> None:
    parser.description = "time our model against the reference (alternating runs, medians) and this machine's ceilings"
    parser.add_argument("--quick", action="store_true", help="the tiny preset, one repeat: a smoke test in seconds")
    parser.add_argument("--full", action="store_true",
                        help="the whole 3B architecture (random weights) end to end: load + describe the photo, 32 tokens")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row and side (default 3; --quick and --full: 1)")
    parser.add_argument("--dtype", action="append", choices=list(DTYPE_NAMES.values()),
                        help="only this dtype (repeatable); default float32, plus bfloat16 where native")


# ----------------------------------------------------------------------------- measuring
def best_time(fn, repeats: int) -> float:
    """Shortest wall time of fn() over `repeats` runs, after one warm-up run. A ceiling is the best the
    machine was seen to do: on a shared machine a median can fall below what a later row reaches."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def alternate(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median times of ours() and theirs(), run in turns (one warm-up each first)."""
    ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((ours, a), (theirs, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


class PeakMemory:
    """Highest resident memory of this process above its level at entry, sampled every 5 ms."""

    def __enter__(self):
        self.process = psutil.Process()
        self.base = self.highest = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.highest = max(self.highest, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.highest = max(self.highest, self.process.memory_info().rss)
        self.added = self.highest - self.base  # bytes


def ceilings(dtypes, quick: bool = False) -> dict[str, float]:
    """This machine's roofs: {"gflops_float32": ..., "gflops_bfloat16": ..., "copy_gbs": ..., "read_gbs": ...},
    best of 5.

    Matmul: an n x n @ n x n product (n = 2048; 512 with quick), 2 n^3 FLOPs. Copy: a 256 MB tensor
    (16 MB with quick) copied into another; bytes moved = read + write. Read: the same tensor summed
    (reading only, as a decode reads its weights); the decode rows are fractions of this roof."""
    n = 512 if quick else 2048
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    roofs = {}
    for dtype in dtypes:
        x, y = a.to(dtype), b.to(dtype)
        roofs[f"gflops_{DTYPE_NAMES[dtype]}"] = 2 * n**3 / best_time(lambda: x @ y, 5) / 1e9
    src = torch.ones((16 if quick else 256) * 2**20 // 4)
    dst = torch.empty_like(src)
    roofs["copy_gbs"] = 2 * src.nbytes / best_time(lambda: dst.copy_(src), 5) / 1e9
    roofs["read_gbs"] = read_gbs(quick)
    return roofs


def read_gbs(quick: bool = False) -> float:
    """GB/s of reading a 256 MB float32 tensor once (summing it; 16 MB with quick), best of 5. A cloud
    machine's bandwidth moves with its neighbours' load: the decode rows measure it again beside them."""
    src = torch.ones((16 if quick else 256) * 2**20 // 4)
    return src.nbytes / best_time(lambda: src.sum(), 5) / 1e9


# ----------------------------------------------------------------------------- the rows
def _inputs(config, tokenizer, max_pixels: int | None = None):
    """The photo and a 1280 x 720 image (pixels, grid), the chat prompt's ids, and a text-only
    prompt of the same length (the image pads replaced by an ordinary token) for decode.
    max_pixels (None: the checkpoint's budget) shrinks both images, for --quick."""
    from .preprocess import preprocess_image
    from .samples import sample_photo
    from .tokenizer import encode_chat

    photo = sample_photo()
    wide = photo.resize((1280, 720))  # the photo stretched: any content costs the same
    budget = {} if max_pixels is None else {"max_pixels": max_pixels}
    images = {"photo": preprocess_image(photo, **budget), "1280x720": preprocess_image(wide, **budget)}
    ids = encode_chat(tokenizer, "Describe this image.", image_grid_thw=images["photo"][1])  # (1, 403)
    text_ids = ids.masked_fill(ids == config.image_token_id, tokenizer.encode("a")[0])  # (1, 403)
    return images, ids, text_ids


def _row(name, dtype, ours, ref, ceiling=None, work=None, unit="s", **extra) -> dict:
    """One table row; `work / time / ceiling` is the fraction of the roof reached (None: no roof)."""
    of = (lambda t: work / t / ceiling) if ceiling and work else (lambda t: None)
    return {"row": name, "dtype": DTYPE_NAMES[dtype], "unit": unit, "ours": ours, "reference": ref,
            "ratio": ours / ref, "ours_of_ceiling": of(ours), "reference_of_ceiling": of(ref), **extra}


@torch.no_grad()
def bench_dtype(folder, dtype, roofs: dict, repeats: int, new_tokens: int, max_pixels=None,
                quick: bool = False) -> tuple[list[dict], str]:
    """Every row for one dtype: load, vision (photo, 1280x720), prefill, decode; and the packing line."""
    from transformers import Qwen2_5_VLForConditionalGeneration, logging

    from .packed import pack_linears
    from .positions import get_rope_index
    from .reference import reference_sharing_weights
    from .tokenizer import load_tokenizer
    from .weights import load_pretrained

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    name, rows = DTYPE_NAMES[dtype], []
    gflops = roofs[f"gflops_{name}"] * 1e9
    loads = {"ours": [], "reference": []}
    for _ in range(max(1, repeats)):  # load: alternate, each model dropped before the next
        for side, load in (("ours", lambda: load_pretrained(folder, dtype=dtype, progress=False, pack=True)),
                           ("reference", lambda: Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype))):
            with PeakMemory() as peak:
                start = time.perf_counter()
                model = load()
                seconds = time.perf_counter() - start
            loads[side].append((seconds, peak.added / 1e9))
            del model
    t_ours, t_ref = (statistics.median(r[0] for r in loads[s]) for s in ("ours", "reference"))
    m_ours, m_ref = (max(r[1] for r in loads[s]) for s in ("ours", "reference"))
    rows.append(_row("load (checkpoint above)", dtype, t_ours, t_ref, ours_peak_gb=m_ours, reference_peak_gb=m_ref))

    model = load_pretrained(folder, dtype=dtype, progress=False)
    ref = reference_sharing_weights(model)  # the same tensors: no second copy
    packing = pack_linears(model)  # ours as describe runs it; the reference keeps the plain weights
    config, tokenizer = model.config, load_tokenizer(folder)
    images, ids, text_ids = _inputs(config, tokenizer, max_pixels)
    for label, (pixels, grid) in images.items():
        pixels = pixels.to(dtype)
        t_ours, t_ref = alternate(lambda: model.visual(pixels, grid), lambda: ref.model.visual(pixels, grid_thw=grid), repeats)
        rows.append(_row(f"vision tower, {label} ({int(grid.prod())} patches)", dtype, t_ours, t_ref, gflops,
                         vision_flops(config, grid)[0]))

    pixels, grid = images["photo"]
    x = model.embed(ids, pixels.to(dtype), grid)  # (1, L, D): the decoder's input, made once
    positions, _ = get_rope_index(config, ids, grid)  # (3, 1, L)

    def ours_prefill():
        h = model.model(x, positions, None, model.model.new_cache())  # (1, L, D)
        return model.head(h[:, -1])  # (1, vocab)

    def ref_prefill():
        h = ref.model.language_model(inputs_embeds=x, position_ids=positions, use_cache=True).last_hidden_state
        return ref.lm_head(h[:, -1])

    t_ours, t_ref = alternate(ours_prefill, ref_prefill, repeats)
    rows.append(_row(f"prefill, decoder + head ({ids.shape[1]} tokens)", dtype, t_ours, t_ref, gflops,
                     prefill_flops(config, ids.shape[1])[0]))

    eos, pad = config.eos_token_id, config.bos_token_id
    totals = {}
    for n in (1, 1 + new_tokens):  # decode time per token = (time of 1 + n tokens - time of 1) / n
        totals[n] = alternate(lambda: model.generate(text_ids, max_new_tokens=n, eos_token_id=-1),
                              lambda: ref.generate(input_ids=text_ids, attention_mask=torch.ones_like(text_ids),
                                                   max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                   eos_token_id=eos, pad_token_id=pad), repeats)
    per_token = [max(totals[1 + new_tokens][k] - totals[1][k], 1e-9) / new_tokens for k in (0, 1)]
    roofs["read_gbs"] = max(roofs["read_gbs"], read_gbs(quick))  # the best seen, as every roof
    roof = roofs["read_gbs"] * 1e9
    rows.append(_row(f"decode, per token ({new_tokens} new, KV cache)", dtype, *per_token, roof,
                     decode_weight_bytes(config, name), unit="ms"))
    rows[-1].update(ours=1e3 * per_token[0], reference=1e3 * per_token[1])
    del ref, model
    return rows, f"ours, {name}: {packing}"


def format_table(rows: list[dict], roofs: dict, note: str) -> str:
    """The printed table: one line per row, ours and the reference, their ratio, fractions of the roof."""
    def pct(v):
        return "-" if v is None else f"{100 * v:5.1f}%"

    head = f"{'row':46s} {'dtype':8s} {'ours':>10s} {'reference':>10s} {'ours/ref':>8s} {'ours/roof':>9s} {'ref/roof':>9s}"
    lines = [note, "ceilings: " + ", ".join(f"{k}={v:.1f}" for k, v in roofs.items()), head, "-" * len(head)]
    for r in rows:
        u = r["unit"]
        lines.append(f"{r['row']:46s} {r['dtype']:8s} {r['ours']:8.3f}{u:>2s} {r['reference']:8.3f}{u:>2s} "
                     f"{r['ratio']:8.2f} {pct(r['ours_of_ceiling']):>9s} {pct(r['reference_of_ceiling']):>9s}")
        if "ours_peak_gb" in r:
            lines.append(f"{'   peak resident memory added (GB)':46s} {'':8s} {r['ours_peak_gb']:10.2f} "
                         f"{r['reference_peak_gb']:10.2f} {r['ours_peak_gb'] / max(r['reference_peak_gb'], 1e-9):8.2f}")
    return "\n".join(lines)


def bench(quick: bool = False, repeats: int | None = None, dtypes=None) -> tuple[list[dict], dict, str]:
    """Run the bench -> (rows, ceilings, note). quick: the tiny preset; else 3B widths, reduced depth."""
    from .dtypes import choose_dtype
    from .standin import standin_checkpoint

    repeats = repeats or (1 if quick else 3)
    if dtypes is None:
        native = choose_dtype("cpu")[0] == torch.bfloat16  # $QVL_DTYPE=float32 keeps bfloat16 out
        dtypes = [torch.float32, torch.bfloat16] if native else [torch.float32]
    folder = standin_checkpoint("small" if quick else "full")
    roofs = ceilings(dtypes, quick)
    rows, packings = [], []
    for dtype in dtypes:
        dtype_rows, packing = bench_dtype(folder, dtype, roofs, repeats, 4 if quick else 32,
                                             64 * 28 * 28 if quick else None, quick)
        rows, packings = rows + dtype_rows, packings + [packing]
    from .config import Qwen25VLConfig

    c = Qwen25VLConfig.from_pretrained(folder)
    note = (f"{'tiny preset' if quick else '3B widths'}, reduced depth: {c.vision_config.depth} vision blocks "
            f"(full attention in {list(c.vision_config.fullatt_block_indexes)}), {c.text_config.num_hidden_layers} "
            f"decoder layers; random weights; median of {repeats}, ours and the reference alternating; "
            f"{torch.get_num_threads()} threads" + ("; images shrunk to 64 tokens at most" if quick else "") +
            "\nreduced depth magnifies work done once per image or prompt (e.g. the patch embedding); "
            "bench --full measures the whole model"
            "\nload: in the stored dtype (bfloat16) both sides map the files into memory without reading them, so the "
            "reading is paid later, in the first run; a dtype conversion (float32) is paid at load by both"
            "\n" + "\n".join(packings))
    check_finite(rows)
    return rows, roofs, note


def check_finite(rows: list[dict]) -> None:
    """A NaN anywhere in the table is a broken measurement: stop (a real check, kept under python -O)."""
    broken = [(r["row"], k) for r in rows for k, v in r.items() if isinstance(v, float) and math.isnan(v)]
    if broken:
        raise RuntimeError(f"the bench measured NaN for {broken[:3]}; a timing or a ceiling failed, run it again")


def run(args) -> int:
    if args.repeats is not None and args.repeats < 1:
        print(f"error: --repeats must be at least 1 (timed runs per row and side), got {args.repeats}", file=sys.stderr)
        return 2
    if args.full:
        from .bench_full import run_full

        return run_full(args)
    dtypes = [torch.float32 if d == "float32" else torch.bfloat16 for d in args.dtype] if args.dtype else None
    rows, roofs, note = bench(args.quick, args.repeats, dtypes)
    print(format_table(rows, roofs, note))
    return 0
