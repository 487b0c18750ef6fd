"""Images and videos from the wild: EXIF orientation, decompression bombs, transparent palettes,
16-bit PNGs (load_image opens files), and videos read as a stream (preprocess_video)."""

import itertools
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

import qvl_minimal as qvl
from qvl_minimal import preprocess as P
from qvl_minimal.image_files import ImageFileError, load_image


def sideways_jpeg(path):
    """A 300 x 100 photo stored sideways with EXIF orientation 6 ("rotate 90 clockwise to view"):
    red on the stored left, blue on the right -> red on top, blue at the bottom when shown."""
    pixels = np.zeros((100, 300, 3), dtype=np.uint8)
    pixels[:, :150, 0] = 255
    pixels[:, 150:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied_when_opening_a_file(tmp_path):
    path = sideways_jpeg(tmp_path / "phone.jpg")
    upright = load_image(path)
    assert upright.mode == "RGB" and upright.size == (100, 300)  # (width, height): now portrait
    shown = np.asarray(upright).astype(int)
    assert shown[:100, :, 0].mean() > 200 and shown[:100, :, 2].mean() < 50  # red on top
    assert shown[-100:, :, 2].mean() > 200 and shown[-100:, :, 0].mean() < 50  # blue at the bottom
    assert qvl.preprocess_image(upright)[1].tolist() == [[1, 22, 8]]
    with Image.open(path) as opened:  # an image already open is preprocessed as it is (unchanged)
        assert qvl.preprocess_image(opened)[1].tolist() == [[1, 8, 22]]


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (200, 100)).save(path)  # a small file; the limit lowered to make it a "bomb"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # over the limit: Pillow warns only
    with pytest.raises(ImageFileError, match=r"bomb.png: 200 x 100 = 20,000 pixels is over Pillow's decompression-bomb "
                                             r"limit of 10,000"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # over twice the limit: Pillow raises
    with pytest.raises(ImageFileError, match=r"bomb.png: Image size \(20000 pixels\) exceeds limit .* raise "
                                             r"PIL.Image.MAX_IMAGE_PIXELS"):
        load_image(path)


def test_missing_broken_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file .*nothing.png"):
        load_image(tmp_path / "nothing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageFileError, match="text.png: not an image Pillow can read"):
        load_image(tmp_path / "text.png")
    sideways_jpeg(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "head.jpg").write_bytes(data[:100])  # cut inside the header
    with pytest.raises(ImageFileError, match="head.jpg: not an image Pillow can read, or a damaged one"):
        load_image(tmp_path / "head.jpg")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])  # cut inside the pixels
    with pytest.raises(ImageFileError, match="cut.jpg: the file is damaged or truncated"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageFileError, match="not an image Pillow can read"):
        load_image(tmp_path)  # a folder


def _tiff_entry(data: bytes, tag: int) -> int:
    """Offset of the type field of `tag`'s entry in the first directory of a little-endian TIFF."""
    assert data[:2] == b"II"
    directory = int.from_bytes(data[4:8], "little")
    for entry in range(directory + 2, directory + 2 + 12 * int.from_bytes(data[directory:directory + 2], "little"), 12):
        if int.from_bytes(data[entry:entry + 2], "little") == tag:
            return entry + 2
    raise AssertionError(f"no tag {tag}")


