"""What one `describe` run cost: token counts, the time of each stage, and the peak memory.

    stats = RunStats(device)
    with stats.stage("load"): ...                  wall time of a stage, in seconds
    new = stats.timed_generate(model, ...)         splits generate() into vision, prefill and decode
    stats.line()  -> "stats: 97 prompt tokens (80 visual), 8 new | load 3.0 s, ... | peak memory 612 MB"
    stats.as_dict() -> the same figures for --json

generate() is one call, so its stages are told apart from outside: forward hooks on the vision
tower time every call of `model.visual`; the first new token marks the end of the prefill (the
whole prompt through the decoder, vision included), and each later token costs one decode step.
On a GPU every mark waits for the queued kernels first (torch.cuda.synchronize), else the clock
would time only the launches.
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch


def peak_memory_bytes() -> int | None:
    """The most resident memory this process has held so far (ru_maxrss), or None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil
        except ImportError:
            return None
        return getattr(psutil.Process().memory_info(), "peak_wset", None)  # Windows' peak working set
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux kilobytes


class RunStats:
    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.tokens = {"prompt": 0, "visual": 0, "new": 0}
        self.decode_tokens_per_second: float | None = None

    def _now(self) -> float:
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        start = self._now()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self._now() - start

    def timed_generate(self, model, input_ids, on_token=None, **generate_kwargs) -> torch.Tensor:
        """model.generate(input_ids, ...) -> new ids (1, n), with vision, prefill and decode timed."""
        vision, marks = [0.0, 0.0], []  # [start of the current call, total]; time of each new token

        def before_vision(module, args):
            vision[0] = self._now()

        def after_vision(module, args, output):
            vision[1] += self._now() - vision[0]

        def token_arrived(token):  # (1,)
            marks.append(self._now())
            if on_token is not None:
                on_token(token)

        hooks = [model.visual.register_forward_pre_hook(before_vision),
                 model.visual.register_forward_hook(after_vision)]
        start = self._now()
        try:
            new_ids = model.generate(input_ids, on_token=token_arrived, **generate_kwargs)  # (1, n)
        finally:
            for hook in hooks:
                hook.remove()
        self.seconds["vision"] = vision[1]
        self.seconds["prefill"] = marks[0] - start - vision[1]  # the decoder over the whole prompt
        self.seconds["decode"] = marks[-1] - marks[0]  # n - 1 steps of one token each
        if len(marks) > 1:
            self.decode_tokens_per_second = (len(marks) - 1) / max(self.seconds["decode"], 1e-9)
        cfg = model.config
        self.tokens["prompt"] = int(input_ids.shape[1])
        self.tokens["visual"] = int(((input_ids == cfg.image_token_id) | (input_ids == cfg.video_token_id)).sum())
        self.tokens["new"] = int(new_ids.shape[1])
        return new_ids

    def as_dict(self) -> dict:
        peak, rate = peak_memory_bytes(), self.decode_tokens_per_second
        figures = {"tokens": dict(self.tokens), "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
                   "decode_tokens_per_second": None if rate is None else round(rate, 3),
                   "peak_memory_mb": None if peak is None else round(peak / 2**20, 1)}
        if self.device.type == "cuda" and torch.cuda.is_available():
            figures["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return figures

    def line(self) -> str:
        """One line for stderr with every figure."""
        t, s = self.tokens, self.seconds
        times = ", ".join(f"{name} {s[name]:.2f} s" for name in ("check", "preprocess", "load", "vision", "prefill")
                          if name in s)
        rate = self.decode_tokens_per_second
        times += f", decode {rate:.1f} tokens/s" if rate is not None else ", decode - (one token)"
        figures = self.as_dict()
        memory = "unknown" if figures["peak_memory_mb"] is None else f"{figures['peak_memory_mb']:.0f} MB"
        if "gpu_peak_memory_mb" in figures:
            memory += f" (GPU {figures['gpu_peak_memory_mb']:.0f} MB)"
        return (f"stats: {t['prompt']} prompt tokens ({t['visual']} visual), {t['new']} new | {times} | "
                f"peak memory {memory}")
