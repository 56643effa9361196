"""The options of ``pneumoscan serve`` and the server's default limits (light: imports nothing heavy, so
``pneumoscan --help`` stays fast)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pneumoscan.errors import ConfigError

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a 3,000 px 16-bit DICOM is ~18 MiB
DEFAULT_MAX_BATCH_FILES = 16
DEFAULT_MAX_CONCURRENCY = 2  # batches scored at once per worker; each uses the backend's own threads
DEFAULT_MAX_QUEUE = 64  # requests in progress beyond max_concurrency before new ones get 503
DEFAULT_BATCH_IMAGES = 32  # most images of concurrent requests scored in one network call
# Long enough for requests arriving together to meet, short beside a batch's few ms in the network.
DEFAULT_BATCH_WAIT_MS = 2.0


def inference_threads(max_concurrency: int, workers: int = 1) -> int:
    """ONNX Runtime threads per batch: the cores shared out between the batches scored at once (one ONNX
    Runtime pool per batch and per worker would otherwise oversubscribe the cores)."""
    return max(1, (os.cpu_count() or 1) // (max_concurrency * workers))


def decoding_threads(workers: int = 1) -> int:
    """Threads decoding uploads in each worker: the cores shared out between the workers (Pillow's and
    pydicom's decoders release the GIL; the network runs in its own threads meanwhile)."""
    return max(1, (os.cpu_count() or 1) // workers)


@dataclass
class ServeOptions:
    """The options of ``pneumoscan serve``."""

    model: str
    host: str = "127.0.0.1"  # loopback: reachable from this machine only, unless asked otherwise
    port: int = 8000
    workers: int = 1
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_BYTES / 2**20
    max_batch_files: int = DEFAULT_MAX_BATCH_FILES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_queue: int = DEFAULT_MAX_QUEUE
    batch_images: int = DEFAULT_BATCH_IMAGES
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    log_level: str = "info"

    def limits(self) -> dict[str, int]:
        """Keyword arguments of :func:`pneumoscan.serving.app.create_app`."""
        return {"max_upload_bytes": int(self.max_upload_mb * 2**20), "max_batch_files": self.max_batch_files,
                "max_concurrency": self.max_concurrency, "max_queue": self.max_queue,
                "batch_images": self.batch_images, "batch_wait_ms": self.batch_wait_ms}

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: must be between 0 and 65535")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: must be at least 1")
        if self.max_upload_mb <= 0 or self.max_batch_files < 1 or self.max_concurrency < 1 or self.max_queue < 0:
            raise ConfigError("--max-upload-mb, --max-batch-files and --max-concurrency must be positive, "
                              "--max-queue at least 0")
        if self.batch_images < 1 or not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError(f"--batch-images {self.batch_images} must be at least 1 and --batch-wait-ms "
                              f"{self.batch_wait_ms:g} between 0 and 1000")
