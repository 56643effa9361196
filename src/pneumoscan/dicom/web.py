"""``pneumoscan dicom pull``: find chest radiographs on a DICOMweb server, score them, store the results.

QIDO-RS finds the studies (one by UID, or all since a date) and their CR/DX series, WADO-RS fetches the
instances, and with ``store`` STOW-RS sends each study's SRs (and overlays) back in one request.
"""

from __future__ import annotations

import datetime as dt
import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pneumoscan.dicom.bounded_http import PullLimits
from pneumoscan.dicom.instances import is_valid_uid, shown_uid
from pneumoscan.dicom.limits import bounded_dicomweb_client
from pneumoscan.dicom.processing import Outcome, Processor
from pneumoscan.errors import ConfigError, DicomNetworkError, ImageReadError, reason
from pneumoscan.inference.scope import RADIOGRAPH_MODALITIES as MODALITIES

log = logging.getLogger("pneumoscan.dicom")

_STUDY_UID, _SERIES_UID, _MODALITY = "0020000D", "0020000E", "00080060"


@dataclass
class PullResult:
    """What a pull did: one outcome per instance fetched, the studies and series left out, the objects
    stored, the HTTP requests sent."""

    outcomes: list[Outcome] = field(default_factory=list)
    skipped_studies: list[tuple[str, str]] = field(default_factory=list)  # (study UID as shown, reason)
    skipped_series: list[tuple[str, str]] = field(default_factory=list)  # (series UID as shown, reason)
    stored: int = 0
    requests: int = 0


def parse_since(text: str) -> str:
    """``2026-11-01`` or ``20261101`` -> the DICOM date ``20261101``; :class:`ConfigError` otherwise."""
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text.strip(), form).strftime("%Y%m%d")
        except ValueError:
            continue
    raise ConfigError(f"--since {text!r}: expected a date as YYYY-MM-DD, e.g. 2026-11-01")


def pull(processor: Processor, url: str, *, study: str | None = None, since: str | None = None,
         store: bool = False, limits: PullLimits | None = None) -> PullResult:
    """Score the CR/DX instances of ``study`` (or of every study since ``since``) found at ``url``.

    With ``store``, the derived objects of each study are sent back with STOW-RS. Every answer is read
    under ``limits`` (sizes, pages, timeouts and a deadline for the whole pull). A study or series whose
    UID the server gives wrong is skipped and listed. Raises :class:`DicomNetworkError` when the server
    cannot be reached, refuses a request or breaks a limit, and :class:`~pneumoscan.errors.ImageReadError`
    for an instance past the bounds of the DICOM reader (:func:`~pneumoscan.dicom.limits.bounded_dicomweb_client`);
    what was scored before stays on disk.
    """
    from pneumoscan.dicom.bounded_http import BoundedSession, Deadline
    from pneumoscan.dicom.logs import guard_library_logs

    if (study is None) == (since is None):
        raise ConfigError("give either --study UID or --since DATE")
    if study is not None and not is_valid_uid(study):
        raise ConfigError(f"--study {shown_uid(study)}: not a UID (digits and dots, at most 64 characters)")
    guard_library_logs()
    limits = limits or PullLimits()
    session = BoundedSession(limits, Deadline(limits.deadline))
    client = bounded_dicomweb_client(url.rstrip("/"), session=session)
    client.set_http_retry_params(retry=False)  # its retries wait up to half a minute, past any deadline
    search = _Search(url, limits)
    result = PullResult()
    if study is not None:
        studies = [study]
    else:
        filters = {"StudyDate": f"{parse_since(since)}-"}
        found = search.all("QIDO-RS search for studies", _STUDY_UID, lambda offset, limit: client.search_for_studies(
            search_filters=filters, offset=offset, limit=limit))
        studies = [uid for uid in found if _usable(uid, "study", result.skipped_studies)]
    log.info("%s: %d stud%s to look at", url, len(studies), "y" if len(studies) == 1 else "ies")
    fetched = 0
    try:
        for study_uid in studies:
            derived = []
            series = search.all(f"QIDO-RS series of study {study_uid}", _SERIES_UID,
                                lambda offset, limit, s=study_uid: client.search_for_series(s, offset=offset, limit=limit),
                                keep=_MODALITY)
            for series_uid, modality in series:
                if not _usable(series_uid, "series", result.skipped_series):
                    continue
                if modality not in MODALITIES:
                    why = f"modality {modality or 'missing'}, not {' or '.join(MODALITIES)}"
                    result.skipped_series.append((series_uid, why))
                    log.info("skipped series %s: %s", series_uid, why)
                    continue
                what = f"WADO-RS series {series_uid}"
                for ds in _guarded(client.iter_series(study_uid, series_uid), url, what):
                    fetched += 1
                    if fetched > limits.max_instances:
                        raise DicomNetworkError(f"{url}: {what}: stopped at the limit of {limits.max_instances:,} "
                                                "instances per pull; pull fewer studies (--study or a later --since)")
                    outcome = processor.process(ds, origin=url)
                    result.outcomes.append(outcome)
                    derived += outcome.derived
            if store and derived:
                with _network(url, f"STOW-RS of {len(derived)} result(s) for study {study_uid}"):
                    client.store_instances(derived, study_instance_uid=study_uid)
                result.stored += len(derived)
                log.info("stored %d result(s) for study %s", len(derived), study_uid)
    finally:
        result.requests = session.requests_sent
        processor.worklist.finish()
    return result


