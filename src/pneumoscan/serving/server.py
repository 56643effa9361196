"""Run the service with uvicorn: ``serve(ServeOptions(model="runs/latest"))``, what ``pneumoscan serve`` calls."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pneumoscan.errors import ConfigError
from pneumoscan.serving.options import ServeOptions, decoding_threads, inference_threads

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("pneumoscan.serving")

# How `--workers N` hands the model and the limits to uvicorn's worker processes.
ENV_MODEL = "PNEUMOSCAN_SERVE_MODEL"
ENV_LIMITS = "PNEUMOSCAN_SERVE_LIMITS"
ENV_LOG_LEVEL = "PNEUMOSCAN_SERVE_LOG_LEVEL"
LOG_FORMAT = "%(levelname)s:     %(name)s: %(message)s"  # lines up with uvicorn's own


def serve(options: ServeOptions) -> None:
    """Load the model (a bad one is a :class:`ModelFileError` before anything listens), then serve until
    interrupted. With ``workers > 1`` every worker process loads its own copy in the background."""
    import uvicorn

    from pneumoscan.inference import resolve_model
    from pneumoscan.serving.app import create_app, load_served

    options.validate()
    _warn_if_public(options.host)
    config = {"host": options.host, "port": options.port, "log_level": options.log_level,
              "server_header": False, "proxy_headers": False}
    if options.workers == 1:
        threads = inference_threads(options.max_concurrency)
        app = create_app(load_served(options.model, threads), **options.limits())
        uvicorn.run(app, **config)
        return
    resolve_model(options.model, prefer_onnx=True)  # fail now, not in every worker
    os.environ[ENV_MODEL] = str(Path(options.model).expanduser().resolve())
    os.environ[ENV_LIMITS] = json.dumps(
        {**options.limits(), "threads": inference_threads(options.max_concurrency, options.workers),
         "decode_threads": decoding_threads(options.workers)})
    os.environ[ENV_LOG_LEVEL] = options.log_level
    uvicorn.run("pneumoscan.serving.server:app_from_env", factory=True, workers=options.workers, **config)


def app_from_env() -> FastAPI:
    """The app for one of uvicorn's worker processes, from the environment that :func:`serve` set."""
    model = os.environ.get(ENV_MODEL)
    if not model:
        raise ConfigError(f"${ENV_MODEL} is not set; start the server with `pneumoscan serve MODEL`")
    from pneumoscan.serving.app import create_app

    # A worker is a fresh process: uvicorn configures its own loggers only.
    logging.basicConfig(level=os.environ.get(ENV_LOG_LEVEL, "info").upper(), format=LOG_FORMAT)
    limits = json.loads(os.environ.get(ENV_LIMITS) or "{}")
    return create_app(model, **limits)


def _warn_if_public(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        log.warning("listening on %s: other machines can reach this server, which has no authentication "
                    "and no TLS; put it behind a reverse proxy that adds them", host)
