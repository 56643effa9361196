"""The corpus of bad inputs that every entry point gets, built fresh in a folder by the tests.

One definition serves the tests and the docs (docs/robustness.md): each :class:`Case` says what the input is, how to make
it (small: nothing here allocates a big image), and what :func:`pneumoscan.data.read_image` must do
with it: decode it (``decoded``) or refuse it with :class:`ImageReadError` whose message names the file
and contains ``reason`` (``refused``). The dataset-level cases (an empty class folder, bad manifests)
are in :data:`DATASET_CASES`.

``PYTHONPATH=tests python -m helpers.corpus`` prints the tables of docs/robustness.md.
"""

from __future__ import annotations

import functools
import io
import json
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.synthetic import write_synthetic_image

GOOD_SIZE = 48


@dataclass(frozen=True)
class Case:
    """One bad (or merely unusual) input file."""

    name: str  # key in the corpus dict
    what: str  # what a person would call it (the docs table's first column)
    filename: str | bytes  # bytes for a non-UTF-8 name
    make: Callable[[Path], None]  # writes the file at the given path
    expect: str  # "decoded" or "refused"
    reason: str = ""  # lower-case words the refusal message must contain ("a|b": either)
    blank: bool = False  # decodes, but holds one grey level: prediction refuses it as "not a radiograph"
    only_name_wrong: bool = False  # the bytes are a good image: an upload (bytes, no extension) decodes
    listed: bool = True  # a dataset listing or a folder search yields it (a folder named .png is walked into)
    special: bool = False  # not a regular file: nothing a client could upload

    @property
    def scorable_upload(self) -> bool:
        """What the server must score (200); every other case gets a 415/422 with a message."""
        return (self.decodable or self.only_name_wrong) and not self.blank

    @property
    def decodable(self) -> bool:
        return self.expect == "decoded"

    def says(self, message: str) -> bool:
        """Whether ``message`` gives this case's reason."""
        return any(words in message.lower() for words in self.reason.split("|"))


