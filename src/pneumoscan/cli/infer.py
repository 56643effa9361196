"""`pneumoscan predict`, `explain` and `export`: use a trained model.

Imports are inside the commands: `pneumoscan predict model.onnx x.jpeg` must start without loading torch.
"""

from __future__ import annotations

import sys

from pneumoscan.provenance import DISCLAIMER

# Above this many files, predict draws a progress bar on a terminal unless told otherwise.
PROGRESS_MIN_FILES = 50


def register(subparsers) -> None:
    """Add ``predict``, ``explain`` and ``export``."""
    from pneumoscan.cli.commands import add_command

    predict = add_command(
        subparsers, "predict", "Score chest X-rays (files, folders, globs, DICOM) with a trained model.",
        "pneumoscan predict chest.jpeg                       # the bundled default model\n"
        "  pneumoscan predict runs/latest/export/model.onnx scans/ 'more/*.dcm' --out preds.csv", run_predict,
    )
    predict.add_argument("paths", metavar="[MODEL] PATH", nargs="+",
                         help="optionally a model first (run folder, .safetensors, .ckpt, exported .onnx, or "
                              "default or fast: the bundled models, default also used when none is given), then image files, folders (searched recursively) "
                              "or globs")
    predict.add_argument("--model", metavar="MODEL", help="the model, when it is not given first")
    predict.add_argument("--out", metavar="FILE",
                         help="write the results to FILE and print only a summary: .csv, .jsonl or .parquet (a "
                              "folder of Parquet files) are written batch by batch as files are scored; .json at the end")
    predict.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    predict.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    predict.add_argument("--backend", choices=["auto", "torch", "onnx-int8"], default="auto",
                         help="auto: ONNX Runtime for an .onnx model and the bundled ones on the CPU, and for a run "
                              "folder its export/model.onnx when it matches the run's model, else PyTorch; torch: "
                              "PyTorch always (an .onnx model's weights beside it); onnx-int8: the model's int8 "
                              "graph (model.int8.onnx, made by 'pneumoscan export MODEL --int8'), never chosen otherwise")
    bar = predict.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar (default: on a terminal, for more than 50 files; with a "
                          "streamed --out, a bar on a terminal and a rate line every 10 s elsewhere)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    predict.add_argument("--quiet", action="store_true", help="do not print the table (only the summary); "
                         "with --out only the rows that could not be scored are printed")
    predict.add_argument("--resume", action="store_true",
                         help="keep the rows already in --out and score only the inputs missing from it (same path, "
                              "size and modification time, or same SOPInstanceUID)")
    predict.add_argument("--workers", type=int, default=None,
                         help="processes decoding images (default: the usable cores, at most 8)")
    predict.add_argument("--worklist", metavar="FILE.csv",
                         help="after the run, also write every row of --out sorted by probability (highest first) "
                              "with a flag per operating point and the DICOM identifiers: a review list for research, not clinical triage")
    predict.add_argument("--no-scope-check", dest="scope_check", action="store_false",
                         help="score images the scope gate refuses (not frontal chest radiographs: other modalities, "
                              "views, photos, rotated or inverted radiographs...); their rows say 'scope check off'")
    predict.add_argument("--engine", choices=["local", "ray"], default="local",
                         help="local: this machine; ray: a Ray Data pipeline (pip install 'pneumoscan[ray]'), "
                              "writing --out as Parquet")
    predict.add_argument("--address", metavar="ADDRESS",
                         help="with --engine ray: the Ray cluster to join (default: start a local Ray on this machine)")

    explain = add_command(
        subparsers, "explain", "Heatmaps (HiResCAM, Grad-CAM) over the radiographs, and optionally filters and "
                               "feature maps.",
        "pneumoscan explain runs/latest chest.jpeg --out explain/ --filters", run_explain,
    )
    explain.add_argument("images", metavar="[MODEL] IMAGE", nargs="*",
                         help="optionally a model first (run folder, .safetensors or .ckpt, an .onnx with its "
                              "weights beside it, or default or fast: the bundled models, default also used when none is given), then image files, "
                              "folders or globs")
    explain.add_argument("--model", metavar="MODEL", help="the model, when it is not given first")
    explain.add_argument("--out", metavar="DIR", default="explain", help="folder for the PNG files")
    explain.add_argument("--filters", action="store_true",
                         help="also save the first layer's filters and the feature maps of --layers for the first image")
    explain.add_argument("--layers", metavar="A,B", help="layers for the feature maps (default: first and last)")
    explain.add_argument("--layer", metavar="NAME",
                         help="heatmap target layer (default: the last block at 1/16 of the input size; see --list-layers)")
    explain.add_argument("--method", choices=["grad-cam", "grad-cam++", "hirescam"], default="grad-cam",
                         help="heatmap method (default: grad-cam)")
    explain.add_argument("--list-layers", action="store_true", help="print the model's convolution layers and exit")

    fit_scope = add_command(
        subparsers, "fit-scope", "Fit a model's scope gate (what is a frontal chest radiograph) on training images.",
        "pneumoscan fit-scope runs/old-run ../shared/data/chest_xray   # then: pneumoscan export runs/old-run",
        run_fit_scope,
    )
    fit_scope.add_argument("model", metavar="MODEL", help="run folder or .safetensors (rewritten with the gate), or "
                           "default or fast (a bundled model: the version with the new gate goes to runs/NAME/)")
    fit_scope.add_argument("data", metavar="DATA", help="a dataset pneumoscan reads; its train split (or all of "
                           "it) is used")
    fit_scope.add_argument("--images", type=int, default=3000, help="training images to fit on")
    fit_scope.add_argument("--held-out", type=int, default=800, help="other training images that set the thresholds")

    fit_subtype = add_command(
        subparsers, "fit-subtype", "Fit a trained model's subtype head (bacterial or viral) on its own training split.",
        "pneumoscan fit-subtype runs/old-run   # then: pneumoscan export runs/old-run", run_fit_subtype,
    )
    fit_subtype.add_argument("model", metavar="MODEL", help="run folder or .safetensors (rewritten with the head), or "
                             "default or fast (a bundled model: the version with the head goes to runs/NAME/)")
    fit_subtype.add_argument("--data", default=None, help="the training data, when it has moved since training "
                             "(default: the folder the model records)")

    export = add_command(
        subparsers, "export", "Export a model to ONNX with its preprocessing contract and a model card.",
        "pneumoscan export runs/latest --format onnx", run_export,
    )
    export.add_argument("model", metavar="MODEL", help="run folder, .safetensors, .ckpt, or default or fast (the "
                        "bundled models; written to runs/default/export/, runs/fast/export/)")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    export.add_argument("--out", metavar="FILE", help="output file (default: RUN/export/model.onnx)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset")
    export.add_argument("--int8", action="store_true", help="also write an int8 graph beside it (model.int8.onnx: "
                        "static quantisation of the backbone, its temperature and threshold re-fitted on validation; "
                        "used only when asked for, e.g. predict --backend onnx-int8)")
    export.add_argument("--int8-data", metavar="DATA", help="with --int8: the training data to calibrate and re-fit "
                        "on when the model has no run split.csv (a dataset folder, split by patient as training "
                        "did, or a manifest with train and val rows)")
    export.add_argument("--int8-images", type=int, default=None, metavar="N",
                        help="with --int8: training images the activation ranges are measured on (default 300)")


