"""download_dataset against a local HTTP server (started by the test on 127.0.0.1) serving a zip it made:
a full download, a resume after a broken connection, a wrong checksum and a zip-slip archive."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers.images import textured
from pneumoscan.cli import main
from pneumoscan.data import load_dataset
from pneumoscan.data.download import download_dataset
from pneumoscan.errors import DatasetError


def _archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _png(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(textured(seed)).save(buffer, "PNG")
    return buffer.getvalue()


# The Mendeley archive's layout in miniature: chest_xray/{train,test}/{NORMAL,PNEUMONIA} and __MACOSX.
DATASET = _archive({
    "chest_xray/train/NORMAL/IM-0001-0001.png": _png(1),
    "chest_xray/train/PNEUMONIA/person1_virus_1.png": _png(2),
    "chest_xray/test/NORMAL/IM-0002-0001.png": _png(3),
    "chest_xray/test/PNEUMONIA/person2_virus_2.png": _png(4),
    "__MACOSX/chest_xray/._IM-0001-0001.png": b"\0\5\26\7",
})


class Server:
    """Serves ``payload`` at /archive.zip with Range support; ``broken`` first responses are cut in half."""

    def __init__(self, payload: bytes, broken: int = 0, honour_range: bool = True):
        self.payload, self.broken, self.honour_range = payload, broken, honour_range
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                server.ranges.append(self.headers.get("Range"))
                start = 0
                if server.honour_range and (header := self.headers.get("Range")):
                    start = int(header.removeprefix("bytes=").split("-")[0])
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                if server.broken > 0:
                    server.broken -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/archive.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(payload: bytes = DATASET, **kwargs) -> Server:
        servers.append(Server(payload, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


SHA = hashlib.sha256(DATASET).hexdigest()


def test_download_verifies_extracts_and_is_reused_the_second_time(serve, tmp_path):
    server = serve()
    result = download_dataset(server.url, SHA, tmp_path, progress=False)
    assert result.sha256 == SHA and not result.reused and result.archive.read_bytes() == DATASET
    index = load_dataset(result.folder)  # the archive's top folder and __MACOSX/ are handled
    assert sorted((s.split, s.label) for s in index.samples) == [("test", 0), ("test", 1), ("train", 0), ("train", 1)]
    again = download_dataset(server.url, SHA, tmp_path, progress=False)
    assert again.reused and len(server.ranges) == 1


def test_download_resumes_after_a_broken_connection_with_a_range_request(serve, tmp_path):
    server = serve(broken=1)
    result = download_dataset(server.url, SHA, tmp_path, retries=2, progress=False)
    assert result.archive.read_bytes() == DATASET
    assert server.ranges[0] is None and server.ranges[1] == f"bytes={len(DATASET) // 2}-"


def test_download_resumes_a_part_file_left_by_an_earlier_run(serve, tmp_path):
    server = serve()
    (tmp_path / "ChestXRay2017.zip.part").write_bytes(DATASET[:1000])
    result = download_dataset(server.url, SHA, tmp_path, retries=0, progress=False)
    assert result.archive.read_bytes() == DATASET and server.ranges == ["bytes=1000-"]


def test_download_restarts_when_the_server_ignores_the_range(serve, tmp_path):
    server = serve(honour_range=False)
    (tmp_path / "ChestXRay2017.zip.part").write_bytes(b"garbage" * 100)
    result = download_dataset(server.url, SHA, tmp_path, retries=0, progress=False)
    assert result.archive.read_bytes() == DATASET


def test_download_that_keeps_breaking_is_an_error_that_says_how_to_resume(serve, tmp_path):
    server = serve(broken=5)
    with pytest.raises(DatasetError, match=r"download failed after 2 attempts.*run the command again to resume"):
        download_dataset(server.url, SHA, tmp_path, retries=1, progress=False)
    assert (tmp_path / "ChestXRay2017.zip.part").stat().st_size > 0


def test_wrong_checksum_is_a_clear_error_and_nothing_is_extracted(serve, tmp_path):
    server = serve()
    with pytest.raises(DatasetError, match=f"checksum mismatch: got sha256 {SHA}, expected 0+"):
        download_dataset(server.url, "0" * 64, tmp_path, progress=False)
    assert not (tmp_path / "ChestXRay2017").exists() and not (tmp_path / "ChestXRay2017.zip").exists()


def test_archive_with_a_path_leaving_the_folder_is_refused(serve, tmp_path):
    evil = _archive({"chest_xray/train/NORMAL/a.png": _png(1), "../../escaped.txt": b"owned"})
    server = serve(evil)
    with pytest.raises(DatasetError, match="zip-slip"):
        download_dataset(server.url, None, tmp_path / "d", progress=False)
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path / "d" / "ChestXRay2017").exists()


def test_cli_download_prints_the_folder_and_exits_2_on_a_bad_checksum(serve, tmp_path, capsys):
    server = serve()
    assert main(["data", "download", "--url", server.url, "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "ChestXRay2017") in out and f"--sha256 {SHA}" in out
    assert main(["data", "download", "--url", server.url, "--dest", str(tmp_path / "x"), "--sha256", "ab" * 32]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err
