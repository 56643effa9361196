"""A throw-away Orthanc (a real open-source PACS) on 127.0.0.1, for the DICOM tests and bench/bench_dicom.py.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide the server and its DICOMweb plugin; the
server gets a temporary JSON configuration and storage, free ports, and is stopped (and its files
removed with the temporary folder) at the end.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


def missing() -> str | None:
    """Why Orthanc cannot run here (the reason for a skip), or None."""
    if not (ORTHANC.is_file() or shutil.which("Orthanc")):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.is_file():
        return "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """``with Orthanc(folder, modalities={"pneumoscan": ("PNEUMOSCAN", port)}) as pacs: pacs.rest(...)``."""

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, int]] | None = None,
                 start_timeout: float = 90.0) -> None:
        self.folder = Path(folder)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.modalities = modalities or {}
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def start(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "pneumoscan-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AE_TITLE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomScuTimeout": 30,
            "ConcurrentJobs": 4,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{self.http_port}"},
            "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in self.modalities.items()},
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        self.log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - open for the server's lifetime
        executable = str(ORTHANC) if ORTHANC.is_file() else shutil.which("Orthanc")
        self.process = subprocess.Popen([executable, str(path)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.process.returncode}: {self.tail()}")
            try:
                if self.client.get("/system").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {self.start_timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        try:
            return (self.folder / "orthanc.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        self.client.close()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # REST helpers
    def upload(self, data: bytes) -> str:
        """Store one DICOM file; returns Orthanc's instance id."""
        response = self.client.post("/instances", content=data)
        response.raise_for_status()
        return response.json()["ID"]

    def send_to(self, modality: str, resources: list[str], timeout: float = 120.0) -> dict:
        """C-STORE ``resources`` (Orthanc ids) to a configured modality; waits for the job to finish."""
        response = self.client.post(f"/modalities/{modality}/store",
                                    json={"Resources": resources, "Synchronous": True, "Timeout": int(timeout)},
                                    timeout=timeout)
        response.raise_for_status()
        return response.json()

    def instances_of_modality(self, modality: str) -> list[str]:
        response = self.client.post("/tools/find", json={"Level": "Instance", "Query": {"Modality": modality}})
        response.raise_for_status()
        return response.json()

    def file(self, instance: str) -> bytes:
        response = self.client.get(f"/instances/{instance}/file")
        response.raise_for_status()
        return response.content

    def wait_for(self, modality: str, count: int, timeout: float = 60.0) -> list[str]:
        """Poll until at least ``count`` instances of ``modality`` are stored, or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        found = self.instances_of_modality(modality)
        while len(found) < count and time.monotonic() < deadline:
            time.sleep(0.1)
            found = self.instances_of_modality(modality)
        return found