def run_predict(args) -> int:
    from pneumoscan.errors import ConfigError
    from pneumoscan.inference import load, scope
    from pneumoscan.inference.inputs import list_inputs
    from pneumoscan.inference.model_files import split_model_and_inputs
    from pneumoscan.inference.results import format_table, write_predictions

    model, paths = split_model_and_inputs(args.paths, args.model)
    if not paths:
        raise ConfigError("give at least one image file, folder or glob to score")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {args.batch_size}")
    streamed = bool(args.out) and not args.out.lower().endswith(".json")
    if args.out and not args.out.lower().endswith((".csv", ".json", ".jsonl", ".parquet")):
        raise ConfigError(f"--out {args.out}: use a name ending in .csv, .jsonl, .parquet or .json")
    if (args.resume or args.worklist) and not streamed:
        raise ConfigError(f"--{'resume' if args.resume else 'worklist'} needs --out ending in .csv, .jsonl or .parquet")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {args.workers}")
    if args.engine == "ray":
        if not args.scope_check or args.backend != "auto":
            raise ConfigError(f"{'--no-scope-check' if not args.scope_check else '--backend ' + args.backend} is for "
                              "--engine local")
        return _predict_ray(args, model, paths)
    if args.address:
        raise ConfigError("--address joins a Ray cluster: use it with --engine ray")
    classifier = load(model, device=args.device, prefer_onnx=args.backend == "auto", scope_check=args.scope_check,
                      backend=args.backend)
    if classifier.scope_note:
        print(f"note: {classifier.scope_note}", file=sys.stderr)
    if streamed:
        return _predict_streamed(args, classifier, paths)
    files = list_inputs(paths, once=True)  # listed once: predict takes the list as it is
    if not files:
        raise ConfigError(f"no image files found in {' '.join(paths)}")
    progress = args.progress if args.progress is not None else len(files) > PROGRESS_MIN_FILES and sys.stderr.isatty()
    scoring = classifier.iter_predict(files, batch_size=args.batch_size, workers=args.workers)
    if progress:
        from tqdm.auto import tqdm

        scoring = tqdm(scoring, total=len(files), desc="scoring", unit="img", leave=False)
    rows = list(scoring)
    # With --out the results are in the file: a 5,000-row echo helps nobody, but the rows that could not
    # be scored still show, with their reason.
    shown = [row for row in rows if row.error] if args.out else rows
    if not args.quiet and shown:
        print(format_table(shown))
    if args.out:
        write_predictions(rows, args.out)
    scored = sum(row.probability is not None for row in rows)
    meta = classifier.meta
    backend = classifier.backend_name
    which = _which(classifier)
    print(f"\nscored {scored} of {len(rows)} files with {which} (pneumoscan {meta.version or '?'}, {backend}), "
          f"threshold {classifier.threshold:.4f}" + (f"; results in {args.out}" if args.out else ""))
    refused = sum(row.probability is None and scope.OUT_OF_SCOPE in (row.error or "") for row in rows)
    if refused:
        print(f"{refused} file(s) out of scope: not frontal chest radiographs (see the note on their rows; "
              "--no-scope-check scores them anyway)", file=sys.stderr)
    if scored + refused < len(rows):
        print(f"{len(rows) - scored - refused} file(s) could not be scored: see the note on their rows", file=sys.stderr)
    if backend == "torch" and model is not None and args.backend == "auto":
        print(f"note: scored with PyTorch; `pneumoscan export {model}` makes predict start in about a second "
              "(ONNX Runtime, no torch import)", file=sys.stderr)
    print(DISCLAIMER, file=sys.stderr)
    return 0 if scored else 1


