"""A minimal DICOMweb server on 127.0.0.1 for `dicom pull` tests that need instances a PACS would not keep
as they are (hostile UIDs, emptied headers): QIDO-RS series search and WADO-RS series retrieval of one
study, held in memory, and STOW-RS that records what it was sent.

>>> with DicomWebServer({"1.2.3": [file_bytes, ...]}) as server:
...     pull(processor, server.url, study="1.2.3")
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pydicom

_BOUNDARY = "pneumoscan-test-boundary"


class DicomWebServer:
    """``studies`` maps a StudyInstanceUID to the DICOM files (bytes) of that study; each file's
    SeriesInstanceUID and Modality make the series QIDO-RS lists."""

    def __init__(self, studies: dict[str, list[bytes]]) -> None:
        self.studies = studies
        self.stored: list[bytes] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                offset = int(parse_qs(url.query).get("offset", ["0"])[0])
                if len(parts) == 3 and parts[0] == "studies" and parts[2] == "series":
                    found = [] if offset else server._series(parts[1])
                    self._send(200, "application/dicom+json", json.dumps(found).encode())
                elif len(parts) == 4 and parts[0] == "studies" and parts[2] == "series":
                    files = [f for f in server.studies.get(parts[1], []) if _header(f).SeriesInstanceUID == parts[3]]
                    body = b"".join(f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
                                    for f in files) + f"--{_BOUNDARY}--".encode()
                    self._send(200, f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}', body)
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

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _series(self, study: str) -> list[dict]:
        seen: dict[str, str] = {}
        for data in self.studies.get(study, []):
            ds = _header(data)
            seen.setdefault(str(ds.SeriesInstanceUID), str(ds.get("Modality", "")))
        return [{"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [uid]},
                 "00080060": {"vr": "CS", "Value": [modality]}} for uid, modality in seen.items()]

    def __enter__(self) -> DicomWebServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _header(data: bytes):
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
