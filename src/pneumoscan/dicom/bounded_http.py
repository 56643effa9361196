"""HTTP that does not trust the server: every response of a ``dicom pull`` is read under limits.

A DICOMweb server decides how much it sends, how fast and for how long. Here every request goes through
a :class:`BoundedSession` (a ``requests.Session``, which dicomweb-client accepts): responses are always
streamed, each read returns what has arrived (urllib3's ``read1``) and is counted, a JSON body and each
part of a multipart body have a size limit, no read waits longer than the read timeout, and the whole
pull has a deadline that is checked before every request and between reads.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from pneumoscan.errors import ConfigError


@dataclass(frozen=True)
class PullLimits:
    """What one ``dicom pull`` may cost, whatever the server sends."""

    deadline: float = 3600.0  # seconds for the whole pull
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # seconds one read may wait for a byte
    max_json_bytes: int = 8 * 2**20  # one QIDO-RS or STOW-RS answer (a 100-study page is about 150 kB)
    max_instance_bytes: int = 64 * 2**20  # one part of a WADO-RS answer (a 4,300 px 16-bit radiograph: 37 MB)
    page_size: int = 100  # results asked for per QIDO-RS request
    max_pages: int = 200  # QIDO-RS requests per search
    max_results: int = 10_000  # studies (or series of one study) one search may find
    max_instances: int = 10_000  # instances one pull may fetch

    def __post_init__(self) -> None:
        numbers = (self.deadline, self.connect_timeout, self.read_timeout, self.max_json_bytes,
                   self.max_instance_bytes, self.page_size, self.max_pages, self.max_results, self.max_instances)
        if min(numbers) <= 0:
            raise ConfigError(f"dicom pull limits must all be positive ({self})")


class PullLimitExceeded(Exception):
    """The server broke one of the :class:`PullLimits`; the message says which."""


class Deadline:
    """The pull's overall deadline, checked before every request and between reads."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; :class:`PullLimitExceeded` once there are none."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise PullLimitExceeded(f"stopped at the pull's deadline of {self.seconds:g} s")
        return left


class BoundedBody:
    """Stands in for a response's urllib3 body: ``stream()`` (what requests reads through) yields what
    each ``read1`` returns, checking the deadline and counting bytes. ``boundary`` (a multipart body)
    makes the limit apply to each part, the bytes since the last delimiter; without one, to the body."""

    def __init__(self, raw, limit: int, deadline: Deadline, boundary: bytes | None, read_timeout: float) -> None:
        self._raw, self._limit, self._deadline, self._read_timeout = raw, limit, deadline, read_timeout
        self._delimiter = b"\r\n--" + boundary if boundary else None
        self._tail = b""
        self._since_delimiter = 0

    def stream(self, amt: int = 2**16, decode_content: bool | None = None) -> Iterator[bytes]:
        from urllib3.exceptions import ReadTimeoutError

        while True:
            left = self._deadline.left()
            # No read waits past the deadline: the socket's timeout is what is left of it, at most the read
            # timeout. Where the socket cannot be found, a read may end up to one read timeout late.
            sock = _socket(self._raw)
            if sock is not None:
                sock.settimeout(min(self._read_timeout, left))
            try:
                chunk = self._raw.read1(amt, decode_content=decode_content)
            except ReadTimeoutError:
                self._deadline.left()  # the deadline, when that is what ended the wait
                raise
            if not chunk:
                return
            self._count(chunk)
            yield chunk

    def read(self, amt: int | None = None, decode_content: bool | None = None, **_) -> bytes:
        return b"".join(self.stream(amt or 2**16, decode_content))

    def _count(self, chunk: bytes) -> None:
        if self._delimiter is None:
            self._since_delimiter += len(chunk)
        else:  # the delimiter may straddle two reads: search the end of the previous one too
            window = self._tail + chunk
            found = window.rfind(self._delimiter)
            self._since_delimiter = (len(window) - found - len(self._delimiter) if found >= 0
                                     else self._since_delimiter + len(chunk))
            self._tail = window[-(len(self._delimiter) - 1):]
        if self._since_delimiter > self._limit:
            what = "a part of the answer" if self._delimiter else "the answer"
            raise PullLimitExceeded(f"{what} passed the limit of {self._limit:,} bytes")

    def __getattr__(self, name: str):  # close(), release_conn(), headers, ... stay urllib3's
        return getattr(self._raw, name)


class BoundedSession(requests.Session):
    """A ``requests.Session`` whose every response is a :class:`BoundedBody` under ``limits``."""

    def __init__(self, limits: PullLimits, deadline: Deadline) -> None:
        super().__init__()
        self.limits, self.deadline = limits, deadline
        self.max_redirects = 3
        self.requests_sent = 0

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        left = self.deadline.left()
        # Streamed, so that requests never reads a body whole; neither connecting nor waiting for the
        # answer's headers goes past the deadline.
        kwargs["stream"] = True
        kwargs["timeout"] = (min(self.limits.connect_timeout, left), min(self.limits.read_timeout, left))
        self.requests_sent += 1
        response = super().send(request, **kwargs)
        if not isinstance(response.raw, BoundedBody):  # a redirect's answer is wrapped already
            boundary = _boundary(response.headers.get("Content-Type", ""))
            limit = self.limits.max_instance_bytes if boundary is not None else self.limits.max_json_bytes
            response.raw = BoundedBody(response.raw, limit, self.deadline, boundary or None, self.limits.read_timeout)
        return response


def _socket(raw) -> socket.socket | None:
    """The socket a urllib3 response reads from: its connection's, or (the connection closing after this
    answer: http.client hands the socket to the response) the one under the response's file."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _boundary(content_type: str) -> bytes | None:
    """The boundary of a multipart Content-Type (b"" when it names none); None when not multipart."""
    media, *parameters = (p.strip() for p in content_type.split(";"))
    if not media.lower().startswith("multipart/"):
        return None
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"').encode("utf-8", "replace")
    return b""
