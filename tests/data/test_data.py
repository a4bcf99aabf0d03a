"""Images in: decoding of every Pillow mode, bad files, folders, npz, tensors, preprocessing."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from face_concepts.data import (
    ImageSet,
    Preprocess,
    decode_image,
    list_image_files,
    load_class_folders,
    load_images,
    preprocess_images,
    to_rgb,
)
from face_concepts.data.decode import BOMB_REASON

# Lossy JPEG round trips move a flat colour by a few levels.
JPEG_LEVELS = 12
# Pillow's integer CMYK→RGB and alpha compositing round differently from float oracles.
ROUNDING_LEVELS = 1


def _rng_image(mode_size=(12, 9), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = mode_size
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int64)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return str(path)


# --------------------------------------------------------------------------- modes


def test_grey_l_replicated_to_rgb(tmp_path):
    g = _rng_image()[..., 0]
    path = _save(Image.fromarray(g, "L"), tmp_path / "g.png")
    out = _rgb(load_images(path).images[0])
    np.testing.assert_array_equal(out, np.repeat(g[..., None], 3, axis=-1))


def test_la_and_rgba_composite_on_white(tmp_path):
    rgb = _rng_image(seed=1)
    alpha = _rng_image(seed=2)[..., 0]
    alpha[0, 0], alpha[0, 1] = 0, 255
    rgba = np.dstack([rgb, alpha])
    a = alpha[..., None] / 255.0
    expect = rgb * a + 255.0 * (1 - a)  # "over" on an opaque white background
    p1 = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")
    out = _rgb(load_images(p1).images[0])
    assert np.abs(out - expect).max() <= ROUNDING_LEVELS
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], rgb[0, 1])

    la = np.dstack([rgb[..., 0], alpha])
    p2 = _save(Image.fromarray(la, "LA"), tmp_path / "la.png")
    out = _rgb(load_images(p2).images[0])
    expect_l = rgb[..., :1] * a + 255.0 * (1 - a)
    assert np.abs(out - expect_l).max() <= ROUNDING_LEVELS


def test_palette_with_and_without_transparency(tmp_path):
    palette = np.array([[255, 0, 0], [0, 128, 0], [10, 20, 30], [200, 200, 0]], dtype=np.uint8)
    idx = np.random.default_rng(3).integers(0, 4, size=(7, 9)).astype(np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette.flatten().tolist())
    out = _rgb(load_images(_save(img, tmp_path / "p.png")).images[0])
    np.testing.assert_array_equal(out, palette[idx])  # oracle: palette lookup

    p_t = _save(img, tmp_path / "pt.png", transparency=1)
    out = _rgb(load_images(p_t).images[0])
    expect = palette[idx].astype(np.int64)
    expect[idx == 1] = 255
    np.testing.assert_array_equal(out, expect)


def test_cmyk_to_rgb(tmp_path):
    cmyk = _rng_image(seed=4)
    k = _rng_image(seed=5)[..., :1]
    arr = np.dstack([cmyk, k])
    path = _save(Image.fromarray(arr, "CMYK"), tmp_path / "c.tif")
    out = _rgb(load_images(path).images[0])
    # Subtractive model: channel = (255 - ink) * (255 - black) / 255.
    expect = (255.0 - cmyk) * (255.0 - k) / 255.0
    assert np.abs(out - expect).max() <= ROUNDING_LEVELS


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    vals = np.array([[0, 257, 32896], [40000, 65280, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(vals), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    out = _rgb(load_images(path).images[0])
    expect = np.round(vals / 257.0)
    np.testing.assert_array_equal(out[..., 0], expect)
    np.testing.assert_array_equal(out[..., 2], expect)
    # Clipping to 255 would saturate every value above 255; scaling keeps them distinct.
    assert len(np.unique(out[..., 0])) == vals.size


def test_int32_and_float_modes(tmp_path):
    vals = np.array([[0, 1000], [30000, 65535]], dtype=np.int32)
    img_i = Image.fromarray(vals)
    assert img_i.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_rgb(img_i))[..., 1], np.round(vals / 257.0))
    f = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    img_f = Image.open(_save(Image.fromarray(f), tmp_path / "f.tif"))
    assert img_f.mode == "F"
    np.testing.assert_array_equal(np.asarray(to_rgb(img_f))[..., 0], np.round(f * 255.0))


def test_exif_orientation_applied(tmp_path):
    raw = np.full((20, 40, 3), 255, dtype=np.uint8)
    raw[:8, :8] = [255, 0, 0]  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = _save(Image.fromarray(raw), tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    img = load_images(path).images[0]
    assert img.size == (20, 40)  # (W, H) swapped
    out = _rgb(img)
    # After a clockwise quarter turn the stored top-left lies at the top-right.
    assert np.abs(out[2, 17] - [255, 0, 0]).max() <= JPEG_LEVELS
    assert np.abs(out[2, 2] - [255, 255, 255]).max() <= JPEG_LEVELS


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 5), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 2
    s = load_images(path)
    assert len(s) == 1
    np.testing.assert_array_equal(_rgb(s.images[0])[0, 0], [255, 0, 0])


def test_in_memory_images_are_converted_and_unchanged():
    src = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    s = load_images([src, Image.new("L", (4, 2), 7)])
    assert [im.mode for im in s.images] == ["RGB", "RGB"]
    assert s.paths == [None, None] and not s.preprocessed
    assert src.mode == "RGBA"  # the caller's image is not modified
    assert decode_image(src).getpixel((0, 0)) == (255, 255, 255)


# --------------------------------------------------------------------------- bad files


def _jpeg_bytes(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rng_image(size, seed=9)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def messy_folder(tmp_path):
    root = tmp_path / "messy"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(_rng_image()).save(root / "good.png")
    Image.fromarray(_rng_image()).save(root / "sub" / "deep.JPG", format="JPEG")
    data = _jpeg_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image")
    (root / "notes.txt").write_text("ignored by extension")
    return root


def test_bad_files_skipped_with_one_warning(messy_folder):
    with pytest.warns(UserWarning) as record:
        s = load_images(messy_folder)
    mine = [w for w in record if "unreadable" in str(w.message)]
    assert len(mine) == 1
    msg = str(mine[0].message)
    for name in ("truncated.jpg", "empty.png", "text.jpg"):
        assert name in msg
    assert "notes.txt" not in msg
    assert sorted(p.split("/")[-1] for p, _ in s.skipped) == [
        "empty.png",
        "text.jpg",
        "truncated.jpg",
    ]
    assert [p.split("/")[-1] for p in s.paths] == ["good.png", "deep.JPG"]
    reasons = dict((p.split("/")[-1], r) for p, r in s.skipped)
    assert "0 bytes" in reasons["empty.png"]
    assert len(s) == 2


def test_strict_raises_naming_file(messy_folder):
    with pytest.raises(ValueError, match=r"empty\.png"):
        load_images(messy_folder, strict=True)
    with pytest.raises(ValueError, match=r"truncated\.jpg"):
        decode_image(messy_folder / "truncated.jpg")


def test_no_usable_image_and_empty_folder(tmp_path):
    empty = tmp_path / "nothing here"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="nothing here"):
        load_images(empty)
    bad = tmp_path / "all_bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="all_bad"):
        load_images(bad)
    with pytest.raises(ValueError, match="empty"):
        load_images([])
    with pytest.raises(FileNotFoundError, match="missing"):
        load_images(tmp_path / "missing.png")


def test_decompression_bomb_skipped(tmp_path, monkeypatch):
    _save(Image.new("RGB", (12, 12)), tmp_path / "warn_range.png")  # 144 px: Pillow warns
    _save(Image.new("RGB", (20, 20)), tmp_path / "error_range.png")  # 400 px: Pillow raises
    _save(Image.new("RGB", (5, 5)), tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(UserWarning, match="decompression bomb"):
        s = load_images(tmp_path)
    assert [p.split("/")[-1] for p in s.paths] == ["small.png"]
    assert sorted(r for _, r in s.skipped) == [BOMB_REASON, BOMB_REASON]


# --------------------------------------------------------------------------- folders, paths


def test_folder_listing_sorted_recursive_case_insensitive(tmp_path):
    for rel in ["b.PNG", "a.jpg", "sub/c.JpEg", "sub/z/d.webp", "x.txt", "e.tiff"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            p.write_text("x")
        else:
            Image.new("RGB", (4, 4), (1, 2, 3)).save(
                p, format=rel.split(".")[-1].upper().replace("JPG", "JPEG")
            )
    names = [f[len(str(tmp_path)) + 1 :] for f in list_image_files(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "e.tiff", "sub/c.JpEg", "sub/z/d.webp"]
    flat = [f.split("/")[-1] for f in list_image_files(tmp_path, recursive=False)]
    assert flat == ["a.jpg", "b.PNG", "e.tiff"]
    only_png = list_image_files(tmp_path, extensions=("png",))
    assert [f.split("/")[-1] for f in only_png] == ["b.PNG"]
    assert len(load_images(tmp_path, recursive=False)) == 3


def test_spaces_and_non_ascii_paths(tmp_path):
    folder = tmp_path / "dossier été 写真"
    folder.mkdir()
    path = _save(Image.fromarray(_rng_image()), folder / "ça va ñ.png")
    for source in (folder, path, [path]):
        s = load_images(source)
        assert s.paths == [path]
        np.testing.assert_array_equal(np.asarray(s.images[0]), _rng_image())


def test_class_folders(tmp_path):
    for cls, n in [("dog", 2), ("cat", 3)]:
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("RGB", (4, 4)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="empty_class"):
        load_class_folders(tmp_path)
    sets = load_class_folders(tmp_path, allow_empty=True)
    assert list(sets) == ["cat", "dog"]
    assert [len(s) for s in sets.values()] == [3, 2]


# --------------------------------------------------------------------------- arrays, tensors


def test_npz_channels_last_uint8_and_channels_first_float(tmp_path):
    nhwc = np.stack([_rng_image(seed=s) for s in range(3)])
    p1 = tmp_path / "a.npz"
    np.savez(p1, other=np.zeros(1), images=nhwc)  # key "images" wins over the first array
    s = load_images(p1)
    assert len(s) == 3 and s.paths == [None] * 3
    for img, ref in zip(s.images, nhwc):
        np.testing.assert_array_equal(np.asarray(img), ref)

    nchw = np.moveaxis(nhwc, -1, 1).astype(np.float32) / 255.0
    p2 = tmp_path / "b.npz"
    np.savez(p2, nchw)  # unnamed: the first array is used
    s2 = load_images(p2)
    for img, ref in zip(s2.images, nhwc):
        np.testing.assert_array_equal(np.asarray(img), ref)

    p3 = tmp_path / "c.npz"
    np.savez(p3, images=nchw * 255.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_images(p3)


def test_tensor_source_is_preprocessed():
    x = torch.randn(2, 3, 8, 10)
    s = load_images(x)
    assert s.preprocessed and s.images is None and len(s) == 2 and s.tensor is x
    assert preprocess_images(s, Preprocess()) is x
    with pytest.raises(TypeError, match="float"):
        load_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        load_images(torch.zeros(1, 4, 4, 4))


def test_preprocess_images_matches_preprocess_per_image():
    imgs = [Image.fromarray(_rng_image((30, 20), seed=s)) for s in range(3)]
    pre = Preprocess(resize_size=16, crop_size=14)
    out = preprocess_images(load_images(imgs), pre)
    assert out.shape == (3, 3, 14, 14) and out.dtype == torch.float32
    for k, img in enumerate(imgs):
        torch.testing.assert_close(out[k], pre(img), rtol=0, atol=0)
    with pytest.raises(TypeError, match="Preprocess"):
        preprocess_images(load_images(imgs), "imagenet")


def test_type_errors():
    with pytest.raises(TypeError, match="source"):
        load_images(42)
    with pytest.raises(ValueError, match="extensions"):
        load_images([Image.new("RGB", (2, 2))], extensions=("",))
    assert isinstance(load_images(np.zeros((4, 5), dtype=np.uint8)), ImageSet)


def test_no_warning_for_clean_folder(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_images(tmp_path)
    assert s.skipped == []
