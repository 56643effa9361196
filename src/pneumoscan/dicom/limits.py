"""What one DICOM peer may cost the node: PDU and data set sizes, time per PDU, associations; and what an
instance fetched by ``dicom pull`` may cost before it is parsed.

pynetdicom reads a PDU whole, whatever length its header says, waits as long as bytes trickle in, and
keeps a data set's fragments until the last one. Here every PDU is read under a deadline and a size
limit, the data set bytes of each message are counted as they arrive, and a peer gets a bounded number
of associations: a sender that breaks a limit gets an A-ABORT and its connection is closed, before the
node has held more than the limit.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger("pneumoscan.dicom")

_A_ASSOCIATE_RQ, _P_DATA_TF = 0x01, 0x04
# An A-ASSOCIATE-RQ with a hundred presentation contexts is tens of kB; no other PDU comes near that.
_MAX_OTHER_PDU_BYTES = 256 * 1024
_INVALID_PDU_PARAMETER = 6  # A-ABORT reason (PS3.8 9.3.8): invalid PDU parameter value
_NOT_SPECIFIED = 0


@dataclass(frozen=True)
class Limits:
    """The node's resource limits (the defaults keep 16 associations well under 1 GB)."""

    max_pdu_bytes: int = 64 * 1024  # Maximum Length Received, advertised; a larger P-DATA PDU aborts
    max_dataset_bytes: int = 64 * 1024 * 1024  # a 4,300 px square 16-bit radiograph is 37 MB
    pdu_timeout: float = 10.0  # a PDU, once begun, must arrive whole within this (and an A-ASSOCIATE-RQ)
    idle_timeout: float = 60.0  # an association with nothing to say is aborted after this
    max_associations: int = 16
    max_associations_per_peer: int = 8

    def __post_init__(self) -> None:
        from pneumoscan.errors import ConfigError

        if self.max_pdu_bytes < 4096 or self.max_dataset_bytes < 1024 or self.pdu_timeout <= 0 \
                or self.idle_timeout <= 0 or self.max_associations < 1 or self.max_associations_per_peer < 1:
            raise ConfigError(f"DICOM node limits out of range ({self}); PDU >= 4 KiB, data set >= 1 KiB, "
                              "timeouts > 0, at least one association")


class LimitExceeded(OSError):
    """A peer broke a limit; pynetdicom's reader takes an OSError as the connection closing."""


class PduGuard:
    """Replaces an association socket's ``recv``: pynetdicom reads each PDU as a 6-byte header, then its
    body; both must arrive within ``pdu_timeout`` from the header's first byte, the body within the size
    limits, and the data set fragments of one message within ``max_dataset_bytes``."""

    def __init__(self, assoc_socket, limits: Limits, peer: str) -> None:
        self.assoc_socket, self.limits, self.peer = assoc_socket, limits, peer
        self._header_next = True
        self._pdu_type = 0
        self._deadline = 0.0
        self._dataset_bytes = 0
        self.largest_dataset = 0  # the most data set bytes one message reached here (for the tests)

    def recv(self, count: int) -> bytearray:
        if self._header_next:
            self._deadline = time.monotonic() + self.limits.pdu_timeout
            data = self._read(count)
            if len(data) == 6:
                self._pdu_type, _, length = struct.unpack(">BBL", data)
                self._check_length(length)
                self._header_next = False
            return data
        data = self._read(count)
        self._header_next = True
        if self._pdu_type == _P_DATA_TF and len(data) == count:
            self._count_dataset(data)
        return data

    def _check_length(self, length: int) -> None:
        limit = self.limits.max_pdu_bytes if self._pdu_type == _P_DATA_TF else _MAX_OTHER_PDU_BYTES
        if length > limit:
            self._refuse(f"a PDU of {length:,} bytes, over the limit of {limit:,}", _INVALID_PDU_PARAMETER)

    def _count_dataset(self, body: bytes) -> None:
        offset = 0
        while offset + 6 <= len(body):  # PDV items: length (4), context ID (1), control header (1), data
            (length,) = struct.unpack_from(">L", body, offset)
            control = body[offset + 5]
            if not control & 0x01:  # a data set fragment, not a command
                self._dataset_bytes += max(length - 2, 0)
                self.largest_dataset = max(self.largest_dataset, self._dataset_bytes)
                if self._dataset_bytes > self.limits.max_dataset_bytes:
                    self._refuse(f"a data set over the limit of {self.limits.max_dataset_bytes:,} bytes",
                                 _NOT_SPECIFIED)
                if control & 0x02:  # its last fragment: the next message starts from nothing
                    self._dataset_bytes = 0
            offset += 4 + length

    def _read(self, count: int) -> bytearray:
        raw: socket.socket = self.assoc_socket.socket
        data = bytearray()
        previous = raw.gettimeout()
        try:
            while len(data) < count:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self._refuse(f"a PDU not complete after {self.limits.pdu_timeout:g} s "
                                 f"({len(data):,} of {count:,} bytes)", _NOT_SPECIFIED)
                raw.settimeout(left)
                try:
                    chunk = raw.recv(min(count - len(data), 65536))
                except TimeoutError:
                    continue
                if not chunk:
                    break  # closed by the peer: pynetdicom sees the short read
                data += chunk
        finally:
            if raw.fileno() != -1:
                raw.settimeout(previous)
        return data

    def _refuse(self, what: str, reason: int) -> None:
        log.warning("aborted the association with %s: %s", self.peer, what)
        with contextlib.suppress(OSError):  # A-ABORT, source: service provider (2)
            self.assoc_socket.socket.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 2, reason))
        raise LimitExceeded(f"{self.peer}: {what}")


