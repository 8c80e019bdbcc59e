"""Mask geometry against hand-computed cases, and the peripheral degradation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from metamergen.encoders.dinov2 import dinov2_processor
from metamergen.foveation.fovea import foveal_crop, random_patch_mask, token_mask
from metamergen.foveation.frame import EncoderFrame
from metamergen.foveation.periphery import GaussianBlur, peripheral_image


def cells(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(mask))}


# --------------------------------------------------------------------------- frames and masks


def test_squash_maps_a_wide_scene_onto_the_whole_grid():
    # COCO-FreeView's 1680x1050 frame: 1 canvas px = 1680/448 = 3.75 image px in x, 2.34375 in y.
    f = EncoderFrame.fit(1680, 1050)
    assert f.box == (0, 0, 1680, 1050) and f.grid_size == 32
    # (100, 50) -> canvas (26.67, 21.33) -> cell (row 1, col 1)
    assert cells(token_mask([[100, 50]], f)) == {(1, 1)}
    # centre -> canvas (224, 224) -> cell (16, 16); far corner stays inside the grid
    assert cells(token_mask([[840, 525], [1679.99, 1049.99], [0, 0]], f)) == {(16, 16), (31, 31), (0, 0)}
    # patch boundary: canvas x = 14 exactly is column 1 (pixel i covers [i, i+1))
    assert cells(token_mask([[14 * 3.75, 0]], f)) == {(0, 1)}


def test_letterbox_keeps_aspect_and_pads_top_and_bottom():
    f = EncoderFrame.fit(1680, 1050, mode="letterbox")
    assert f.box == (0, -315, 1680, 1365)
    # image (0, 0) -> canvas (0, 315 * 448 / 1680 = 84) -> row 6 exactly
    assert cells(token_mask([[0, 0]], f)) == {(6, 0)}
    # the image's bottom edge lands at canvas 84 + 280 = 364 -> row 25 is the last image row
    assert cells(token_mask([[0, 1049.9]], f)) == {(25, 0)}


def test_center_crop_loses_the_sides_and_their_fixations():
    f = EncoderFrame.fit(1680, 1050, mode="center_crop")
    assert f.box == (315, 0, 1365, 1050)
    assert token_mask([[300, 500]], f).sum() == 0  # cropped away: marks nothing
    assert cells(token_mask([[315, 0], [1364.9, 1049.9]], f)) == {(0, 0), (31, 31)}


def test_off_centre_crop_box_at_one_to_one_scale():
    f = EncoderFrame.fit(1000, 1000, box=(100, 200, 548, 648))
    assert f.scale == (1.0, 1.0)
    assert cells(token_mask([[100 + 14 * 3 + 1, 200 + 14 * 5 + 13.9]], f)) == {(5, 3)}
    with pytest.raises(ValueError, match="outside"):
        EncoderFrame.fit(1000, 1000, box=(900, 0, 1348, 448))


def test_mask_is_row_major_in_token_order():
    f = EncoderFrame.fit(448, 448)
    flat = token_mask([[14 * 5 + 1, 14 * 2 + 1]], f).ravel()  # row 2, col 5
    assert np.flatnonzero(flat).tolist() == [2 * 32 + 5]


def test_empty_fixation_list_masks_nothing():
    assert token_mask(np.zeros((0, 2)), EncoderFrame.fit(640, 480)).sum() == 0


def test_radius_in_pixels_adds_patches_whose_centres_are_within_it():
    f = EncoderFrame.fit(448, 448)  # 1 image px = 1 canvas px
    xy = [[14 * 10 + 7, 14 * 10 + 7]]  # centre of cell (10, 10)
    assert cells(token_mask(xy, f, radius_px=14)) == {(10, 10), (9, 10), (11, 10), (10, 9), (10, 11)}
    assert cells(token_mask(xy, f, radius_px=13.9)) == {(10, 10)}


def test_radius_is_measured_in_image_pixels_under_squash():
    # 896x448 image: 2 image px per canvas px in x, 1 in y. A 28-px circle spans one cell each
    # side horizontally (28 / 2 / 14) but two cells each side vertically (28 / 14).
    f = EncoderFrame.fit(896, 448)
    xy = [[2 * (14 * 10 + 7), 14 * 10 + 7]]
    expected = {(10, 9), (10, 10), (10, 11), (8, 10), (9, 10), (11, 10), (12, 10)}
    assert cells(token_mask(xy, f, radius_px=28)) == expected


def test_radius_in_degrees_needs_pixels_per_degree():
    f = EncoderFrame.fit(448, 448)
    xy = [[147, 147]]
    assert cells(token_mask(xy, f, radius_deg=0.5, pixels_per_degree=28)) == cells(token_mask(xy, f, radius_px=14))
    with pytest.raises(ValueError, match="pixels_per_degree"):
        token_mask(xy, f, radius_deg=1.0)
    with pytest.raises(ValueError, match="not both"):
        token_mask(xy, f, radius_deg=1.0, radius_px=3, pixels_per_degree=30)


def test_frame_rejects_bad_geometry():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        EncoderFrame.fit(100, 100, size=450)
    with pytest.raises(ValueError, match="fit mode"):
        EncoderFrame.fit(100, 100, mode="stretch")


@pytest.mark.parametrize("mode", ["squash", "letterbox", "center_crop"])
def test_pixels_and_fixations_agree_through_the_processor(mode):
    # A bright square in a dark 300x200 scene must appear where the frame maps its centre.
    img = np.zeros((200, 300, 3), dtype=np.uint8)
    img[40:70, 150:180] = 255
    frame = EncoderFrame.fit(300, 200, size=112, patch_size=14, mode=mode)
    canvas = dinov2_processor(112)(images=[frame.crop(Image.fromarray(img))], return_tensors="pt").pixel_values[0]
    bright = canvas.mean(0) > 0
    ys, xs = np.nonzero(bright.numpy())
    measured = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    expected = frame.to_canvas([[165, 55]])[0]
    assert np.abs(measured - expected).max() < 1.0


# --------------------------------------------------------------------------- periphery


def checkerboard(size: int = 64) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((x + y) % 2).float().expand(1, 3, size, size).clone()


def test_downup_scale_one_is_identity_and_constants_survive():
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(peripheral_image(x, 1.0), x)
    c = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(peripheral_image(c, 0.125), c, atol=1e-6)


def test_downup_removes_fine_detail_and_keeps_coarse_layout():
    fine = checkerboard()
    assert peripheral_image(fine, 0.25).std() < 0.05 * fine.std()
    coarse = torch.zeros(1, 3, 64, 64)
    coarse[..., :, 32:] = 1.0  # left/right halves survive s = 1/4
    out = peripheral_image(coarse, 0.25)
    assert out[..., :, :24].max() < 0.05 and out[..., :, 40:].min() > 0.95
    assert peripheral_image(fine, 0.5).shape == fine.shape


def test_smaller_scale_blurs_more():
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    stds = [peripheral_image(x, s).std().item() for s in (1.0, 0.5, 0.25, 0.125)]
    assert stds == sorted(stds, reverse=True)


def test_gaussian_option():
    fine = checkerboard()
    assert torch.equal(peripheral_image(fine, GaussianBlur(0)), fine)
    assert peripheral_image(fine, GaussianBlur(2.0)).std() < 0.05 * fine.std()


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan")])
def test_bad_blur_scales_are_rejected(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        peripheral_image(torch.zeros(1, 3, 8, 8), bad)


def test_random_patch_mask_draws_k_distinct_patches_reproducibly():
    a = random_patch_mask(5, 32, generator=torch.Generator().manual_seed(1))
    b = random_patch_mask(5, 32, generator=torch.Generator().manual_seed(1))
    c = random_patch_mask(5, 32, generator=torch.Generator().manual_seed(2))
    assert a.sum() == 5 and torch.equal(a, b) and not torch.equal(a, c)
    assert random_patch_mask(2000, 4).sum() == 16


def test_foveal_crop_keeps_pixels_inside_the_windows_only():
    f = EncoderFrame.fit(448, 448, size=448)
    pixels = torch.ones(3, 448, 448)
    out = foveal_crop(pixels, np.array([[100.0, 200.0]]), f, radius_px=10)
    assert out[:, 200, 100].eq(1).all() and out[:, 200, 115].eq(0).all()
    assert int(out[0].sum()) == pytest.approx(np.pi * 10**2, rel=0.1)


@pytest.mark.parametrize("size", [(800, 600), (100, 100), (25, 50), (1680, 1050)])
def test_fixations_clipped_to_the_border_still_mark_the_edge_patch(size):
    # clip puts them at nextafter(width, 0), which can round to exactly the canvas edge
    w, h = size
    xy = np.array([[np.nextafter(w, 0), np.nextafter(h, 0)], [0.0, np.nextafter(h, 0)]])
    assert cells(token_mask(xy, EncoderFrame.fit(w, h))) == {(31, 31), (31, 0)}  # squash: the corners
    assert len(cells(token_mask(xy, EncoderFrame.fit(w, h, mode="letterbox")))) == 2
