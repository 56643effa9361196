"""``pneumoscan dicom listen``: a DICOM Storage SCP that scores chest radiographs as they arrive.

A PACS (or a modality) sends instances with C-STORE; each one is answered as soon as it is safely on disk
in the spool (:mod:`pneumoscan.dicom.spool`), and scored from there in batches across every association,
so an acknowledged instance always gets its result, even after a kill. Instances that are not frontal
chest radiographs are acknowledged too (a refused C-STORE would make many PACS abort the rest of the
study) and logged with the reason. Results go back to a PACS with C-STORE, from a background thread,
when a destination is given.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pneumoscan.data.dicom_image import read_dicom_dataset
from pneumoscan.dicom.instances import CHEST_SOP_CLASSES, CHEST_TRANSFER_SYNTAXES, printable
from pneumoscan.dicom.limits import Limits, bounded_server_class
from pneumoscan.dicom.processing import Processor, now
from pneumoscan.dicom.spool import Scorer, Spool, spool_file
from pneumoscan.errors import ConfigError, ImageReadError, OutputError

log = logging.getLogger("pneumoscan.dicom")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the sender keeps the instance and may try again later
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class Peer:
    """A remote DICOM node: AE title, host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """``AET@HOST:PORT`` -> Peer; :class:`ConfigError` naming the value and the expected form."""
        match = re.fullmatch(r"([^@]{1,16})@([^:]+):(\d{1,5})", text.strip())
        if not match or not 0 < int(match[3]) < 65536:
            raise ConfigError(f"--forward {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(match[1].strip(), match[2], int(match[3]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(title: str) -> str:
    """An AE title is 1-16 printable ASCII characters, no backslash; raise :class:`ConfigError` otherwise."""
    if not (0 < len(title.strip()) <= 16) or not title.isascii() or "\\" in title or not title.isprintable():
        raise ConfigError(f"--ae-title {title!r}: use 1 to 16 ASCII letters, digits or spaces, e.g. PNEUMOSCAN")
    return title.strip()


class Forwarder:
    """Sends derived objects to a peer with C-STORE from ``associations`` background threads, each with its
    own association (a PACS stores one object at a time per association; several overlap).

    Each thread takes one instance's objects at a time from the shared queue, so that a burst of results
    is spread over every association instead of going out one after another over the first thread's.
    Each keeps its association open and releases it after ``IDLE_RELEASE_S`` seconds without work:
    opening one costs a PACS more than storing an object (measured against Orthanc: the results of a
    study sent at about 100 ms an instance when each batch opened its own). A failed send is retried
    (``retries`` times, with a growing pause, over a new association) and then logged with the file that
    holds it.
    """

    IDLE_RELEASE_S = 5.0

    def __init__(self, peer: Peer, ae_title: str, retries: int = 3, associations: int = 4) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

        self._handlers = [(evt.EVT_DATA_SENT, _acknowledge_at_once)]
        self.peer, self.retries = peer, retries
        self.ae = AE(ae_title=ae_title)
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            self.ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._queue: queue.Queue = queue.Queue()
        self.sent = 0
        self.seconds = 0.0  # spent sending, all threads together
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"pneumoscan-forward-{i}", daemon=True)
                         for i in range(associations)]
        for thread in self._threads:
            thread.start()

    def put(self, datasets, files, done: Callable[[], None] | None = None) -> None:
        """Queue one instance's ``datasets`` (kept in ``files``), sent together; ``done()`` is called once
        they are all sent or given up on."""
        self._queue.put((list(zip(datasets, files, strict=True)), done))

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued (waiting up to ``timeout`` s), then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        assoc = None  # this thread's association, kept open between batches
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.IDLE_RELEASE_S)
                except queue.Empty:
                    assoc = _released(assoc)
                    continue
                if item is None:
                    return
                assoc = self._send([item], assoc)
        finally:
            _released(assoc)

    def _send(self, batch: list, assoc=None):
        """Send ``batch`` over ``assoc`` (a new association when it is None or no longer open); returns the
        association to keep for the next batch (None after a failure)."""
        tick = time.perf_counter()
        pending = [pair for pairs, _ in batch for pair in pairs]
        for attempt in range(self.retries + 1):
            if attempt:
                assoc = _released(assoc)  # a failed send is tried again over a new association
                time.sleep(min(10.0, 0.5 * 2 ** attempt))
            pending, assoc = self._send_once(pending, assoc)
            if not pending:
                break
        for _, file in pending:
            log.error("could not send %s to %s after %d attempts; the file is kept", file, self.peer, self.retries + 1)
        with self._lock:
            self.failed += [file for _, file in pending]
            self.seconds += time.perf_counter() - tick
        for _, done in batch:  # sent, or given up on and logged: the spool may let the instance go
            if done is not None:
                done()
        return None if pending else assoc

    def _send_once(self, batch: list, assoc=None) -> tuple[list, object]:
        """(what was not stored, the association to go on with) after sending ``batch``."""
        if assoc is None or not assoc.is_established:
            assoc = _without_nagle(self.ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title,
                                                     evt_handlers=self._handlers))
        if not assoc.is_established:
            log.warning("no association with %s (refused, aborted or not reachable)", self.peer)
            return batch, None
        left = []
        for ds, file in batch:
            status = assoc.send_c_store(_as_written(ds, file))
            code = getattr(status, "Status", None)
            if code is None or (code != SUCCESS and code >> 12 != 0xB):  # 0xBxxx: stored with a warning
                left.append((ds, file))
                log.warning("%s refused %s (status %s)", self.peer, file, f"0x{code:04X}" if code is not None else "none")
            else:
                with self._lock:
                    self.sent += 1
                log.info("sent %s to %s", file, self.peer)
        return left, (assoc if assoc.is_established and not left else _released(assoc))


