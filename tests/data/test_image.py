"""read_image / probe_image: every pixel format, DICOM value transforms, orientation, and bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers.images import asymmetric, png_header_only, save, truncated_jpeg, write_dicom
from pneumoscan.data import probe_image, read_image
from pneumoscan.data.image import MAX_PIXELS
from pneumoscan.errors import ImageReadError


@pytest.mark.parametrize("suffix", [".png", ".dcm"])
def test_read_image_keeps_row_zero_on_top_and_column_zero_on_the_left(tmp_path, suffix):
    pixels = asymmetric(40, 60)
    path = tmp_path / f"a{suffix}"
    if suffix == ".dcm":
        write_dicom(path, pixels.astype(np.uint16), bits_stored=8)
    else:
        save(path, pixels)
    out = read_image(path)
    assert out.shape == (40, 60) and out.dtype == np.uint8
    assert out[0, 0] > 200 and out[-1, -1] < out[0, 0] and out[0, -1] < 60 and out[-1, 0] < 60


def test_resize_pad_keeps_aspect_ratio_and_orientation(tmp_path):
    path = save(tmp_path / "wide.png", asymmetric(40, 80))
    out = read_image(path, 32, "pad")
    assert out.shape == (32, 32)
    # 80 x 40 scaled to 32 x 16: 8 black rows above and below the picture.
    assert out[:7].max() == 0 and out[-7:].max() == 0 and out[9:23].min() >= 15
    assert out[10, 2] > 200 and out[21, -3] > 100 and out[10, -3] < 60


def test_resize_crop_fills_the_square_from_the_centre(tmp_path):
    pixels = np.zeros((40, 80), np.uint8)
    pixels[:, 20:60] = 255  # the centre square is white, the sides black
    out = read_image(save(tmp_path / "wide.png", pixels), 20, "crop")
    assert out.shape == (20, 20) and out[:, 2:-2].min() > 200
    stretched = read_image(tmp_path / "wide.png", 20, "stretch")
    assert stretched[:, 0].max() < 50 and stretched[:, 10].min() > 200


@pytest.mark.parametrize(
    ("mode", "suffix", "expected"),
    [("L", ".png", 200), ("RGB", ".png", 200), ("RGB", ".jpeg", 200), ("L", ".jpeg", 200)],
)
def test_8_bit_images_become_one_grey_channel(tmp_path, mode, suffix, expected):
    path = save(tmp_path / f"x{suffix}", np.full((16, 16), 200, np.uint8), mode)
    out = read_image(path)
    assert out.shape == (16, 16) and abs(int(out.mean()) - expected) <= 2


def test_16_bit_png_is_scaled_to_the_full_8_bit_range(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert probe_image(path).mode.startswith("I")
    out = read_image(path)
    assert out.min() == 0 and out.max() == 255 and np.all(np.diff(out[0].astype(int)) >= 0)


def test_rgba_transparent_area_becomes_black_and_opaque_area_keeps_its_grey(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 180
    rgba[:, :4, 3] = 255  # left half opaque, right half transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = read_image(path)
    assert abs(int(out[:, :4].mean()) - 180) <= 1 and out[:, 4:].max() == 0


def test_cmyk_jpeg_becomes_grey_with_ink_as_dark(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8, :, 3] = 255  # top half full black ink, bottom half no ink (white paper)
    path = tmp_path / "cmyk.jpeg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=95)
    assert probe_image(path).mode == "CMYK"
    for size in (None, 8):  # with a size, the JPEG draft path is taken
        out = read_image(path, size, "stretch")
        half = out.shape[0] // 2
        assert out[: half - 1].mean() < 30 and out[half + 1:].mean() > 225


def test_dicom_monochrome1_is_inverted(tmp_path):
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint16), (4, 1))
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", ramp, bits_stored=8))
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1", bits_stored=8))
    assert m2[0, 0] == 0 and m2[0, -1] == 255
    assert np.array_equal(m1, 255 - m2)
    assert probe_image(tmp_path / "m1.dcm").mode == "DICOM:MONOCHROME1"


def test_dicom_rescale_then_window_are_applied_in_that_order(tmp_path):
    # Stored 0..1000 -> rescaled -1000..1000; the window -500..500 maps stored 250 to black, 750 to white.
    stored = np.array([[0, 250, 500, 750, 1000]], np.uint16).repeat(2, axis=0)
    path = write_dicom(tmp_path / "ct.dcm", stored, bits_stored=12, slope=2.0, intercept=-1000.0,
                       window=(0.0, 1000.0))
    out = read_image(path)[0]
    assert out[0] == 0 and out[1] <= 1 and 120 <= out[2] <= 135 and out[3] >= 254 and out[4] == 255


def test_dicom_12_bit_without_window_spans_0_to_255(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (4, 1))
    out = read_image(write_dicom(tmp_path / "12bit.dcm", ramp, bits_stored=12))
    assert out.shape == (4, 32) and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[2].astype(int)) > 0)


def test_dicom_without_pixel_data_is_refused_with_the_reason(tmp_path):
    path = write_dicom(tmp_path / "report.dcm", None)
    with pytest.raises(ImageReadError, match=r"report\.dcm: DICOM has no pixel data"):
        read_image(path)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: _write(p / "empty.jpeg", b""), "empty file"),
        (lambda p: truncated_jpeg(p / "cut.jpeg"), "truncated"),
        (lambda p: _write(p / "noise.jpeg", np.random.default_rng(1).bytes(4000)), "not an image"),
        (lambda p: save(p / "png.dcm", np.zeros((8, 8), np.uint8), format="PNG"), "wrong extension.*PNG.*rename it to .png"),
        (lambda p: write_dicom(p / "dicom.png", np.zeros((4, 4), np.uint16)), "wrong extension.*DICOM"),
        (lambda p: _write(p / "text.dcm", b"not a dicom at all"), "not a DICOM file"),
    ],
    ids=["zero-byte", "truncated-jpeg", "random-bytes-named-jpeg", "png-named-dcm", "dicom-named-png", "text-dcm"],
)
def test_bad_files_raise_image_read_error_naming_the_file_and_reason(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(path, 32)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_header_only_20000_px_png_is_refused_as_a_bomb_without_allocating(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    assert path.stat().st_size < 100 and MAX_PIXELS < 20000 * 20000
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(path)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(path.read_bytes(), 224)


def test_oversized_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.jpeg"
    with open(path, "wb") as fh:
        fh.truncate(600 * 2**20)  # sparse: no disk space used, nothing allocated
    with pytest.raises(ImageReadError, match=r"huge\.jpeg: file too large \(600 MiB, over the limit of 512 MiB"):
        read_image(path)


def test_bytes_are_decoded_by_content_whatever_the_name(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(asymmetric()).save(buffer, "PNG")
    out = read_image(buffer.getvalue(), name="upload.dcm")
    assert out.shape == (40, 60) and out[0, 0] > 200


def test_real_full_resolution_originals_decode_and_resize_keeping_aspect(shared_data):
    originals = sorted((shared_data / "chest_xray_originals").glob("*/*.jpeg"))
    if not originals:
        pytest.skip("chest_xray_originals/ absent from the real data folder")
    for path in originals[::50]:
        info = probe_image(path)
        out = read_image(path, 64, "pad")
        assert out.shape == (64, 64)
        # The longer side fills the square; the shorter one is padded with black bands.
        if info.width > info.height * 1.1:
            assert out[0].max() == 0 and out[32].max() > 0
        elif info.height > info.width * 1.1:
            assert out[:, 0].max() == 0 and out[:, 32].max() > 0


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "SGI", "PCX", "TGA"])
def test_formats_outside_the_radiograph_allow_list_are_refused_by_content(tmp_path, fmt):
    """Pillow knows dozens of formats (EPS would run Ghostscript); only radiograph formats are decoded."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB" if fmt == "EPS" else "L", (64, 64), 120).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"scan.{fmt.lower()}"
    path.write_bytes(data)
    for source in (data, path, str(path)):
        with pytest.raises(ImageReadError, match=r"not an image in a supported format \(JPEG, PNG, TIFF, BMP, WEBP or DICOM\)"):
            read_image(source, 32)
        with pytest.raises(ImageReadError, match="not an image in a supported format"):
            probe_image(source)
