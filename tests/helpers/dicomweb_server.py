"""A minimal DICOMweb server on 127.0.0.1 for `dicom pull` tests that need instances a PACS would not keep
as they are (hostile UIDs, emptied headers): QIDO-RS study and series search, WADO-RS series retrieval,
held in memory, and STOW-RS that records what it was sent. ``hostile`` makes it a server that lies:

- ``endless-json``: every QIDO-RS answer is a JSON array that never ends;
- ``endless-part``: the series' WADO-RS answer is a multipart part that never ends (no closing boundary);
- ``endless-pages``: the study search has a full page of new studies at every offset;
- ``trickle``: every QIDO-RS answer comes one byte per ``interval`` seconds.

>>> with DicomWebServer({"1.2.3": [file_bytes, ...]}) as server:
...     pull(processor, server.url, study="1.2.3")
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pydicom

_BOUNDARY = "pneumoscan-test-boundary"
HOSTILE = ("endless-json", "endless-part", "endless-pages", "trickle")
HOSTILE_SERIES = "1.2.826.0.1.3680043.8.498.1"  # the CR series of every study of an endless-part server


class DicomWebServer:
    """``studies`` maps a StudyInstanceUID to the DICOM files (bytes) of that study; each file's
    SeriesInstanceUID and Modality make the series QIDO-RS lists."""

    def __init__(self, studies: dict[str, list[bytes]] | None = None, hostile: str | None = None,
                 interval: float = 1.0) -> None:
        assert hostile is None or hostile in HOSTILE, hostile
        self.studies, self.hostile, self.interval = studies or {}, hostile, interval
        self.stored: list[bytes] = []
        self.searches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                query = parse_qs(url.query)
                offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["1000"])[0])
                if parts[-1:] in (["studies"], ["series"]):
                    server.searches += 1
                    if server.hostile in ("endless-json", "trickle"):
                        return self._endless("application/dicom+json", b"[", b'{"0020000D": {"vr": "UI"}},' * 2048)
                if parts == ["studies"]:
                    found = server._studies()[offset:][:limit]
                    if server.hostile == "endless-pages":
                        found = [_item(f"1.2.3.{n}") for n in range(offset, offset + limit)]
                    self._send(200, "application/dicom+json", json.dumps(found).encode())
                elif len(parts) == 3 and parts[0] == "studies" and parts[2] == "series":
                    found = [] if offset else server._series(parts[1])
                    self._send(200, "application/dicom+json", json.dumps(found).encode())
                elif len(parts) == 4 and parts[0] == "studies" and parts[2] == "series":
                    content_type = f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}'
                    if server.hostile == "endless-part":
                        head = f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                        return self._endless(content_type, head, b"\0" * 65536)
                    files = [f for f in server.studies.get(parts[1], []) if _header(f).SeriesInstanceUID == parts[3]]
                    body = b"".join(f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
                                    for f in files) + f"--{_BOUNDARY}--".encode()
                    self._send(200, content_type, body)
                else:
                    self._send(404, "text/plain", b"not found")

            def do_POST(self) -> None:  # noqa: N802
                server.stored.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self._send(200, "application/dicom+json", b"{}")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _endless(self, content_type: str, head: bytes, repeated: bytes) -> None:
                """An answer without a length that goes on until the client hangs up."""
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.end_headers()
                try:
                    self.wfile.write(head)
                    while True:
                        if server.hostile == "trickle":
                            time.sleep(server.interval)
                            self.wfile.write(repeated[:1])
                            self.wfile.flush()
                        else:
                            self.wfile.write(repeated)
                except OSError:  # the client hung up: what a bounded client does
                    return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _studies(self) -> list[dict]:
        return [_item(uid) for uid in self.studies]

    def _series(self, study: str) -> list[dict]:
        if self.hostile == "endless-part":
            return [_item(study, HOSTILE_SERIES, "CR")]
        seen: dict[str, str] = {}
        for data in self.studies.get(study, []):
            ds = _header(data)
            seen.setdefault(str(ds.SeriesInstanceUID), str(ds.get("Modality", "")))
        return [_item(study, uid, modality) for uid, modality in seen.items()]

    def __enter__(self) -> DicomWebServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _item(study: str, series: str | None = None, modality: str | None = None) -> dict:
    item = {"0020000D": {"vr": "UI", "Value": [study]}}
    if series is not None:
        item.update({"0020000E": {"vr": "UI", "Value": [series]}, "00080060": {"vr": "CS", "Value": [modality]}})
    return item


def _header(data: bytes):
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