def _image(seed: int = 0, size: int = GOOD_SIZE) -> np.ndarray:
    """An asymmetric gradient with noise: bright top-left, so a flip or an inversion is visible."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = 255 - (yy + xx) * (200 / (2 * size)) + rng.normal(0, 5, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def _encoded(mode: str, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_image(), "L").convert(mode).save(buf, fmt, **save)
    return buf.getvalue()


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def header_only_png(width: int, height: int) -> bytes:
    """A valid PNG header announcing ``width`` x ``height`` with a few bytes of pixels: never allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png16(path: Path) -> None:
    # The full 16-bit range, so that a reader keeping only the low byte would show stripes.
    pixels = (_image().astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(pixels).save(path, "PNG")  # uint16 -> mode I;16


def _rgba(path: Path) -> None:
    rgba = Image.fromarray(_image(), "L").convert("RGBA")
    alpha = np.full((GOOD_SIZE, GOOD_SIZE), 255, np.uint8)
    alpha[:, : GOOD_SIZE // 4] = 0  # a transparent border
    rgba.putalpha(Image.fromarray(alpha, "L"))
    rgba.save(path, "PNG")


def dicom_bytes(photometric: str = "MONOCHROME2", pixels: bool = True, frames: int = 1,
                syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """A small DICOM file written with pydicom: 12-bit pixels (``frames`` copies), or none at all (a
    report), in the transfer syntax ``syntax`` (Explicit VR Little Endian, or Deflated)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1" if pixels else "1.2.840.10008.5.1.4.1.1.88.11"  # CR image / basic SR
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "robustness"
    ds.Modality = "CR" if pixels else "SR"
    if pixels:
        values = (_image().astype(np.uint16) * 16).astype(np.uint16)  # 12-bit range, 0..4080
        if photometric == "MONOCHROME1":
            values = 4080 - values  # low values are bright: displayed, it is the same picture
        ds.Rows, ds.Columns = values.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = values.tobytes() * frames
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


DEFLATED = "1.2.840.10008.1.2.1.99"


def _meta_end(dicom: bytes) -> int:
    """Where the data set starts: after the preamble, DICM and the file meta group (its length is the
    first element's value, PS3.10 7.1)."""
    return 144 + struct.unpack_from("<I", dicom, 140)[0]


@functools.cache
def deflate_bomb(inflated: int = 2**30) -> bytes:
    """A deflated DICOM of about 1 MB holding a good 48x48 image and ``inflated`` bytes of trailing
    padding: a reader that inflates the data set at once holds all of it in memory (and scores the image).

    Built in 0.1 s: 1 MiB of zeros is compressed once and its (byte-aligned, full-flushed) output repeated.
    """
    plain = dicom_bytes()
    head = dicom_bytes(syntax=DEFLATED)
    padding = b"\xfc\xff\xfc\xff" + b"OB\0\0" + struct.pack("<I", inflated)  # (FFFC,FFFC) Data Set Trailing Padding
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = deflater.compress(plain[_meta_end(plain):] + padding) + deflater.flush(zlib.Z_FULL_FLUSH)
    mebibyte = deflater.compress(bytes(2**20)) + deflater.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(inflated, 2**20)
    tail = deflater.compress(bytes(rest)) + deflater.flush()
    return head[: _meta_end(head)] + start + mebibyte * whole + tail


def rle_bomb(side: int = 6000, samples: int = 3) -> bytes:
    """An RLE-compressed DICOM declaring ``side`` x ``side`` x ``samples`` values with one tiny fragment:
    its header promises more than the pixel limit; nothing but the header may be believed."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.5"  # RLE Lossless
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples > 1:
        ds.PlanarConfiguration = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([struct.pack("<16I", 1, 64, *([0] * 14)) + b"\x81\x00" * 32])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    os.mknod(path, 0o644 | stat.S_IFSOCK)  # a bound socket's node, without the 108-byte path limit of bind()


def _link_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def _folder(path: Path) -> None:
    path.mkdir()


def read_if_regular(path: Path) -> bytes:
    """What a client could upload from ``path``: its bytes, or nothing for a special file or a
    refused one (reading a FIFO would wait for ever, /dev/zero would never end)."""
    try:
        return path.read_bytes() if path.is_file() else b""
    except OSError:
        return b""


def _unreadable(path: Path) -> None:
    """chmod 000 where permissions are enforced; as root (CI, containers) they are not, so a dangling link."""
    path.write_bytes(_encoded("L", "PNG"))
    path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        return
    path.chmod(0o644)
    path.unlink()
    path.symlink_to(path.with_name(".missing-target.png"))


def _symlink_loop(path: Path) -> None:
    partner = path.with_name(path.stem + "-partner" + path.suffix)
    partner.symlink_to(path.name)
    path.symlink_to(partner.name)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


_RANDOM = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()

CASES: tuple[Case, ...] = (
    Case("zero_byte", "zero-byte file", "empty.jpeg", _write(b""), "refused", "empty file"),
    Case("truncated_jpeg", "truncated JPEG", "truncated.jpeg",
         _write(_truncated(_encoded("L", "JPEG", quality=90))), "refused", "truncated"),
    Case("truncated_png", "truncated PNG", "truncated.png",
         _write(_truncated(_encoded("L", "PNG"))), "refused", "truncated"),
    Case("random_bytes", "random bytes named .jpeg", "random.jpeg", _write(_RANDOM), "refused",
         "not an image|not a readable image"),
    Case("png_named_dcm", "a PNG named .dcm", "really-a-png.dcm", _write(_encoded("L", "PNG")), "refused",
         "wrong extension", only_name_wrong=True),
    Case("png16", "16-bit PNG", "sixteen-bit.png", _png16, "decoded"),
    Case("rgba", "RGBA PNG (transparent border)", "rgba.png", _rgba, "decoded"),
    Case("cmyk", "CMYK JPEG", "cmyk.jpeg", _write(_encoded("CMYK", "JPEG", quality=95)), "decoded"),
    Case("one_pixel", "1x1 image", "one-pixel.png",
         _write((lambda b: (Image.new("L", (1, 1), 200).save(b, "PNG"), b.getvalue())[1])(io.BytesIO())), "decoded",
         blank=True),
    Case("huge_header", "20000x20000 PNG (header only, decompression bomb)", "huge-20000.png",
         _write(header_only_png(20_000, 20_000)), "refused", "decompression bomb"),
    Case("dicom_no_pixels", "DICOM without pixel data", "report.dcm", _write(dicom_bytes(pixels=False)),
         "refused", "no pixel data"),
    Case("dicom_monochrome1", "DICOM MONOCHROME1 (12-bit)", "monochrome1.dcm",
         _write(dicom_bytes("MONOCHROME1")), "decoded"),
    Case("non_utf8_name", "non-UTF-8 file name (b'caf\\xe9.png')", b"caf\xe9.png", _write(_encoded("L", "PNG")),
         "decoded"),
    Case("spaces_name", "file name with spaces and brackets", " chest x ray (copy) .png",
         _write(_encoded("L", "PNG")), "decoded"),
    Case("unreadable", "unreadable file (chmod 000; a dangling symlink when root)", "unreadable.png", _unreadable,
         "refused", "cannot read"),
    Case("symlink_loop", "symlink loop (a.png -> b.png -> a.png)", "loop.png", _symlink_loop, "refused",
         "cannot read"),
    Case("dicom_deflated", "DICOM, Deflated Explicit VR Little Endian", "deflated.dcm",
         _write(dicom_bytes(syntax=DEFLATED)), "decoded"),
    Case("dicom_deflate_bomb", "deflated DICOM bomb (1 MB inflating to 1 GiB of padding)", "deflate-bomb.dcm",
         lambda path: path.write_bytes(deflate_bomb()), "refused", "decompression bomb"),
    Case("dicom_rle_bomb", "RLE DICOM declaring 6000x6000 RGB (108 million values, tiny data)", "rle-bomb.dcm",
         lambda path: path.write_bytes(rle_bomb()), "refused", "decompression bomb"),
    Case("dicom_multiframe", "multi-frame DICOM (2 frames of 48x48)", "multiframe.dcm",
         _write(dicom_bytes(frames=2)), "refused", "multi-frame"),
    Case("fifo", "named pipe (FIFO) named .png", "fifo.png", _fifo, "refused", "not a regular file", special=True),
    Case("socket", "socket named .png", "socket.png", _socket, "refused", "not a regular file", special=True),
    Case("dev_zero", "symlink to /dev/zero", "zero.png", _link_to("/dev/zero"), "refused", "not a regular file",
         special=True),
    Case("dev_urandom", "symlink to /dev/urandom", "urandom.dcm", _link_to("/dev/urandom"), "refused",
         "not a regular file", special=True),
    Case("folder_named_png", "folder named scan.png", "scan.png", _folder, "refused", "is a folder",
         listed=False, special=True),
)

BAD_CASES = tuple(c for c in CASES if not c.decodable)
ODD_GOOD_CASES = tuple(c for c in CASES if c.decodable)


def reference_pixels() -> np.ndarray:
    """The picture every decodable corpus image holds (except the 1x1 one)."""
    return _image()


def case_path(folder: Path, case: Case) -> Path:
    if isinstance(case.filename, bytes):
        return Path(os.fsdecode(os.path.join(os.fsencode(folder), case.filename)))
    return folder / case.filename


def make_corpus(folder: str | os.PathLike) -> dict[str, Path]:
    """Write every case into ``folder`` (created); return name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in CASES:
        path = case_path(folder, case)
        case.make(path)
        paths[case.name] = path
    return paths


def write_good_images(folder: Path, label: int, count: int, start: int = 0, size: int = GOOD_SIZE) -> list[Path]:
    """``count`` decodable synthetic radiographs of class ``label`` with Kermany-style names."""
    paths = []
    for i in range(start, start + count):
        name = f"person{1000 + i}_bacteria_{i}.png" if label else f"IM-{1000 + i:04d}-0001.png"
        paths.append(write_synthetic_image(folder / name, label, seed=10_000 * label + i, size=size))
    return paths


def make_dataset(root: str | os.PathLike, good_per_class: int = 6, size: int = GOOD_SIZE) -> dict[str, Path]:
    """A Kermany-layout dataset ``root/train/{NORMAL,PNEUMONIA}`` of good images with the corpus beside them.

    The corpus goes into PNEUMONIA/ (and a directory symlink loop into NORMAL/), so a reader that
    stops at the first bad file loses good ones. Returns the corpus paths plus ``good:<i>`` entries.
    """
    root = Path(root)
    normal, pneumonia = root / "train" / "NORMAL", root / "train" / "PNEUMONIA"
    paths = {f"good:{i}": p for i, p in enumerate(
        write_good_images(normal, 0, good_per_class, size=size) + write_good_images(pneumonia, 1, good_per_class, size=size)
    )}
    paths.update(make_corpus(pneumonia))
    loop_dir = normal / "loop-dir"
    loop_dir.symlink_to(".", target_is_directory=True)  # a directory cycle: a walker that follows it never ends
    paths["dir_loop"] = loop_dir
    return paths


# Dataset-level cases: what load_dataset (and every command that lists a dataset) must refuse with a
# DatasetError naming the file or folder.
def make_empty_class(root: Path) -> Path:
    """``root/train/NORMAL`` exists but is empty; PNEUMONIA has images. Returns the empty folder."""
    write_good_images(root / "train" / "PNEUMONIA", 1, 3)
    empty = root / "train" / "NORMAL"
    empty.mkdir(parents=True)
    return empty


def make_manifest_missing_columns(folder: Path) -> Path:
    images = write_good_images(folder / "images", 0, 2) + write_good_images(folder / "images", 1, 2, start=2)
    manifest = folder / "missing-columns.csv"
    manifest.write_text("file,diagnosis\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(images)))
    return manifest


def make_manifest_unknown_label(folder: Path) -> Path:
    images = write_good_images(folder / "images", 0, 2) + write_good_images(folder / "images", 1, 2, start=2)
    labels = ["NORMAL", "PNEUMONIA", "maybe", "PNEUMONIA"]
    manifest = folder / "unknown-label.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in zip(images, labels, strict=True)))
    return manifest


DATASET_CASES: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    # name: (what, maker(folder) -> path to give the command, words the error must contain)
    "empty_class": ("empty class folder (NORMAL/ with no images)", lambda f: make_empty_class(f).parents[1], "normal"),
    "manifest_missing_columns": ("CSV manifest without path/label columns", make_manifest_missing_columns, "column"),
    "manifest_unknown_label": ("CSV manifest with an unknown label ('maybe')", make_manifest_unknown_label, "maybe"),
}


def tiny_model(folder: Path, size: int = 32) -> Path:
    """A randomly initialised ``seed-cnn`` saved as a pneumoscan model file: enough to exercise the plumbing."""
    import torch

    from pneumoscan.models import ModelMeta, build_model, save_model

    torch.manual_seed(0)
    save_model(folder, build_model("seed-cnn", size), ModelMeta(name="seed-cnn", image_size=size, threshold=0.5,
                                                                 version="test"))
    return folder


# Model files whose weights are good and whose metadata is not: every loader must refuse them in one line
# naming the file and the field (before building a network from the field's values).
_VALID_META = {"name": "seed-cnn", "image_size": 32}
MODEL_META_CASES: dict[str, tuple[str, str, str]] = {
    # name: (what, the metadata text stored in the file, words the error must contain)
    "not_json": ("not JSON (`not json {`)", "not json {", "not json"),
    "not_an_object": ("a JSON list", "[1, 2]", "not an object"),
    "empty_object": ("`{}`", "{}", "'name' is missing"),
    "no_image_size": ("no image_size", '{"name": "seed-cnn"}', "'image_size' is missing"),
    **{f"{field}_{tag}": (f"{field} {json.dumps(value)}", json.dumps({**_VALID_META, field: value}), f"'{field}'")
       for field, tag, value in (
           ("name", "number", 7), ("image_size", "huge", 60000), ("image_size", "negative", -5),
           ("image_size", "text", "224"), ("fit", "unknown", "zoom"), ("threshold", "over_one", 7),
           ("threshold", "text", "high"), ("operating_points", "text", {"youden": "high"}),
           ("class_names", "one", ["NORMAL"]), ("class_names", "swapped", ["PNEUMONIA", "NORMAL"]),
           ("val_metrics", "nan", {"auc": float("nan")}), ("version", "number", 3), ("run_id", "list", []),
           ("created", "number", 1), ("val_metrics", "text", {"auc": "good"}), ("temperature", "zero", 0),
           ("members", "zero", 0), ("members", "huge", 10**6),
           ("provenance", "text", "x"))},
    "name_unknown": ("name of no known network", json.dumps({**_VALID_META, "name": "no-such-net"}), "unknown model"),
}


MODEL_META_COMMANDS = ("predict", "explain", "evaluate", "export", "serve")
MODEL_META_CLI_CASES = ("not_json", "empty_object", "image_size_huge", "image_size_negative")
MODEL_META_SERVER_CASES = ("not_json", "image_size_huge")


def model_with_meta(folder: Path, meta_text: str, weights_of: Path) -> Path:
    """``folder/model.safetensors``: the weights of the model at ``weights_of`` with ``meta_text`` as metadata."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file(load_file(str(weights_of / "model.safetensors")), str(path), metadata={"pneumoscan": meta_text})
    return path


def run_cli(argv: list[str], capsys, caplog=None) -> tuple[int, str]:
    """``pneumoscan ARGV`` in-process: the exit code and all a user would see (stdout, stderr, log records)."""
    from pneumoscan.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records) if caplog is not None else ""
    return code, _without_stale_log_handlers(captured.out + captured.err + logged)


def _without_stale_log_handlers(text: str) -> str:
    """Drop the "--- Logging error ---" reports of a handler that a library (Lightning) bound to the
    stderr capture of an earlier test, since closed: an artefact of running commands in-process under
    pytest, not output of the command."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.startswith("--- Logging error ---"):
            skipping = True
        elif skipping and line.startswith("Arguments:"):
            skipping = False
            continue
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def fuzz_seeds() -> dict[str, bytes]:
    """Small valid files of every format the decoder reads (and one bomb): what the fuzzers mutate."""

    def encode(fmt: str, mode: str = "L", **save) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(_image()[:32, :32], "L").convert(mode).save(buf, fmt, **save)
        return buf.getvalue()

    return {
        "jpeg": encode("JPEG", quality=85),
        "progressive-jpeg": encode("JPEG", quality=85, progressive=True),
        "cmyk-jpeg": encode("JPEG", "CMYK", quality=85),
        "png": encode("PNG"),
        "png-rgba": encode("PNG", "RGBA"),
        "bmp": encode("BMP"),
        "tiff": encode("TIFF"),
        "webp": encode("WEBP"),
        "dicom": dicom_bytes(),
        "dicom-monochrome1": dicom_bytes("MONOCHROME1"),
        "bomb": header_only_png(30_000, 30_000),
    }


def mutate(data: bytes, rng) -> bytes:
    """Up to 8 random edits (bit flips, extreme bytes, cuts, insertions, truncation) with ``random.Random``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            break
        i = rng.randrange(len(out))
        op = rng.choice(("flip", "set", "cut", "insert", "truncate"))
        if op == "flip":
            out[i] ^= 1 << rng.randrange(8)
        elif op == "set":
            out[i] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == "cut":
            del out[i : i + rng.randint(1, 64)]
        elif op == "insert":
            out[i:i] = rng.randbytes(rng.randint(1, 32))
        else:
            del out[i:]
    return bytes(out)


# ------------------------------------------------------------------------- the tables of docs/robustness.md
# Every row states what a test in tests/robustness asserts (the test is named in the last column).
FILE_ENTRY_POINTS = ("read_image", "data inspect", "data validate", "data cache", "train", "evaluate", "predict",
                     "explain", "server")
DATASET_ENTRY_POINTS = ("data inspect", "data validate", "data cache", "train", "evaluate")

_SPECIAL_OUTCOMES = {
    "png_named_dcm": "files: refused, *wrong extension: the file is PNG, not DCM; rename it to .png*; "
                     "an upload (bytes, no extension) is decoded by its content",
    "one_pixel": "decoded (padded to the model size) and used by cache, train and evaluate; predict, explain "
                 "and the server refuse it as a *blank image … not a radiograph*",
    "non_utf8_name": "processed by every command; printed as `caf\\xe9.png`; CSV outputs keep the name's bytes",
    "spaces_name": "processed by every command",
    "dicom_monochrome1": "decoded and inverted (bone bright), picture checked",
    "png16": "decoded, scaled from its own 16-bit range, picture checked",
    "rgba": "decoded, transparent border composited on black, picture checked",
    "cmyk": "decoded, picture checked",
    "dicom_deflated": "decoded (inflated in bounded chunks), picture checked",
    "folder_named_png": "read_image: refused, *is a folder, not an image file*; listings and folder searches walk "
                        "into it as the folder it is",
}
_SPECIAL_FILE_OUTCOME = ("skipped and reported with the file's name: *not a regular file* (and its kind); never "
                         "opened for reading, so nothing waits for a writer or reads a device without end; a "
                         "client can only upload bytes, so the server sees an empty upload (422)")

FAULT_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("`kill -9` at 3 points of an atomic write (mid-write, before and after the rename) and at 6 random "
     "moments of a writer rewriting a 3 MB file", "`_io.atomic_write` (checkpoints, caches, reports, models)",
     "the old file or the new one, never a torn one", "test_robust_faults.py"),
    ("cache truncated, index corrupted, array deleted; a cache build killed mid-write", "data cache / build_cache",
     "detected, rebuilt, same pixels as a fresh build; the killed build's temporary file is removed by the next "
     "build", "test_robust_faults.py"),
    ("`kill -9` of `data validate` or `data cache` while its 2 decoding workers run", "data validate, data cache",
     "both workers are gone within 5 s (none re-parented to init)", "test_robust_faults.py"),
    ("every refused file of the corpus, each in a fresh process that has already decoded good files",
     "read_image, probe_image, Classifier.predict",
     "refused within 5 s, the process's peak memory grows by less than 300 MB (probe_image may answer from "
     "a header that is fine)", "test_robust_bounds.py"),
    ("the deflated DICOM bomb uploaded by 4 clients at once to `pneumoscan serve` (a real server process)",
     "server", "4 x 422 *decompression bomb*; the server's peak memory stays under 1 GB; `/healthz` answers "
     "200 throughout, each within 5 s", "test_robust_bounds.py"),
    ("full disk (a real 1 MiB tmpfs; a mock of os.write where mounting is not allowed)", "atomic writes, data cache",
     "`OutputError`: *…: cannot write: no space left on the device*; old file kept, no temporary file left",
     "test_robust_faults.py"),
    ("read-only output folder (a real read-only tmpfs, else a mock)", "atomic writes, train, evaluate, predict",
     "`OutputError`: *read-only*; the commands exit 2 with one line, `train` before any work; nothing written",
     "test_robust_faults.py"),
    ("full disk under `data cache`", "data cache", "exit 2, one line *no space left on the device*; "
     "nothing left on the disk", "test_robust_faults.py"),
    ("a static check of the source: every call that writes a file", "all of `src/pneumoscan`",
     "inside an `_io.atomic_write*` callback, or to memory; 2 listed exceptions (the resumable download's "
     "`.part`, MedMNIST PNGs committed by a marker written last)", "test_robust_atomic_writes.py"),
    ("`kill -9` of `train` mid-epoch (after the first `last.ckpt`), then `--resume`", "train",
     "continues at the epoch after the checkpoint; history keeps every epoch; every epoch's val loss equals "
     "the uninterrupted run's (same config and seed; the checkpoint carries the random generators), AUC on "
     "all 96 images within 0.01", "test_robust_resume.py"),
    ("a pickle in place of a run's `export/model.onnx`", "serve (a run folder)",
     "logged as *unreadable* (not *stale*), the run's own weights served; the payload never runs",
     "test_robust_security.py"),
    ("a `.ckpt` / `.pt` / `.pth` carrying a pickle payload; a pickle named `.safetensors`",
     "load_model, pneumoscan.load; predict, explain, evaluate, export, train --pretrained, train --resume "
     "(a run whose last.ckpt was swapped), server",
     "`ModelFileError` naming the file (*refused …*), exit 2 in one line; `serve` stays up and `/readyz` "
     "answers 503 with the reason; the payload never runs",
     "test_robust_security.py"),
    ("a truncated, empty or random `model.safetensors` / `model.onnx`", "predict (pneumoscan.load)",
     "exit 2, one line naming the file", "test_robust_security.py"),
    ("upload over the size limit; not an image; not multipart; a 60000x60000 header-only PNG",
     "server", "413 / 415 / 422 with a JSON `detail` naming the limit or the file, no stack trace", "test_robust_security.py"),
    ("client file names `../../../../tmp/x.png`, `/etc/passwd`, `..\\..\\x.png`, `C:\\Windows\\win.ini`, NUL",
     "server", "echoed as a bare name, never used as a path; nothing written", "test_robust_security.py"),
    ("8 simultaneous requests with 1 inference thread and a queue of 1", "server",
     "never more than 1 inference at a time; the excess gets 503; the server answers afterwards",
     "test_robust_security.py"),
    ("an exception inside the model", "server", "500 with a generic message; no stack trace, no internals",
     "test_robust_security.py"),
    ("hypothesis: 200 arbitrary byte strings, 400 + 200 mutated JPEG/PNG/BMP/TIFF/WebP/DICOM files",
     "read_image, probe_image", "only `ImageReadError` escapes", "test_robust_fuzz.py"),
    ("hypothesis: 150 uploads of mutated images, random bytes, names and content types", "server",
     "200, 413, 415 or 422; never 500", "test_robust_fuzz.py"),
)


def docs_table() -> str:
    """The Markdown tables of docs/robustness.md, from the definitions above."""
    lines = ["| input | entry points | outcome |", "|---|---|---|"]
    every = ", ".join(FILE_ENTRY_POINTS)
    for case in CASES:
        if case.name in _SPECIAL_OUTCOMES:
            outcome = _SPECIAL_OUTCOMES[case.name]
        elif case.special:
            outcome = _SPECIAL_FILE_OUTCOME
        else:
            reason = " / ".join(f"*{r}*" for r in case.reason.split("|"))
            outcome = f"skipped and reported with the file's name: {reason}; the good files beside it are processed"
        lines.append(f"| {case.what} | {every} | {outcome} |")
    lines.append(f"| symlink to its own folder (a directory cycle) | {', '.join(FILE_ENTRY_POINTS[1:7])} | "
                 "not followed: listing ends, each file listed once |")
    for what, _, words in DATASET_CASES.values():
        lines.append(f"| {what} | {', '.join(DATASET_ENTRY_POINTS)} | one line `pneumoscan: error: …` naming "
                     f"the file (*{words}*), exit code 2, no model written |")
    lines.append("| an empty folder of images | predict, explain | one line naming the folder, exit code 2 |")
    lines.append("| a CSV manifest row whose file does not exist | data validate | reported as `BAD` with the file's "
                 "name (*does not exist*); `--strict` exits 1 |")
    lines.append("| a glob that matches nothing | predict | its row says *no files match this pattern* |")
    lines.append("| only bad files | explain | each reported, then *nothing written* (no output folder to point to), "
                 "exit code 1 |")
    lines += ["", "| model file metadata | entry points | outcome |", "|---|---|---|"]
    for name, (what, _, words) in MODEL_META_CASES.items():
        points = ["read_meta", "load_model", "pneumoscan.load"][1 if name == "name_unknown" else 0:]
        points += list(MODEL_META_COMMANDS) if name in MODEL_META_CLI_CASES else []
        points += ["server"] if name in MODEL_META_SERVER_CASES else []
        lines.append(f"| {what} | {', '.join(points)} | `ModelFileError` naming the file and *{words}*"
                     + ("; commands exit 2 in one line" if name in MODEL_META_CLI_CASES else "")
                     + ("; the server stays up, `/readyz` 503 with the reason" if name in MODEL_META_SERVER_CASES
                        else "") + " |")
    lines += ["", "| fault or attack | entry point | outcome | test |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | `tests/robustness/{d}` |" for a, b, c, d in FAULT_ROWS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(docs_table())
