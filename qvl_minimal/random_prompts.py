"""Random prompts for checks: text ids, images and videos of a given patch grid, and left-padded batches.

    sample(cfg, 5, ("image", (1, 4, 4)), 9, seed=1)  -> one prompt (batch of 1): 5 random text ids, an image
                                                        of 1 x 4 x 4 patches with random pixels, 9 more ids
    left_padded(row, row, ...)                       -> one batch, shorter rows padded on the left

Random pixels and ids exercise every path of the model (splice, M-RoPE, padding) without a tokenizer or a
picture; the chapters' checks and the tests build their batches with these.
"""

import torch

PAD = 151643  # <|endoftext|>: fills left padding, and the rows that finished generating


def sample(cfg, *parts, seed=0) -> dict:
    """One prompt (batch of 1): an int n = n random text ids; ("image", (t, h, w)) an image of that
    patch grid with random pixels; ("video", (t, h, w), seconds_per_time_step) a video."""
    gen = torch.Generator().manual_seed(seed)
    merge = cfg.vision_config.spatial_merge_size ** 2
    ids, visual = [], {"image": ([], []), "video": ([], [])}
    seconds = []
    for part in parts:
        if isinstance(part, int):
            ids += torch.randint(0, 151000, (part,), generator=gen).tolist()  # no special ids
            continue
        kind, (t, h, w) = part[0], part[1]
        token = cfg.image_token_id if kind == "image" else cfg.video_token_id
        ids += [cfg.vision_start_token_id] + [token] * (t * h * w // merge) + [cfg.vision_end_token_id]
        visual[kind][0].append(torch.randn(t * h * w, cfg.vision_config.patch_dim, generator=gen))
        visual[kind][1].append([t, h, w])
        if kind == "video":
            seconds.append(part[2])
    out = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    for kind, pixels_key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                       ("video", "pixel_values_videos", "video_grid_thw")):
        if visual[kind][0]:
            out[pixels_key] = torch.cat(visual[kind][0])  # (patches, 1176)
            out[grid_key] = torch.tensor(visual[kind][1])  # (n, 3)
    if seconds:
        out["second_per_grid_ts"] = torch.tensor(seconds)
    return out


def left_padded(*rows: dict, pad: int = PAD) -> dict:
    """Several one-row prompts -> one batch, left padded with `pad`; visual inputs in row order."""
    length = max(r["input_ids"].shape[1] for r in rows)
    out = {
        "input_ids": torch.cat([torch.nn.functional.pad(r["input_ids"], (length - r["input_ids"].shape[1], 0),
                                                        value=pad) for r in rows]),
        "attention_mask": torch.cat([torch.nn.functional.pad(r["attention_mask"],
                                                             (length - r["input_ids"].shape[1], 0)) for r in rows]),
    }
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [r[key] for r in rows if key in r]
        if parts:
            out[key] = torch.cat(parts)
    return out
