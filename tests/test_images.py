"""The one image loader: every kind of file people have on disk becomes the right 8-bit RGB, or a
one-line error naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metamergen.utils.images import BACKGROUND, ImageLoadError, load_image, to_pil


def _ramp(h: int = 8, w: int = 16) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))


def test_sixteen_bit_grey_is_scaled_not_clipped_to_white(tmp_path: Path):
    grey8 = _ramp()
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # what Pillow hands over for a 16-bit PNG
        naive = np.asarray(im.convert("RGB"))
    assert (naive == 255).mean() > 0.8  # the bug: a plain convert clips to white
    out = np.asarray(load_image(tmp_path / "g16.png"))
    assert out.shape == (8, 16, 3)
    np.testing.assert_array_equal(out[..., 0], grey8)


def test_eight_bit_modes_convert_as_pillow_does(tmp_path: Path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "rgb.png")), rgb)
    Image.fromarray(_ramp()).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "grey.png"))[..., 1], _ramp())
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "pal.png")), np.asarray(pal.convert("RGB")))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    out = np.asarray(load_image(tmp_path / "cmyk.jpg"), dtype=int)
    assert out.shape == rgb.shape and np.abs(out - rgb).mean() < 20


def test_transparent_pixels_are_composited_on_the_documented_background_with_a_warning(tmp_path: Path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (255, 0, 0)  # red hidden under fully transparent pixels
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="transparent pixels"):
        out = np.asarray(load_image(tmp_path / "a.png"))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[3, 3]) == BACKGROUND
    with pytest.warns(UserWarning, match="transparent"):
        la = to_pil(Image.fromarray(rgba, "RGBA").convert("LA"))
    assert tuple(np.asarray(la)[3, 3]) == BACKGROUND
    opaque = rgba.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    assert tuple(np.asarray(load_image(tmp_path / "opaque.png"))[3, 3]) == (255, 0, 0)  # no warning needed


def test_exif_orientation_is_not_applied_and_is_warned_about(tmp_path: Path):
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[:, :4] = 255
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    with pytest.warns(UserWarning, match="EXIF orientation 6"):
        out = load_image(tmp_path / "rot.jpg")
    assert out.size == (8, 4)  # the stored frame


@pytest.mark.parametrize("kind", ["truncated_jpeg", "truncated_png", "empty", "text", "missing"])
def test_broken_files_fail_with_one_line_naming_the_file(tmp_path: Path, kind: str):
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / f"{kind}.img"
    if kind.startswith("truncated"):
        fmt = "JPEG" if kind.endswith("jpeg") else "PNG"
        Image.fromarray(rgb).save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image\n")
    error = FileNotFoundError if kind == "missing" else ImageLoadError
    with pytest.raises(error) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_generate_stops_on_a_truncated_scene_before_writing_anything(tmp_path: Path):
    """The pre-flight check decodes every scene whole: a JPEG cut in half used to pass it and
    crash mid-study after the first scene's images and manifest rows were written."""
    from metamergen.commands.generate import main as generate_main
    from metamergen.fixations.io import DatasetInfo, write_scanpaths
    from metamergen.fixations.records import Scanpath

    rng = np.random.default_rng(2)
    (tmp_path / "images").mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / "A.png")
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / "B.jpg")
    data = (tmp_path / "images" / "B.jpg").read_bytes()
    (tmp_path / "images" / "B.jpg").write_bytes(data[: len(data) // 2])
    paths = [
        Scanpath.from_points([[5, 5]], width=48, height=32, image=name, id=name, subject="s")
        for name in ("A.png", "B.jpg")
    ]
    jsonl = write_scanpaths(tmp_path / "scanpaths.jsonl", paths, DatasetInfo(image_root="images"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"B\.jpg.*truncated"):
        generate_main(["--tiny", "--out", str(out), "--steps", "1", "--scanpaths", str(jsonl)])
    assert not out.exists()


def test_a_sixteen_bit_scene_is_encoded_like_its_eight_bit_twin(tmp_path: Path):
    from metamergen.training.data import open_rgb

    grey8 = _ramp(16, 16)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "g16.png")), np.asarray(open_rgb(tmp_path / "g8.png")))
