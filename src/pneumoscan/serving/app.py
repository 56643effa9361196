"""The REST service and its web page: ``create_app(model) -> FastAPI``.

Routes: ``POST /v1/predict`` (one image, ``?explain=true`` adds Grad-CAM), ``POST /v1/predict/batch``,
``GET /v1/model`` (the model card), ``GET /healthz``, ``GET /readyz``, the page at ``/`` and the
OpenAPI docs at ``/docs`` (served from the package: they work offline).

Safety: request bodies are counted while they are read and refused with 413 over the limit; uploads are
kept in memory (or in the system's temporary folder above 1 MiB, deleted with the request) and their
names are only echoed back, never used as paths; the content is sniffed (415 when it is not an image)
and decoded by the project's one decoder, which refuses decompression bombs (422). Decoding runs in a
pool of threads and inference in batches shared by concurrent requests (:mod:`~pneumoscan.serving.batching`),
never on the event loop; beyond the queue's length requests get 503. Every error is JSON
``{"detail": message}``, without a stack trace.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from html import escape
from importlib.resources import files
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from pneumoscan import __version__
from pneumoscan.errors import PneumoscanError
from pneumoscan.inference import Classifier, load
from pneumoscan.inference.rows import Source
from pneumoscan.provenance import DISCLAIMER
from pneumoscan.serving.batching import MicroBatcher
from pneumoscan.serving.explainer import Explainer, ExplainUnavailable
from pneumoscan.serving.middleware import DeclaredSizeLimit, SecurityHeaders
from pneumoscan.serving.options import (
    DEFAULT_BATCH_IMAGES,
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_BATCH_FILES,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_BYTES,
    decoding_threads,
    inference_threads,
)
from pneumoscan.serving.responses import (
    ERROR_RESPONSES,
    BatchItem,
    BatchResponse,
    Explanation,
    PredictResponse,
    error_doc,
    served_card,
)
from pneumoscan.serving.scoring import Admission, prepare, prepare_item, rows_of

log = logging.getLogger("pneumoscan.serving")

SCOPE_CHECK_DOC = ("false: also score images the scope gate refuses (not frontal chest radiographs); they are "
                   "marked 'scope check off' in note. true (default): such an image gets 422 'out of scope: <reason>' "
                   "(in a batch, on its row)")
MULTIPART_HINT = "send the image as multipart/form-data, field 'file' (field 'files' for a batch)"


def create_app(
    model: str | os.PathLike | Classifier,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_batch_files: int = DEFAULT_MAX_BATCH_FILES,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_queue: int = DEFAULT_MAX_QUEUE,
    threads: int | None = None,
    batch_images: int = DEFAULT_BATCH_IMAGES,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    decode_threads: int | None = None,
) -> FastAPI:
    """The FastAPI app serving ``model``: a path (loaded in the background at start-up, ``/readyz``
    answers 503 until it is ready; see :func:`load_served`) or a loaded :class:`Classifier`.

    ``max_upload_bytes`` bounds a request's whole body (a batch's files together); a batch holds at most
    ``max_batch_files`` files; ``max_concurrency`` requests are handled at once and ``max_queue`` more may
    wait (beyond them, 503); ``max_concurrency`` batches are scored at once, each of at most
    ``batch_images`` images from concurrent requests, waiting at most ``batch_wait_ms`` for them
    (:class:`~pneumoscan.serving.batching.MicroBatcher`). ``threads``: ONNX Runtime's threads per batch for
    a model given by path (default: the cores divided by ``max_concurrency``); ``decode_threads``: threads
    decoding uploads (default: one per core).
    """
    if min(max_upload_bytes, max_batch_files, max_concurrency, batch_images) < 1 or max_queue < 0 or batch_wait_ms < 0:
        raise ValueError("limits must be positive (max_queue and batch_wait_ms may be 0)")
    state = _State(model, threads or inference_threads(max_concurrency))
    limit = Admission(max_concurrency, max_queue, decode_threads or decoding_threads(),
                      MicroBatcher(batch_images, batch_wait_ms / 1000, max_concurrency))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with anyio.create_task_group() as tasks:
            if state.model is None and state.error is None:
                tasks.start_soon(state.load)
            yield

    app = FastAPIOffline(
        title="pneumoscan",
        version=__version__,
        description="Pneumonia probability for chest radiographs. " + DISCLAIMER,
        lifespan=lifespan,
        redoc_url=None,
    )
    too_large = f"upload too large: the limit is {_size(max_upload_bytes)} per request; send a smaller file"
    app.add_middleware(DeclaredSizeLimit, max_bytes=max_upload_bytes, detail=too_large)
    # Added last, so outermost: every answer gets the headers, the early 413 included.
    app.add_middleware(SecurityHeaders, docs_paths=("/docs", "/docs/oauth2-redirect"))
    app.mount("/static", StaticFiles(packages=[("pneumoscan.serving", "static")]), name="static")

    _add_error_handlers(app, too_large)
    _add_page(app)
    _add_health_routes(app, state, limit.batcher)
    _add_predict_routes(app, state, limit, max_upload_bytes, max_batch_files)
    app.state.pneumoscan = state
    return app


def _add_error_handlers(app: FastAPI, too_large: str) -> None:
    """Every error is JSON ``{"detail": message}``; never a stack trace."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = too_large if exc.status_code == 413 else exc.detail  # the limiter's own text omits the limit
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and not content_type.startswith("multipart/form-data"):
            return JSONResponse({"detail": f"expected multipart/form-data, got {content_type or 'no content type'}; "
                                 f"{MULTIPART_HINT}"}, status_code=415)
        problems = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body')}: {err.get('msg')}"
                             for err in exc.errors())
        return JSONResponse({"detail": f"invalid request ({problems}); {MULTIPART_HINT}"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error while handling this request; the server log has the details"},
                            status_code=500)


def _add_page(app: FastAPI) -> None:
    """The web page at ``/`` (with the disclaimer) and its icon."""
    page = (files("pneumoscan.serving") / "static" / "index.html").read_text(encoding="utf-8")
    page = page.replace("__DISCLAIMER__", escape(DISCLAIMER))

    # HEAD too: uptime checks and `curl -I` ask for the page's headers only.
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg", status_code=308)


def _add_health_routes(app: FastAPI, state: _State, batcher: MicroBatcher) -> None:
    """``/healthz`` (the process), ``/readyz`` (the model, and the batches scored so far) and ``/v1/model``
    (the model card)."""

    @app.get("/healthz", tags=["health"], summary="The process is up (the model may still be loading)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The model is loaded and requests will be answered",
             responses={503: error_doc("model loading, or it failed to load")})
    async def readyz() -> JSONResponse:
        model = state.model
        if model is None:
            return JSONResponse({"status": "failed" if state.error else "loading",
                                 "detail": state.error or "model is loading"}, status_code=503)
        return JSONResponse({"status": "ready", "model": model.meta.name,
                             "version": model.meta.version, "backend": model.backend_name,
                             "batching": batcher.stats()})

    @app.get("/v1/model", tags=["model"], summary="The model card: data, metrics, threshold, intended use, limits",
             responses={503: error_doc("model not loaded yet")})
    async def model_card() -> dict[str, Any]:
        state.require()
        return state.card


def _add_predict_routes(app: FastAPI, state: _State, limit: Admission, max_upload_bytes: int,
                        max_batch_files: int) -> None:
    """``POST /v1/predict`` (one image, optional Grad-CAM) and ``POST /v1/predict/batch``."""

    @app.post("/v1/predict", tags=["predict"], response_model=PredictResponse, responses=ERROR_RESPONSES,
              summary="Probability of pneumonia for one radiograph (JPEG, PNG or DICOM)",
              max_body_size=max_upload_bytes, form_limits={"max_files": 1, "max_fields": 4})
    async def predict(
        file: Annotated[UploadFile, File(description="the radiograph: JPEG, PNG or DICOM")],
        explain: Annotated[bool, Query(description="add a Grad-CAM overlay (PNG, base64); needs the "
                                                   "PyTorch weights beside the model, else 409")] = False,
        scope_check: Annotated[bool, Query(description=SCOPE_CHECK_DOC)] = True,
    ) -> PredictResponse:
        model = state.require()
        if explain and not state.explainer.available:
            raise HTTPException(409, state.explainer.unavailable_reason)
        name = _display_name(file.filename)
        data = await file.read()
        start = time.perf_counter()
        classifier = model.with_scope_check(scope_check)
        async with limit.admit():
            image, source = await limit.run(prepare, classifier, data, name)
            [row] = await limit.batcher.assess(classifier, [image], [source])
            if isinstance(row, Exception):
                raise row
            if row.probability is None:
                raise HTTPException(422, row.error)
            explanation = None
            if explain:
                try:
                    explanation = Explanation(**await limit.run(state.explainer.explain, image, exclusive=True))
                except (ExplainUnavailable, PneumoscanError) as exc:  # no weights, or a network Grad-CAM cannot read
                    raise HTTPException(409, f"cannot explain: {exc}") from None
        return PredictResponse(
            **row.record(), filename=name, backend=model.backend_name, note=row.error, explanation=explanation,
            latency_ms=round((time.perf_counter() - start) * 1000, 2),
        )

    @app.post("/v1/predict/batch", tags=["predict"], response_model=BatchResponse, responses=ERROR_RESPONSES,
              summary=f"Probabilities for up to {max_batch_files} radiographs; a bad file is reported on its row",
              max_body_size=max_upload_bytes, form_limits={"max_files": max_batch_files, "max_fields": 4})
    async def predict_batch(
        # Annotations are evaluated at module level (PEP 563): no closure variables in them.
        files: Annotated[list[UploadFile], File(description="the radiographs (JPEG, PNG or DICOM)")],
        scope_check: Annotated[bool, Query(description=SCOPE_CHECK_DOC)] = True,
    ) -> BatchResponse:
        model = state.require()
        uploads = [(_display_name(f.filename), await f.read()) for f in files]
        start = time.perf_counter()
        classifier = model.with_scope_check(scope_check)
        async with limit.admit():
            decoded: list[tuple[np.ndarray | None, Source]] = [(None, Source(name)) for name, _ in uploads]

            async def decode(i: int, name: str, data: bytes) -> None:
                decoded[i] = await limit.run(prepare_item, classifier, data, name)

            async with anyio.create_task_group() as tasks:  # the files decoded on all the decoding threads
                for i, (name, data) in enumerate(uploads):
                    tasks.start_soon(decode, i, name, data)
            good = [(image, source) for image, source in decoded if image is not None]
            scored = await limit.batcher.assess(classifier, [image for image, _ in good], [s for _, s in good])
            items = [BatchItem.of(row) for row in rows_of(classifier, decoded, scored)]
        meta = model.meta
        return BatchResponse(
            results=items, threshold=model.threshold, model=meta.name, version=meta.version,
            backend=model.backend_name, latency_ms=round((time.perf_counter() - start) * 1000, 2),
        )


def load_served(path: str | os.PathLike, threads: int | None = None) -> Classifier:
    """The :class:`Classifier` the server scores with for ``path``: :func:`pneumoscan.inference.load` with
    ``prefer_onnx`` (ONNX Runtime: a fast start, no torch, Lightning or MONAI on the request path). A run
    folder whose export is missing, stale or unreadable is served with PyTorch, with a warning saying why:
    the server never exports by itself (that writes into the user's run folder and takes a while).

    ``threads``: ONNX Runtime's threads per inference (None: its default, one per core).
    """
    model = load(path, prefer_onnx=True, threads=threads)
    files = model.files
    if files.note:
        log.warning("%s: %s: serving with PyTorch (slower start); run `pneumoscan export %s` to serve with "
                    "ONNX Runtime", path, files.note, path)
    log.info("serving %s with %s (Grad-CAM %s)", files.path, model.backend_name,
             "available" if model.explainable else "unavailable: no PyTorch weights beside it")
    return model


class _State:
    """The served model and its card, loaded at construction or in the background at start-up."""

    def __init__(self, model: str | os.PathLike | Classifier, threads: int | None = None) -> None:
        self.path: str | os.PathLike | None = None
        self.threads = threads
        self.model: Classifier | None = None
        self.card: dict[str, Any] = {}
        self.explainer: Explainer | None = None
        self.error: str | None = None
        if isinstance(model, Classifier):
            self._set(model)
        else:
            self.path = model

    async def load(self) -> None:
        try:
            model = await anyio.to_thread.run_sync(load_served, self.path, self.threads)
        except PneumoscanError as exc:
            self.error = f"model failed to load: {exc}"
            log.error("%s", self.error)
            return
        except Exception as exc:  # the server stays up and says why on /readyz
            self.error = f"model failed to load: {type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        self._set(model)

    def _set(self, model: Classifier) -> None:
        self.card = served_card(model)
        self.explainer = Explainer(model)
        self.model = model

    def require(self) -> Classifier:
        if self.model is None:
            raise HTTPException(503, self.error or "the model is still loading; retry in a few seconds",
                                headers={"Retry-After": "2"})
        return self.model


def _size(n: int) -> str:
    return f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n / 2**10:.3g} KiB"


def _display_name(filename: str | None) -> str:
    """The client's file name for echoing back: last path part, printable characters, at most 128."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:128].strip()
    return name or "upload"