def _as_written(ds, file):
    """The object ``ds`` as read back from its ``file``, to send: pydicom writes the elements it read as
    they are, where it encodes an object built in memory element by element again (a 3 KB SR: 0.5 ms
    against 2-3 ms, under the interpreter lock that receiving and scoring need too); ``ds`` itself when
    the file cannot be read."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(file)
    except (OSError, ValueError, TypeError, InvalidDicomError):
        return ds


def _without_nagle(assoc):
    """``assoc`` with Nagle's algorithm off on its socket. A C-STORE request goes out as two PDUs (command,
    then data set) before its answer is read: with Nagle on, the second waits for the peer's delayed
    acknowledgement of the first (40 ms on Linux) on every object sent (pynetdicom leaves the option as is)."""
    _set_tcp_option(assoc, getattr(socket, "TCP_NODELAY", None))
    return assoc


def _acknowledge_at_once(event) -> None:
    """Turn the kernel's delayed acknowledgement off on the association's socket until the answer comes
    (``EVT_DATA_SENT``: after each PDU the association sends). A PACS built on DCMTK (Orthanc) writes its
    C-STORE answer in more than one piece with Nagle's algorithm on: its second piece waited for this side's
    acknowledgement of the first, which Linux delays by 40 ms, on every object sent. Linux resets the
    option as the connection goes on, hence after every send; other systems lack it (nothing done)."""
    _set_tcp_option(event.assoc, getattr(socket, "TCP_QUICKACK", None))


def _set_tcp_option(assoc, option: int | None) -> None:
    """Set the TCP ``option`` on ``assoc``'s socket (pynetdicom keeps it as ``assoc.dul.socket.socket``);
    nothing when the system lacks the option or the socket is gone."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if option is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)


def _released(assoc) -> None:
    """Release ``assoc`` when it is still open (an association that failed is aborted); None."""
    if assoc is not None and assoc.is_established:
        assoc.release()
    return None