def test_damaged_headers_and_chunks_name_the_file(tmp_path):
    """Pillow answers bytes it cannot parse with OSError, SyntaxError, TypeError ...: each is an ImageFileError
    whose message starts with the file's path, whether it happens on opening or on reading the pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    data = _saved(tmp_path / "full.jpg", Image.fromarray(pixels)).read_bytes()
    (tmp_path / "cut_header.jpg").write_bytes(data[:30])  # inside the header: Pillow's "Truncated File Read"
    with pytest.raises(ImageFileError, match=r"cut_header.jpg: not an image .* \(Truncated File Read\)"):
        load_image(tmp_path / "cut_header.jpg")
    data = bytearray(_saved(tmp_path / "full.png", Image.fromarray(pixels)).read_bytes())
    length = data.index(b"IDAT") - 4  # the chunk's length field, made to lie: half the real length
    data[length:length + 4] = (int.from_bytes(data[length:length + 4], "big") // 2).to_bytes(4, "big")
    (tmp_path / "lying_chunk.png").write_bytes(data)  # opens; reading the pixels meets a broken chunk
    with pytest.raises(ImageFileError, match=r"lying_chunk.png: the file is damaged or truncated \(broken PNG"):
        load_image(tmp_path / "lying_chunk.png")
    data = bytearray(_saved(tmp_path / "full.tiff", Image.fromarray(pixels)).read_bytes())
    data[_tiff_entry(data, 257)] = 11  # ImageLength stored as a FLOAT: Pillow's ValueError or TypeError
    (tmp_path / "float_height.tiff").write_bytes(data)
    with pytest.raises(ImageFileError, match="float_height.tiff: .*damaged"):
        load_image(tmp_path / "float_height.tiff")


def test_palette_with_transparency_is_pasted_on_white_like_rgba(tmp_path):
    palette = Image.new("P", (40, 30))
    palette.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)  # colour 0 red, colour 1 blue
    palette.paste(1, (20, 0, 40, 30))  # right half blue, left half red ...
    palette.info["transparency"] = 0  # ... and the red is transparent
    palette.save(tmp_path / "p.png")
    loaded = np.asarray(load_image(tmp_path / "p.png"))
    assert (loaded[:, :20] == 255).all() and (loaded[:, 20:] == [0, 0, 200]).all()
    rgba = np.asarray(load_image(_saved(tmp_path / "rgba.png", palette.convert("RGBA"))))
    assert np.array_equal(loaded, rgba)  # the same as the RGBA file
    # an image already open: converted as the reference does, transparency dropped like RGBA's alpha
    with Image.open(tmp_path / "p.png") as opened:
        assert np.array_equal(np.asarray(P.to_rgb(opened)), np.asarray(P.to_rgb(opened.convert("RGBA"))))


def _saved(path, image):
    image.save(path)
    return path


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257, 1000], [32768, 65280, 65535]], dtype=np.uint16)
    path = _saved(tmp_path / "deep.png", Image.fromarray(values))
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
        assert (np.asarray(P.to_rgb(opened))[..., 0] == 255).sum() == 5  # PIL alone: clipped, 5 of 6 white
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (2, 3, 3) and loaded[..., 0].tolist() == [[0, 1, 4], [128, 254, 255]]
    assert (loaded == loaded[..., :1]).all()  # grey
    wide = Image.fromarray(np.array([[-1, 70000]], dtype=np.int32))  # mode I, outside 16 bits
    with pytest.raises(ImageFileError, match=r"wide.tiff: mode 'I' with values -1..70000, outside 16-bit"):
        load_image(_saved(tmp_path / "wide.tiff", wide))
    with pytest.raises(ImageFileError, match="mode 'F' .* has no agreed 8-bit scale"):
        load_image(_saved(tmp_path / "float.tiff", Image.fromarray(np.zeros((2, 2), dtype=np.float32))))


def test_video_from_a_generator_keeps_only_the_sampled_frames():
    """20,000 frames (11 minutes at 30 fps) from a generator: the function never holds more than a
    couple of decoded frames, and its output equals the list's bit for bit (checked on 300)."""
    alive, most = [0], [0]

    def decoder(n, seed=0):
        rng = np.random.default_rng(seed)
        for _ in range(n):
            frame = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
            alive[0] += 1
            most[0] = max(most[0], alive[0])
            weakref.finalize(frame, lambda: alive.__setitem__(0, alive[0] - 1))
            yield frame
            del frame

    small = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}  # kept frames grow only to 56 x 84: a fast test
    values, grid, seconds = qvl.preprocess_video(decoder(20_000), 30.0, 0.1, total_frames=20_000, **small)
    assert grid.tolist() == [[33, 4, 6]] and most[0] <= 3  # 66 frames kept, resized; 20,000 read
    assert seconds.tolist() == [pytest.approx(2 / (66 / 20_000 * 30))]
    streamed = qvl.preprocess_video(decoder(300, seed=1), 30.0, total_frames=300, **small)
    listed = qvl.preprocess_video(list(decoder(300, seed=1)), 30.0, **small)
    assert all(torch.equal(a, b) for a, b in zip(streamed, listed))


def test_video_generator_errors():
    frames = (np.zeros((30, 30, 3), dtype=np.uint8) for _ in range(10))
    with pytest.raises(TypeError, match="frames is a generator, read once: pass total_frames=N"):
        qvl.preprocess_video(frames, 30.0)
    with pytest.raises(ValueError, match="the frames ended after 10, but total_frames=12"):
        qvl.preprocess_video(frames, 30.0, total_frames=12)
    endless = itertools.repeat(np.zeros((30, 30, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="the frames go on past total_frames=8"):
        qvl.preprocess_video(endless, 30.0, total_frames=8)
    mixed = iter([np.zeros((30, 30, 3), dtype=np.uint8)] * 4 + [np.zeros((30, 31, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"frame 4 is \(31, 30\), frame 0 is \(30, 30\)"):
        qvl.preprocess_video(mixed, 30.0, total_frames=5)
    with pytest.raises(ValueError, match="total_frames=5 but the list holds 4 frames"):
        qvl.preprocess_video([np.zeros((30, 30, 3), dtype=np.uint8)] * 4, 30.0, total_frames=5)