def _predict_streamed(args, classifier, paths: list[str]) -> int:
    from pneumoscan.errors import ConfigError
    from pneumoscan.inference.stream import predict_to_file

    meta = classifier.meta
    backend = classifier.backend_name
    summary = predict_to_file(classifier, paths, args.out, resume=args.resume, batch_size=args.batch_size,
                              workers=args.workers, progress=args.progress, report_failures=not args.quiet)
    if summary.seen == 0:
        raise ConfigError(f"no image files found in {' '.join(paths)}")
    scored, total = summary.scored, summary.seen - summary.skipped
    which = _which(classifier)
    print(f"scored {scored} of {total} files with {which} (pneumoscan {meta.version or '?'}, {backend}), "
          f"threshold {classifier.threshold:.4f}, {summary.rate:,.0f} files/s; results in {args.out}"
          + (f" ({summary.skipped} already there)" if summary.skipped else ""))
    if args.worklist:
        from pneumoscan.inference.results import write_worklist

        write_worklist(args.out, args.worklist, dict(meta.operating_points))
        print(f"worklist in {args.worklist}")
    if summary.failed:
        print(f"{summary.failed} file(s) could not be scored: see the error column of their rows", file=sys.stderr)
    print(DISCLAIMER, file=sys.stderr)
    return 0 if scored or summary.existing else 1


