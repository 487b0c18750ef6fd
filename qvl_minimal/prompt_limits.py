"""Will this prompt fit? Counted from the inputs' sizes alone, before the model is loaded.

    media_grids(media, fps)            -> (image_grid_thw (I, 3), video_grid_thw (V, 3)): the grids Qwen2.5-VL's
                                          preprocessing will produce, from each image's size and each video's
                                          header (Qwen3-VL's: model_family.py)
    activation_bytes(config, ...)      -> the memory estimate below, in bytes
    check_prompt(args, media, checked, question) -> the prompt's length in tokens, or one UserError
                                       naming the count, the limit and how to fit

Two limits. The context: the prompt (text + one token per 2 x 2 patches of every image and video)
plus the new tokens must fit the checkpoint's max_position_embeddings (128,000 for the released
models). The memory: the weights (with the packed head's copy where packed.py will make one) plus
the activations must fit the memory free on the device now.

The activation estimate counts the tensors alive at the two peaks of a forward pass, in the compute
dtype (4 bytes for float32, 2 for bfloat16), from the shapes in vision.py and text.py:
    vision tower, all patches P at once (P = 4 x visual tokens): the residual, its norm, qkv, q and k
        after the rotary, the gathered q, k, v and the output of varlen_attention, the projection
        and the window reordering (14 x 1280 per patch for every released size), plus the MLP's gate,
        up and product (3 x 3420): about 25,600 numbers per patch; plus the pixels, 1176 float32 each;
    decoder prefill over the T prompt tokens: embeddings, residual, norm, attention in and out,
        the projection (6 x hidden), k and v (2 x kv_heads x head_dim), the MLP's three (3 x intermediate);
    the KV cache, for T + new tokens: layers x 2 x kv_heads x head_dim numbers per token.
Estimate = max(vision peak, decoder peak) + KV cache. Checked against a measurement (the full-width
stand-in, float32, the vision tower's added peak resident memory): 4,096 patches, 462 MB measured,
485 MB estimated; 16,384 patches, 917 MB measured, 1,941 MB estimated (freed buffers are reused, more
so for large inputs). So it errs on the generous side: a prompt refused here may just fit, one that
passes should (other programs permitting). The memory compared with is what the device has free now.
"""

from __future__ import annotations

import torch

from .cli_inputs import UserError
from .preprocess import (FACTOR, MERGE, PATCH, TEMPORAL, VIDEO_MIN_PIXELS, frame_pixel_budget, sample_frame_indices,
                         smart_resize)


def media_grids(media, fps: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The grid_thw rows preprocessing will give each image and video, without decoding a pixel."""
    images = [[1, h // PATCH, w // PATCH] for _, image in media.images
              for h, w in [smart_resize(image.height, image.width, max_pixels=media.max_pixels)]]
    videos = []
    for video in media.videos:  # preprocess_video's rule: the sampled frame count sets the per-frame budget
        frames = len(sample_frame_indices(video.total_frames, video.video_fps, fps)[0])
        h, w = smart_resize(video.height, video.width, FACTOR, VIDEO_MIN_PIXELS, frame_pixel_budget(frames))
        videos.append([frames // TEMPORAL, h // PATCH, w // PATCH])
    return (torch.tensor(images) if images else None), (torch.tensor(videos) if videos else None)


def activation_bytes(config, patches: int, prompt_tokens: int, new_tokens: int, bytes_per: int) -> int:
    """The estimate of the module's docstring, in bytes."""
    v, t = config.vision_config, config.text_config
    vision = patches * ((14 * v.hidden_size + 3 * v.intermediate_size) * bytes_per + v.patch_dim * 4)
    kv = 2 * t.num_key_value_heads * t.head_dim
    decoder = prompt_tokens * (6 * t.hidden_size + kv + 3 * t.intermediate_size) * bytes_per
    cache = (prompt_tokens + new_tokens) * t.num_hidden_layers * kv * bytes_per
    return max(vision, decoder) + cache


def check_prompt(args, media, checked, question: str) -> int:
    """Refuse, before the load, a prompt longer than the model's context or larger than the memory free
    on the device (the module's docstring). -> the prompt's length in tokens."""
    from .cli_inputs import check_dtype
    from .params import count_parameters
    from .model_family import family_of
    from .packed import head_copy_bytes
    from .storage import choose_storage, free_memory

    family = family_of(checked.config)  # Qwen2.5-VL's or Qwen3-VL's grids and prompt
    dtype, _ = check_dtype(args.device, args.dtype)
    try:
        storage, _ = choose_storage(checked.config, dtype, device=args.device)  # $QVL_STORAGE is read here
        packed = head_copy_bytes(checked.config, dtype, args.device, storage)  # $QVL_PACK is read here
        available = free_memory(args.device) if args.device != "mps" else None  # mps: no rule, not checked
    except ValueError as err:
        raise UserError(str(err)) from None
    image_grid, video_grid, seconds = family.media_grids(media, args.fps)
    length = family.encode_chat(checked.tokenizer, question, image_grid, video_grid, seconds, args.system).shape[1]
    per_input = [int(g.prod()) // MERGE**2 for grid in (image_grid, video_grid) if grid is not None for g in grid]
    visual, limit = sum(per_input), checked.config.text_config.max_position_embeddings
    how = (f"shrink each image with --max-pixels (now {media.max_pixels:,} pixels = {media.max_pixels // 784:,} "
           "tokens at most), give fewer images, or fewer video frames (a lower --fps)")
    if length + args.max_new_tokens > limit:
        counts = ", ".join(f"{n:,}" for n in per_input[:8]) + (", ..." if len(per_input) > 8 else "")
        raise UserError(f"the prompt is {length:,} tokens ({visual:,} visual: {counts} per input) + "
                        f"{args.max_new_tokens:,} new, over this checkpoint's context of {limit:,} "
                        f"(max_position_embeddings); {how}, or lower --max-new-tokens")
    if available is None:
        return length
    bytes_per = torch.finfo(dtype).bits // 8
    weights = count_parameters(checked.config)["total"] * (2 if storage == "bfloat16" else bytes_per) + packed
    patches = visual * MERGE**2
    need = weights + activation_bytes(checked.config, patches, length, args.max_new_tokens, bytes_per)
    if need > available:
        raise UserError(f"this prompt ({length:,} tokens, {visual:,} of them visual) needs about {need / 1e9:.1f} GB "
                        f"({weights / 1e9:.1f} GB of weights in {str(dtype).removeprefix('torch.')}, "
                        f"{(need - weights) / 1e9:.1f} GB of activations, estimated), {available / 1e9:.1f} GB of "
                        f"memory is free; {how}, or close other programs")
    return length
