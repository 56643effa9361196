"""`pneumoscan serve`: the REST API and the web page for one model."""

from __future__ import annotations

import argparse
import logging

from pneumoscan.cli.commands import add_command


def register(subparsers) -> None:
    """Add ``serve``."""
    from pneumoscan.serving.options import ServeOptions

    defaults = ServeOptions(model="")
    command = add_command(
        subparsers, "serve",
        help="Serve a model: REST API (POST /v1/predict, /v1/predict/batch, GET /v1/model, /healthz, /readyz, "
             "/docs) and a web page at /. MODEL is an exported model.onnx (fastest start) or a run folder "
             "(its export/model.onnx when present, else the PyTorch weights).",
        example="pneumoscan serve runs/latest --port 8000    # then open http://127.0.0.1:8000/",
        func=run,
    )
    command.add_argument("model", metavar="MODEL", nargs="?", default=None,
                         help="model.onnx, a run folder, a .safetensors/.ckpt file, or default or fast (the bundled "
                              "models; default also used when none is given)")
    command.add_argument("--host", default=defaults.host,
                         help="address to listen on; anything but loopback exposes an unauthenticated service")
    command.add_argument("--port", type=int, default=defaults.port, help="TCP port to listen on")
    command.add_argument("--workers", type=int, default=defaults.workers,
                         help="worker processes (each loads its own copy of the model)")
    command.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_mb,
                         help="largest request body accepted; larger uploads get 413")
    command.add_argument("--max-batch-files", type=int, default=defaults.max_batch_files,
                         help="most files in one /v1/predict/batch request")
    command.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency,
                         help="batches of images scored at once per worker")
    command.add_argument("--max-queue", type=int, default=defaults.max_queue,
                         help="requests that may be in progress beyond --max-concurrency; beyond that, 503")
    command.add_argument("--batch-images", type=int, default=defaults.batch_images,
                         help="most images of concurrent requests scored together in one network call")
    command.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms,
                         help="longest a batch waits for more images after its first (0: only those already waiting)")
    command.add_argument("--log-level", default=defaults.log_level,
                         choices=["critical", "error", "warning", "info", "debug"], help="server log detail")


def run(args: argparse.Namespace) -> int:
    from pneumoscan.serving.options import ServeOptions
    from pneumoscan.serving.server import LOG_FORMAT, serve

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    if args.model is None:  # the bundled model, by its file: every worker process finds it the same way
        from pneumoscan.inference import resolve_model

        args.model = str(resolve_model(prefer_onnx=True).path)
    serve(ServeOptions(
        model=args.model, host=args.host, port=args.port, workers=args.workers,
        max_upload_mb=args.max_upload_mb, max_batch_files=args.max_batch_files,
        max_concurrency=args.max_concurrency, max_queue=args.max_queue, batch_images=args.batch_images,
        batch_wait_ms=args.batch_wait_ms, log_level=args.log_level,
    ))
    return 0