def _predict_ray(args, model: str | None, paths: list[str]) -> int:
    from pneumoscan.errors import ConfigError
    from pneumoscan.inference.ray_engine import predict_ray

    if not (args.out and args.out.lower().endswith(".parquet")):
        raise ConfigError("--engine ray writes Parquet: give --out RESULTS.parquet")
    if args.resume:
        raise ConfigError("--resume is for --engine local; Ray retries the tasks of failed workers itself")
    summary = predict_ray(model, paths, args.out, address=args.address, device=args.device, progress=args.progress)
    print(f"scored {summary.scored} of {summary.seen} files with {summary.model} on Ray ({summary.nodes} node(s), "
          f"{summary.cpus:g} CPUs), {summary.rate:,.0f} files/s; results in {args.out}")
    if args.worklist:
        from pneumoscan.inference.results import write_worklist

        write_worklist(args.out, args.worklist, summary.operating_points)
        print(f"worklist in {args.worklist}")
    if summary.failed:
        print(f"{summary.failed} file(s) could not be scored: see the error column of their rows", file=sys.stderr)
    print(DISCLAIMER, file=sys.stderr)
    return 0 if summary.scored else 1


def run_explain(args) -> int:
    from pneumoscan.errors import ConfigError
    from pneumoscan.explain import FINE_STRIDE, conv_layers, explain_images, target_layer
    from pneumoscan.inference import resolve_model
    from pneumoscan.inference.inputs import expand_inputs
    from pneumoscan.inference.model_files import split_model_and_inputs

    if args.list_layers:
        model_path = args.model or (args.images[0] if args.images else None)
        model, meta = resolve_model(model_path).load_network()
        for name in conv_layers(model):
            print(name)
        print(f"heatmap target by default: {target_layer(model, int(meta.image_size), FINE_STRIDE)}")
        return 0
    model_path, images = split_model_and_inputs(args.images, args.model)
    if not images:
        raise ConfigError("give at least one IMAGE to explain (or --list-layers)")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None
    files = expand_inputs(images)
    if not files:  # as predict does: an empty folder or a glob matching nothing is a one-line error
        raise ConfigError(f"no image files found in {' '.join(images)}")
    result = explain_images(model_path, files, args.out, filters=args.filters, layers=layers, layer=args.layer,
                            method=args.method)
    for path in result.written:
        print(path)
    for _, reason in result.failures:
        print(f"skipped: {reason}", file=sys.stderr)
    if result.written:
        print(f"\n{len(result.written)} file(s) written to {args.out} ({result.method} on layer {result.layer})")
    else:  # the folder is created with the first file: there is none to point to
        print(f"\nnothing written: none of the {len(files)} image(s) could be explained")
    print(DISCLAIMER, file=sys.stderr)
    return 0 if result.written else 1