# Peeked at most: a whole A-ASSOCIATE-RQ of usual size (tens of contexts); a larger one is read by the
# association under the PduGuard. Peeking does not empty the socket's buffer, which limits what can wait there.
_PEEKED_REQUEST_BYTES = 32 * 1024


def request_arrived(connection: socket.socket, limits: Limits, peer: str) -> bool:
    """Whether an A-ASSOCIATE-RQ (or any other first PDU) has arrived on ``connection`` within
    ``pdu_timeout``, left unread for pynetdicom.

    pynetdicom starts an association thread per connection and counts it against the AE's maximum
    associations before any byte arrives: connections that never send their request (half-open) would
    hold every slot and lock every other peer out. Here a connection becomes an association only once
    its request is there; until then it is a thread of its own, bounded per address by
    ``max_associations_per_peer``."""
    deadline = time.monotonic() + limits.pdu_timeout
    need = 6
    previous = connection.gettimeout()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            connection.settimeout(left)
            data = connection.recv(need, socket.MSG_PEEK)
            if not data:
                return False  # closed before a request: nothing to answer
            if need == 6 and len(data) == 6:
                pdu_type, _, length = struct.unpack(">BBL", data)
                if pdu_type != _A_ASSOCIATE_RQ or length > _MAX_OTHER_PDU_BYTES:
                    return True  # the association answers it (a reject or an A-ABORT from the PduGuard)
                need = 6 + min(length, _PEEKED_REQUEST_BYTES)
            if len(data) >= need:
                return True
            time.sleep(0.02)  # part of it is here: a peek would return at once, so wait for the rest
    except TimeoutError:
        pass
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            connection.settimeout(previous)
    log.warning("closed the connection from %s: no association request within %g s", peer, limits.pdu_timeout)
    return False


def bounded_server_class(limits: Limits):
    """A pynetdicom server that admits at most ``max_associations_per_peer`` connections per peer
    address and guards each association's socket with a :class:`PduGuard`."""
    from pynetdicom import evt
    from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

    class BoundedHandler(RequestHandler):
        def handle(self) -> None:
            peer = f"{self.client_address[0]}:{self.client_address[1]}"
            if not request_arrived(self.request, limits, peer):
                return
            assoc = self._create_association()
            assoc.dul.socket.recv = PduGuard(assoc.dul.socket, limits, peer).recv
            assoc.acse_timeout = limits.pdu_timeout  # ARTIM: the A-ASSOCIATE-RQ must come this soon
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()  # the peer's count holds until its association ends

    class BoundedServer(ThreadedAssociationServer):
        daemon_threads = True  # stopping the node must not wait for the peers' associations
        block_on_close = False

        def __init__(self, *args, **kwargs) -> None:
            kwargs["request_handler"] = BoundedHandler
            super().__init__(*args, **kwargs)
            self._peers: Counter[str] = Counter()
            self._peers_lock = threading.Lock()

        def process_request(self, request, client_address) -> None:
            host = str(client_address[0])
            with self._peers_lock:
                busy = self._peers[host] >= limits.max_associations_per_peer
                if not busy:
                    self._peers[host] += 1
            if busy:
                log.warning("refused a connection from %s: it already has %d association(s), the limit per peer",
                            host, limits.max_associations_per_peer)
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                with self._peers_lock:
                    self._peers[str(client_address[0])] -= 1

    return BoundedServer


def bounded_dicomweb_client(url: str, session):
    """A ``DICOMwebClient`` for ``url`` that checks each instance it retrieves (elements and sequence items
    counted, a deflated one inflated no further than its pixels need) before it parses it with pydicom, as
    it parses every part it receives: an instance past the bounds raises
    :class:`~pneumoscan.errors.ImageReadError` naming the server."""
    from dicomweb_client.api import DICOMwebClient

    from pneumoscan.data.dicom_image import check_dicom_bytes, is_dicom

    class BoundedClient(DICOMwebClient):
        # Every multipart part goes through here before the client's pydicom.dcmread.
        def _decode_multipart_message(self, response, stream):
            for part in super()._decode_multipart_message(response, stream):
                if is_dicom(part):
                    check_dicom_bytes(bytes(part), f"{url}: an instance")
                yield part

    return BoundedClient(url, session=session)
