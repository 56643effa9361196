"""`pneumoscan data inspect|validate|split|cache|download`: thin wrappers over :mod:`pneumoscan.data`."""

from __future__ import annotations

import argparse
import sys

from pneumoscan.cli.commands import HelpFormatter, add_command

_Formatter = HelpFormatter


_ROOT_HELP = "dataset: class folders, RSNA folder or labels CSV, CSV manifest or MedMNIST .npz (default: the default data)"


def register(subparsers) -> None:
    """Add the ``data`` group and its sub-commands."""
    from pneumoscan.data import defaults
    group = subparsers.add_parser(
        "data", help="Inspect, validate, split, cache and download datasets.",
        description="Inspect, validate, split, cache and download datasets.",
        epilog="example:\n  pneumoscan data inspect ../shared/data/chest_xray", formatter_class=_Formatter,
    )

    def usage(_args: argparse.Namespace) -> int:
        group.print_help()
        return 2

    group.set_defaults(func=usage)
    commands = group.add_subparsers(title="data commands", metavar="COMMAND")

    def dataset_command(name: str, help: str, example: str, func) -> argparse.ArgumentParser:
        parser = add_command(commands, name, help, example, func)
        parser.formatter_class = _Formatter
        parser.add_argument("root", nargs="?", default=None, metavar="ROOT", help=_ROOT_HELP)
        return parser

    inspect = dataset_command(
        "inspect",
        "Counts per split and class, patients, imbalance, image sizes and modes, unreadable files, and a "
        "leakage check (patients and exact/near-duplicate images in two splits); writes summary.json, "
        "class_balance.png and samples.png.",
        "pneumoscan data inspect ../shared/data/chest_xray --out reports/data-inspect", _inspect,
    )
    inspect.add_argument("--out", default="reports/data-inspect", help="output folder")
    inspect.add_argument("--hash-distance", type=int, default=None, metavar="BITS",
                         help="largest perceptual-hash distance (of 256 bits) that counts as a near duplicate "
                              "(default: 20)")
    _add_workers(inspect)

    validate = dataset_command(
        "validate",
        "Decode every file and list each one that fails with its reason.",
        "pneumoscan data validate ../shared/data/chest_xray --strict", _validate,
    )
    validate.add_argument("--strict", action="store_true", help="exit with code 1 when any file is bad")
    _add_workers(validate)

    split = dataset_command(
        "split",
        "Patient-level, class-stratified split of train (and the official val) into train/val, written as a "
        "CSV manifest (path,label,patient_id,split,subtype) that every command accepts as ROOT.",
        "pneumoscan data split ../shared/data/chest_xray --val-fraction 0.1 --seed 0 --out split.csv", _split,
    )
    split.add_argument("--val-fraction", type=float, default=defaults.VAL_FRACTION,
                       help="fraction of each class's patients for val")
    split.add_argument("--test-fraction", type=float, default=defaults.TEST_FRACTION,
                       help="fraction of each class's patients held out as test when the data has no test split")
    split.add_argument("--seed", type=int, default=0, help="shuffling seed")
    split.add_argument("--out", default="split.csv", help="manifest to write")

    cache = dataset_command(
        "cache",
        "Decode and resize every image once into a uint8 array that training reads; reused while the files "
        "are unchanged, rebuilt when they change.",
        "pneumoscan data cache ../shared/data/chest_xray --size 224", _cache,
    )
    cache.add_argument("--size", type=int, default=224, help="side of the square images, in pixels")
    cache.add_argument("--fit", choices=("pad", "crop", "stretch"), default=defaults.FIT,
                       help="keep the aspect ratio by padding or centre-cropping, or stretch")
    cache.add_argument("--folder", default=None, help="cache folder (default: $PNEUMOSCAN_CACHE/images)")
    _add_workers(cache)

    download = add_command(
        commands, "download",
        "Download the public ChestXRay2017 archive (Kermany et al., Mendeley Data, doi:10.17632/rscbjbr9sj.2, "
        "CC BY 4.0), resumable, and extract it into the cache. Its SHA-256 is printed and checked only against "
        "--sha256 when given: without it nothing verifies the archive.",
        "pneumoscan data download --sha256 <expected sha256>", _download,
    )
    download.add_argument("--url", default=None, help="archive URL (default: the Mendeley Data file)")
    download.add_argument("--sha256", default=None, metavar="HEX", help="expected SHA-256 of the archive")
    download.add_argument("--dest", default=None, help="folder for the archive and the extracted data "
                                                       "(default: $PNEUMOSCAN_CACHE/datasets)")
    download.formatter_class = _Formatter


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the CPU cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (drawn only on a terminal anyway)")


def _progress(args: argparse.Namespace) -> bool:
    """A bar on a terminal only: in a log or a pipe it is noise."""
    return not args.no_progress and sys.stderr.isatty()


def _root(args: argparse.Namespace):
    from pneumoscan.data import default_data_root

    return args.root if args.root is not None else default_data_root()


def _inspect(args: argparse.Namespace) -> int:
    from pneumoscan.data.inspect import HASH_DISTANCE, format_table, inspect_dataset

    distance = HASH_DISTANCE if args.hash_distance is None else args.hash_distance
    report = inspect_dataset(_root(args), args.out, distance, args.workers, _progress(args))
    print(format_table(report.summary))
    print("\nwrote " + ", ".join(str(p) for p in report.files.values()))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pneumoscan.data.validate import validate_dataset

    report = validate_dataset(_root(args), args.workers, _progress(args))
    for path, reason in report.bad:
        print(f"BAD  {path}: {reason}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"{report.checked:,} files checked, {len(report.bad):,} bad ({report.root}, {report.source})")
    return 1 if args.strict and report.bad else 0


def _split(args: argparse.Namespace) -> int:
    from pneumoscan.data.split import split_dataset

    result = split_dataset(_root(args), args.out, args.val_fraction, args.seed, args.test_fraction)
    print(f"{'split':<7}{'images':>8}{'patients':>10}{'NORMAL':>9}{'PNEUMONIA':>11}")
    for split, row in result.counts().items():
        print(f"{split or '-':<7}{row['images']:>8,}{row['patients']:>10,}{row['NORMAL']:>9,}{row['PNEUMONIA']:>11,}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.manifest} (use it as ROOT, or load_dataset({str(result.manifest)!r}))")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from pneumoscan.data import build_cache, load_dataset

    index = load_dataset(_root(args))
    cache = build_cache(index.samples, args.size, args.fit, args.folder, args.workers, _progress(args))
    for path, reason in cache.failures:
        print(f"skipped {reason if reason.startswith(path) else f'{path}: {reason}'}", file=sys.stderr)
    state = "reused" if cache.reused else "built"
    print(f"{state} cache of {len(cache.samples):,} images at {cache.size}px ({cache.fit}), "
          f"{cache.images.nbytes / 1e6:,.0f} MB, {len(cache.failures)} skipped: {cache.folder}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from pneumoscan.data.download import DEFAULT_URL, download_dataset

    result = download_dataset(args.url or DEFAULT_URL, args.sha256, args.dest)
    if result.reused:
        print(f"already downloaded and extracted: {result.folder}")
    else:
        print(f"downloaded {result.archive} (sha256 {result.sha256}) and extracted it into {result.folder}")
    if not args.sha256:
        print(f"no --sha256 given: pin this download next time with --sha256 {result.sha256}")
    print(f"next: pneumoscan data inspect {result.folder}")
    return 0