def run_fit_scope(args) -> int:
    from pneumoscan.errors import ConfigError
    from pneumoscan.inference import resolve_model
    from pneumoscan.inference.model_files import is_bundled
    from pneumoscan.training.scope_fit import fit_scope

    if args.images < 50 or args.held_out < 20:
        raise ConfigError("--images must be at least 50 and --held-out at least 20")
    model, out = args.model, None
    if is_bundled(model):  # never rewrite the installed package: the refitted version is a folder of its own
        files = resolve_model(model, backend="torch")
        model, out = files.weights, files.run_folder
    gate = fit_scope(model, args.data, out=out, images=args.images, held_out=args.held_out, progress=True)
    written = f" (written to {out})" if out else ""
    print(f"scope gate of {args.model}{written}: fitted on {gate['fitted_on']} training images; thresholds "
          f"(distance {gate['distance_threshold']:.2f}, orientation {gate['orientation_threshold']:.2f}) keep "
          f"{gate['held_out_kept']:.1%} of {gate['held_out']} held-out ones")
    print(f"an ONNX export made before carries no gate: pneumoscan export {out or args.model}", file=sys.stderr)
    return 0


def run_fit_subtype(args) -> int:
    from pneumoscan.inference import resolve_model
    from pneumoscan.inference.model_files import is_bundled
    from pneumoscan.training.subtype_fit import fit_subtype

    model, out = args.model, None
    if is_bundled(model):  # never rewrite the installed package: the version with the head is a folder of its own
        files = resolve_model(model, backend="torch")
        model, out = files.weights, files.run_folder
    head = fit_subtype(model, args.data, out=out)
    written = f" (written to {out})" if out else ""
    figures = ", ".join(f"{k} {v:.3f}" for k, v in head["val_metrics"].items())
    print(f"subtype head of {args.model}{written}: fitted on {head['fitted_on']['train_bacterial']} bacterial and "
          f"{head['fitted_on']['train_viral']} viral training images; validation: {figures}")
    print(f"an ONNX export made before carries no head: pneumoscan export {out or args.model}", file=sys.stderr)
    return 0


def run_export(args) -> int:
    from pneumoscan import runs
    from pneumoscan.errors import ConfigError
    from pneumoscan.serving.export import PARITY_TOLERANCE, export_onnx

    if not args.int8 and (args.int8_data is not None or args.int8_images is not None):
        raise ConfigError(f"--int8-{'data' if args.int8_data is not None else 'images'} goes with --int8")
    if args.int8_images is not None and args.int8_images < 1:
        raise ConfigError(f"--int8-images must be at least 1, not {args.int8_images}")

    print(f"exporting {args.model} to ONNX and checking it against PyTorch (about half a minute)...",
          file=sys.stderr, flush=True)
    out = export_onnx(args.model, args.out, opset=args.opset)
    print(f"parity check passed: ONNX Runtime and PyTorch agree within {PARITY_TOLERANCE:g} in probability",
          file=sys.stderr)
    print(out)
    print(out.parent / runs.CARD_JSON)
    print(out.parent / runs.CARD_MARKDOWN)
    if args.int8:
        from pneumoscan.serving.quantize import CALIBRATION_IMAGES, export_int8
        from pneumoscan.training.metrics import refit_on_validation

        print("quantising it to int8 (calibration, then the validation images scored by both graphs)...",
              file=sys.stderr, flush=True)
        int8 = export_int8(out, refit_on_validation, args.int8_data, images=args.int8_images or CALIBRATION_IMAGES)
        print(f"int8: calibrated on {int8.calibration_images} training images; temperature "
              f"{int8.meta.temperature:.3f} and threshold {int8.meta.threshold:.4f} re-fitted on "
              f"{int8.validation_images} validation images, where it gives the float model's label to "
              f"{int8.label_agreement:.1%} ({int8.refusals_changed} scope refusals changed)", file=sys.stderr)
        print(int8.path)
        print(*(int8.path.parent / name for name in runs.card_names(int8.path)), sep="\n")
    return 0


def _which(classifier) -> str:
    """The model as the summary line names it: its network, and which bundled model it is."""
    files = classifier.files
    return f"{classifier.meta.name}, the bundled {files.name} model" if files.bundled else classifier.meta.name
