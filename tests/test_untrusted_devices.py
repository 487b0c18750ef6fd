"""Devices and dtypes: pixels follow the vision tower (its dtype, as the reference casts them, and
its device), and a sampling generator on another device than the model is a clear error."""

import pytest
import torch

import qvl_minimal as qvl

TINY = qvl.Qwen25VLConfig.preset("tiny")
IDS = torch.tensor([[151644, 872, 198, 151652] + [151655] * 4 + [151653, 3838, 374, 30, 151645, 198]])
GRID = torch.tensor([[1, 4, 4]])


@pytest.fixture(scope="module")
def mixed():
    """The vision tower in float32, the language model and head in bfloat16 (a common GPU setup)."""
    torch.manual_seed(0)
    model = qvl.Qwen25VL(TINY).eval()
    model.model.bfloat16()
    model.lm_head.bfloat16()
    return model


@torch.no_grad()
def test_pixels_take_the_vision_towers_dtype(mixed):
    pixels = torch.randn(16, 1176, generator=torch.Generator().manual_seed(1))  # float32, as preprocessed
    x = mixed.embed(IDS, pixel_values=pixels, image_grid_thw=GRID)  # before: bfloat16 pixels into a float32 tower
    assert x.dtype == torch.bfloat16 and x.shape == (1, IDS.shape[1], 64)
    features = mixed.visual(pixels, GRID).to(torch.bfloat16)  # (4, 64) computed in float32
    assert torch.equal(x[IDS == 151655], features)
    assert torch.equal(mixed.embed(IDS, pixel_values=pixels.double(), image_grid_thw=GRID), x)  # float64 too
    assert mixed(IDS, pixel_values=pixels, image_grid_thw=GRID).dtype == torch.bfloat16
    assert mixed.generate(IDS, 2, pixel_values=pixels, image_grid_thw=GRID).shape == (1, 2)
    video = mixed.embed(IDS.where(IDS != 151655, 151656), pixel_values_videos=pixels.bfloat16(), video_grid_thw=GRID)
    assert torch.equal(video[IDS == 151655], mixed.visual(pixels.bfloat16().float(), GRID).to(torch.bfloat16))


@torch.no_grad()
def test_pixels_move_to_the_vision_towers_device(monkeypatch):
    """The tower on the meta device (standing in for a GPU): it receives its pixels there."""
    torch.manual_seed(0)
    model = qvl.Qwen25VL(TINY).eval()
    model.visual.to("meta")
    seen = []

    def tower(pixels, grid):  # records what the tower was given; answers features on the CPU
        seen.append((pixels.device.type, pixels.dtype))
        return torch.ones(pixels.shape[0] // 4, 64)

    monkeypatch.setattr(model.visual, "forward", tower)
    x = model.embed(IDS, pixel_values=torch.randn(16, 1176, dtype=torch.float64), image_grid_thw=GRID)
    assert seen == [("meta", torch.float32)] and x.device.type == "cpu" and (x[IDS == 151655] == 1).all()


def test_a_generator_on_another_device_is_a_clear_error():
    with torch.device("meta"):
        model = qvl.Qwen25VL(TINY)
    with pytest.raises(ValueError, match=r"the generator is on cpu but the model samples on meta; make it there: "
                                         r"torch.Generator\(device='meta'\)"):
        model.generate(IDS.to("meta"), 3, temperature=1.0, generator=torch.Generator().manual_seed(0))
