"""`python -m qvl_minimal describe INPUT...`: answer a question about photos or a video with a checkpoint.

    describe photo.jpg --question "What is in this picture?"
    describe a.jpg b.jpg --question "What differs?"     several images in one prompt, in the order given
    describe clip.mp4 --fps 2                           a video file, 2 frames kept per second (needs PyAV)
    describe frames/                                    a folder of frames, taken as filmed at --fps
    describe photo.jpg --json                           one JSON object on stdout: answer and figures

A Qwen3-VL checkpoint folder (config.json's model_type "qwen3_vl") runs the same way; its
preprocessing and prompt (video time as "<1.2 seconds>" text) are chosen in model_family.py.

The run: check every input (files, sizes, question, options, the checkpoint's files) -> preprocess
-> load the model -> generate, streaming the answer to stdout -> one `stats:` line on stderr
(token counts, the time of each stage, peak memory). A mistake the user can fix is reported
before the model is loaded, as one `error: ...` line that says how to fix it, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """examples:
  python -m qvl_minimal describe photo.jpg --question "What is in this picture?"
  python -m qvl_minimal describe a.jpg b.jpg --question "What differs between the two pictures?"
  python -m qvl_minimal describe clip.mp4 --fps 2          (video files need: pip install qvl-minimal[video])
  python -m qvl_minimal describe frames/ --fps 1           (a folder of frames extracted at 1 per second)
  python -m qvl_minimal describe photo.jpg --temperature 0.7 --top-p 0.9 --seed 1 --json