class StorageNode:
    """The Storage SCP: accepts every storage class (so that nothing a PACS sends fails negotiation),
    answers each C-STORE once the instance is spooled, scores the spooled instances through ``processor``
    in batches (:class:`~pneumoscan.dicom.spool.Scorer`) and forwards the results to ``forward``.

    ``start()`` scores first what an earlier node left in the spool, and returns once the port is
    listening; ``stop()`` closes it, scores what is spooled and sends what is queued.
    ``limits`` bounds what each peer may cost (:class:`~pneumoscan.dicom.limits.Limits`).
    """

    def __init__(self, processor: Processor, port: int, ae_title: str = "PNEUMOSCAN", host: str = "127.0.0.1",
                 forward: Peer | None = None, retries: int = 3, limits: Limits | None = None) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        from pneumoscan.dicom.logs import guard_library_logs

        guard_library_logs()  # pynetdicom logs a sender's UIDs as they are
        self.processor = processor
        self.host, self.port, self.ae_title = host, port, check_ae_title(ae_title)
        self.ae = AE(ae_title=self.ae_title)
        self.limits = limits or Limits()
        self.ae.maximum_associations = self.limits.max_associations
        self.ae.maximum_pdu_size = self.limits.max_pdu_bytes
        self.ae.network_timeout = self.limits.idle_timeout
        self.ae.acse_timeout = self.limits.pdu_timeout
        # Every storage class in the default syntaxes (so that nothing a PACS sends fails negotiation), the
        # chest radiograph classes in the compressed ones too.
        self.ae.supported_contexts = [c for c in AllStoragePresentationContexts
                                      if c.abstract_syntax not in CHEST_SOP_CLASSES]
        for sop_class in CHEST_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, list(CHEST_TRANSFER_SYNTAXES))
        self.ae.add_supported_context(Verification)
        self._handlers = [(evt.EVT_C_STORE, self._on_store)]
        self.forward, self.retries = forward, retries
        self.forwarder: Forwarder | None = None
        self.spool: Spool | None = None
        self.scorer: Scorer | None = None
        self._server = None
        self.received = 0
        self._count_lock = threading.Lock()
        self._receive_seconds = 0.0

    def start(self) -> StorageNode:
        self.spool = Spool(self.processor.out)  # the folder's lock: one node per --out
        try:
            self._server = self.ae.make_server((self.host, self.port), evt_handlers=self._handlers,
                                               server_class=bounded_server_class(self.limits))
        except OSError as exc:
            self.spool.close()
            raise ConfigError(f"--port {self.port}: cannot listen on {self.host}:{self.port} ({exc.strerror or exc})") from None
        self.forwarder = Forwarder(self.forward, self.ae_title, self.retries) if self.forward else None
        self.scorer = Scorer(self.processor, self.spool, self.forwarder.put if self.forwarder else None).start()
        self.ae._servers.append(self._server)  # as start_server does: the AE shuts it down with the others
        threading.Thread(target=self._server.serve_forever, name="pneumoscan-dicom-server", daemon=True).start()
        log.info("listening as %s on %s:%d%s", self.ae_title, self.host, self.port,
                 f", results forwarded to {self.forwarder.peer}" if self.forwarder else "")
        return self

    def stop(self) -> None:
        """Stop listening, score what is spooled, send what is queued and write the worklist in its order."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self.scorer is not None:
            self.scorer.close()
        if self.forwarder is not None:
            self.forwarder.close()
        self.processor.worklist.finish()
        if self.spool is not None:
            self.spool.close()

    def timings(self) -> dict[str, float]:
        """Seconds per instance in each stage so far: receive (checks and spooling, in the association's
        thread), spool wait, decode, network, sr (SR and overlay objects made and encoded), overlay
        (Grad-CAM), write (result files and worklist rows), send (C-STORE to the destination)."""
        done = max(1, self.processor.timings["instances"])
        stages = {"receive": self._receive_seconds / max(1, self.received)}
        if self.scorer is not None:
            stages["spool wait"] = self.scorer.timings["spool wait"] / max(1, self.scorer.timings["instances"])
        for stage in ("decode", "network", "sr", "overlay", "write"):
            stages[stage] = self.processor.timings[stage] / done
        if self.forwarder is not None:
            stages["send"] = self.forwarder.seconds / done
        return stages

    def __enter__(self) -> StorageNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Start, then wait until interrupted (Ctrl-C or SIGTERM turned into KeyboardInterrupt)."""
        self.start()
        try:
            while True:
                time.sleep(3600)
        finally:
            self.stop()

    def _on_store(self, event) -> int:
        tick = time.perf_counter()
        with self._count_lock:
            self.received += 1
        calling = event.assoc.requestor.ae_title
        origin = printable(f"{calling}@{event.assoc.requestor.address}")
        try:
            data = spool_file(event.file_meta, event.encoded_dataset(include_meta=False), origin, now())
            # Not event.dataset: pydicom would parse (and inflate) whatever arrived, without bounds.
            ds = read_dicom_dataset(data, f"an instance from {origin}")
            path = self.spool.put(ds.get("SOPInstanceUID"), data)
        except ImageReadError as exc:
            log.warning("%s", printable(str(exc)))
            return PROCESSING_FAILURE
        except OutputError as exc:
            log.error("cannot keep an instance from %s: %s", origin, exc)
            return OUT_OF_RESOURCES
        except Exception:  # noqa: BLE001 - one instance must never take the association (or the node) down
            log.exception("unexpected error on an instance from %s; answered with a failure", origin)
            return PROCESSING_FAILURE
        self.scorer.put(path)
        with self._count_lock:
            self._receive_seconds += time.perf_counter() - tick
        return SUCCESS