def _usable(uid: str, what: str, skipped: list[tuple[str, str]]) -> bool:
    """Whether ``uid`` (from the server) is a UID; if not, it is listed as skipped with the reason."""
    if is_valid_uid(uid):
        return True
    why = f"the server gave the {what} an invalid UID; skipped"
    skipped.append((shown_uid(uid), why))
    log.warning("%s %s: %s", what, shown_uid(uid), why)
    return False


class _Search:
    """QIDO-RS searches paged by the client (``offset``, ``limit``), bounded in pages and results; a
    page that adds no new UID (a server ignoring ``offset``) ends the search."""

    def __init__(self, url: str, limits: PullLimits) -> None:
        self.url, self.limits = url, limits

    def all(self, what: str, tag: str, fetch, keep: str | None = None) -> list:
        """The UIDs (``tag``) found, in order, without repeats; with ``keep``, (UID, value) pairs."""
        found: dict[str, str] = {}
        for page_number in range(self.limits.max_pages + 1):
            if page_number == self.limits.max_pages:
                raise DicomNetworkError(f"{self.url}: {what}: more than {self.limits.max_pages} pages of results; "
                                        "stopped (narrow the search: --study or a later --since)")
            with _network(self.url, what):
                page = fetch(len(found), self.limits.page_size)
            if not isinstance(page, list):
                raise DicomNetworkError(f"{self.url}: {what}: the answer is not a JSON array")
            before = len(found)
            for item in page:
                found.setdefault(_value(item, tag), _value(item, keep) if keep else "")
            if len(found) > self.limits.max_results:
                raise DicomNetworkError(f"{self.url}: {what}: more than {self.limits.max_results:,} results; "
                                        "stopped (narrow the search: --study or a later --since)")
            if len(found) == before:
                break
        return list(found.items()) if keep else list(found)


def _value(item: object, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") if isinstance(item, dict) and isinstance(item.get(tag), dict) else None
    return str(values[0]) if isinstance(values, list) and values else ""


def _guarded(items: Iterator, url: str, what: str) -> Iterator:
    """``items``, each one read under :func:`_network` (the processing of an item is not)."""
    while True:
        with _network(url, what):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


@contextmanager
def _network(url: str, what: str) -> Iterator[None]:
    """Turn the HTTP client's errors, a broken limit and a malformed answer into one line naming the
    server and the request."""
    import requests
    from pydicom.errors import InvalidDicomError

    from pneumoscan.dicom.bounded_http import PullLimitExceeded

    try:
        yield
    except PullLimitExceeded as exc:
        raise DicomNetworkError(f"{url}: {what}: {exc}") from None
    except ImageReadError:
        raise  # an instance past the DICOM reader's bounds: its message names the server already
    except requests.JSONDecodeError:
        raise DicomNetworkError(f"{url}: {what}: the answer is not valid JSON") from None
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise DicomNetworkError(f"{url}: {what} failed with HTTP {status}") from None
    except requests.RequestException as exc:
        raise DicomNetworkError(f"{url}: {what}: cannot reach the server ({reason(exc)})") from None
    except (ValueError, EOFError, KeyError, struct.error, InvalidDicomError) as exc:
        # dicomweb-client's multipart decoding and pydicom's reading of each part
        raise DicomNetworkError(f"{url}: {what}: the server sent a malformed answer ({reason(exc)})") from None