"""


def configure(parser) -> None:
    from .preprocess import MAX_PIXELS
    from .tokenizer import DEFAULT_SYSTEM

    parser.description = __doc__.split("\n")[0].strip("`").split("`: ")[-1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.error = lambda message: parser.exit(2, f"error: {message} (see {parser.prog} --help)\n")  # one line
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files (JPEG, PNG, ...), then video files (.mp4, .mkv, .webm, ...) or folders "
                             "of frames; the prompt shows them in this order")
    parser.add_argument("--question", "-q", default=None,
                        help='what to ask (default: "Describe this image." / "... these images." / "... this video.")')
    parser.add_argument("--max-pixels", type=int, default=None,
                        help=f"shrink each image to at most this many pixels (default: the checkpoint's limit, "
                             f"{MAX_PIXELS:,} for Qwen2.5-VL = 16,384 visual tokens of 784 pixels; 16,777,216 for "
                             "Qwen3-VL = 16,384 visual tokens of 1,024 pixels)")
    parser.add_argument("--fps", type=float, default=2.0,
                        help="video frames kept per second (default 2); a folder of frames is taken as filmed "
                             "at this rate, so every frame is kept")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="stop after this many tokens (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="0 (default): greedy, the most likely token each time; > 0: sample, higher = more varied")
    gen.add_argument("--top-p", type=float, default=1.0,
                     help="when sampling, keep the most likely tokens up to this total probability (default 1)")
    gen.add_argument("--seed", type=int, default=None, help="seed of the sampler: the same seed, the same answer")
    gen.add_argument("--system", default=None, help=f'the system prompt (default: Qwen2.5-VL "{DEFAULT_SYSTEM}"; '
                     "Qwen3-VL none, as its chat template)")
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", default=None,
                       help="checkpoint folder (default: $QVL_CHECKPOINT, then the Hugging Face hub cache)")
    model.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    model.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                       help="default: bfloat16 on a GPU or a CPU that multiplies it natively, else float32")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (answer, token counts, times, memory) instead of streaming")
    parser.add_argument("--boxes", metavar="OUT.png", default=None,
                        help="draw the answer's boxes and points on a copy of the image, mapped to its own pixels "
                             "(several images: OUT-1.png, OUT-2.png, ...); with --json the objects are listed too")


def run(args) -> int:
    from .cli_inputs import UserError

    try:
        return describe(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; close other programs, use --dtype bfloat16 (half the memory), "
              "or see the book's appendix A.9 for what each model needs", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def default_question(media) -> str:
    if media.videos:
        return "Describe this video." if len(media.videos) == 1 and not media.images else "Describe these inputs."
    return "Describe this image." if len(media.images) == 1 else "Describe these images."


def preprocess_media(media, fps: float, family=None) -> tuple[dict, list[dict]]:
    """-> (the visual arguments of model.generate, one summary per input for --json; a Qwen3-VL video's
    summary holds "timestamps", the seconds of its time steps, which its prompt writes).
    `family`: model_family's (default Qwen2.5-VL's)."""
    import torch

    from .cli_inputs import UserError
    from .model_family import QWEN25
    from .video_io import FrameFolder, VideoError

    family = family or QWEN25
    visual, summaries = {}, []
    if media.images:
        parts = [family.preprocess_image(image, media.max_pixels)
                 for _, image in media.images]  # [(N_i, 1176 | 1536), (1, 3)]
        visual["pixel_values"] = torch.cat([pixels for pixels, _ in parts])  # (sum N_i, row)
        visual["image_grid_thw"] = torch.cat([grid for _, grid in parts])  # (images, 3)
        summaries += [{"path": str(path), "kind": "image", "grid_thw": grid[0].tolist()}
                      for (path, _), (_, grid) in zip(media.images, parts)]
    if media.videos:
        try:
            parts = [family.preprocess_video(video, fps) for video in media.videos]  # (pixels, grid, extra, seconds)
        except VideoError as err:
            raise UserError(str(err)) from None
        visual["pixel_values_videos"] = torch.cat([part[0] for part in parts])  # (sum N_v, row)
        visual["video_grid_thw"] = torch.cat([part[1] for part in parts])  # (videos, 3)
        for key in parts[0][2]:  # Qwen2.5-VL: second_per_grid_ts (videos,)
            visual[key] = torch.cat([part[2][key] for part in parts])
        for video, (_, grid, extra, steps) in zip(media.videos, parts):
            summary = {"path": str(video.path), "kind": "frames" if isinstance(video, FrameFolder) else "video",
                       "source_frames": video.total_frames, "source_fps": round(video.video_fps, 3),
                       "grid_thw": grid[0].tolist()}
            if "second_per_grid_ts" in extra:
                summary["second_per_grid_t"] = round(float(extra["second_per_grid_ts"][0]), 4)
            if steps is not None:
                summary["timestamps"] = steps
            summaries.append(summary)
    return visual, summaries


class Streamer:
    """on_token callback: print each new token's text as soon as it is a whole character."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def __call__(self, token) -> None:  # (1,)
        self.ids.append(int(token[0]))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait until a character split over tokens is complete
            print(text[len(self.shown):], end="", flush=True)
            self.shown = text

    def finish(self) -> None:
        """The end of the answer: print what is left, even a character cut off by max_new_tokens (as \ufffd)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        print(text[len(self.shown):], end="", flush=True)
        self.shown = text


def describe(args) -> int:
    import torch

    from .cli_inputs import UserError, check_checkpoint, check_max_pixels, check_media, check_options
    from .cli_stats import RunStats
    from .describe_boxes import check_boxes_path, draw_answer
    from .model_family import family_of
    from .prompt_limits import check_prompt
    from .weights import CheckpointError, load_pretrained

    stats = RunStats(args.device)
    with stats.stage("check"):  # everything a user can get wrong, before the expensive load
        check_options(args)
        media = check_media(args.inputs, args.fps)
        checked = check_checkpoint(args.checkpoint)  # every file, as the loader checks it; the tokenizer loaded
        folder, tokenizer = checked.folder, checked.tokenizer
        family = family_of(checked.config)  # Qwen2.5-VL or Qwen3-VL: preprocessing and prompt (model_family.py)
        media.max_pixels = check_max_pixels(args.max_pixels, family)  # the family's limit unless --max-pixels
        check_prompt(args, media, checked, args.question or default_question(media))  # context and memory
        boxes_path = check_boxes_path(args.boxes, media) if args.boxes else None
    question = args.question or default_question(media)
    with stats.stage("preprocess"):
        visual, summaries = preprocess_media(media, args.fps, family)
    seconds = [s["timestamps"] for s in summaries if "timestamps" in s] or None  # Qwen3-VL videos only
    if not args.json:
        print(f"loading {folder} ...", file=sys.stderr)
    with stats.stage("load"):
        try:
            model = load_pretrained(folder, dtype=args.dtype, device=args.device, progress=not args.json,
                                    pack=True)  # oneDNN's packed weights where exact (packed.py; $QVL_PACK=0: off)
        except CheckpointError as err:  # e.g. weights of another model next to this config.json
            raise UserError(str(err)) from None

    param = next(model.parameters())
    input_ids = family.encode_chat(tokenizer, question, visual.get("image_grid_thw"), visual.get("video_grid_thw"),
                                   seconds, args.system)  # (1, L)
    visual = {key: value.to(param.device, param.dtype) if key.startswith("pixel") else value.to(param.device)
              for key, value in visual.items()}  # pixels in the model's dtype; grids, seconds as they are
    generator = None if args.seed is None else torch.Generator(param.device).manual_seed(args.seed)
    streamer = None if args.json else Streamer(tokenizer)
    new_ids = stats.timed_generate(model, input_ids.to(param.device), on_token=streamer,
                                   max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                   top_p=args.top_p, generator=generator, **visual)  # (1, n)
    stopped = "eos" if int(new_ids[0, -1]) in model.generation_config.eos_token_id else "max_new_tokens"
    answer = tokenizer.decode(new_ids[0], skip_special_tokens=True)
    drawn = {}
    if boxes_path is not None:  # the model's pixels -> each file's pixels, drawn on a copy (chapter 15)
        objects, per_image, written = draw_answer(answer, media, boxes_path, grids=visual.get("image_grid_thw"))
        drawn = {"objects": objects, "objects_original": per_image, "boxes_files": [str(p) for p in written]}
        note = (f"drew {len(objects)} object(s) on {', '.join(map(str, written))}" if written
                else "no boxes or points in the answer: nothing drawn")
    if args.json:
        result = {"answer": answer, "question": question, "inputs": summaries, "stopped": stopped,
                  "checkpoint": str(folder), "device": args.device,
                  "dtype": str(param.dtype).removeprefix("torch."), **drawn, **stats.as_dict()}
        print(json.dumps(result, ensure_ascii=False))
    else:
        streamer.finish()
        print()
        print(stats.line(), file=sys.stderr)
    if boxes_path is not None:
        print(note, file=sys.stderr)
    return 0
