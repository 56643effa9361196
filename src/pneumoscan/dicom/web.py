"""``pneumoscan dicom pull``: find chest radiographs on a DICOMweb server, score them, store the results.

QIDO-RS finds the studies (one by UID, or all since a date) and their CR/DX series, WADO-RS fetches the
instances, and with ``store`` STOW-RS sends each study's SRs (and overlays) back in one request.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pneumoscan.dicom.limits import bounded_dicomweb_client
from pneumoscan.dicom.processing import Outcome, Processor
from pneumoscan.errors import ConfigError, DicomNetworkError, reason
from pneumoscan.inference.scope import RADIOGRAPH_MODALITIES as MODALITIES

log = logging.getLogger("pneumoscan.dicom")

_STUDY_UID, _SERIES_UID, _MODALITY = "0020000D", "0020000E", "00080060"


@dataclass
class PullResult:
    """What a pull did: one outcome per instance fetched, the series left out, the objects stored."""

    outcomes: list[Outcome] = field(default_factory=list)
    skipped_series: list[tuple[str, str]] = field(default_factory=list)  # (series UID, reason)
    stored: int = 0


def parse_since(text: str) -> str:
    """``2026-11-01`` or ``20261101`` -> the DICOM date ``20261101``; :class:`ConfigError` otherwise."""
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text.strip(), form).strftime("%Y%m%d")
        except ValueError:
            continue
    raise ConfigError(f"--since {text!r}: expected a date as YYYY-MM-DD, e.g. 2026-11-01")


def pull(processor: Processor, url: str, *, study: str | None = None, since: str | None = None,
         store: bool = False, timeout: float = 60.0) -> PullResult:
    """Score the CR/DX instances of ``study`` (or of every study since ``since``) found at ``url``.

    With ``store``, the derived objects of each study are sent back with STOW-RS. Raises
    :class:`DicomNetworkError` when the server cannot be reached or refuses a request, and
    :class:`~pneumoscan.errors.ImageReadError` for an instance past the bounds of the DICOM reader
    (:func:`~pneumoscan.dicom.limits.bounded_dicomweb_client`).
    """
    if (study is None) == (since is None):
        raise ConfigError("give either --study UID or --since DATE")
    client = bounded_dicomweb_client(url.rstrip("/"), timeout=timeout)
    result = PullResult()
    with _network(url, "QIDO-RS search"):
        if study is not None:
            studies = [study]
        else:
            found = client.search_for_studies(search_filters={"StudyDate": f"{parse_since(since)}-"},
                                              get_remaining=True)
            studies = [_value(s, _STUDY_UID) for s in found]
    log.info("%s: %d stud%s to look at", url, len(studies), "y" if len(studies) == 1 else "ies")
    for study_uid in studies:
        derived = []
        with _network(url, f"QIDO-RS series of study {study_uid}"):
            series = client.search_for_series(study_uid, get_remaining=True)
        for item in series:
            series_uid, modality = _value(item, _SERIES_UID), _value(item, _MODALITY)
            if modality not in MODALITIES:
                why = f"modality {modality or 'missing'}, not {' or '.join(MODALITIES)}"
                result.skipped_series.append((series_uid, why))
                log.info("skipped series %s: %s", series_uid, why)
                continue
            with _network(url, f"WADO-RS series {series_uid}"):
                datasets = client.retrieve_series(study_uid, series_uid)
            for ds in datasets:
                outcome = processor.process(ds, origin=url)
                result.outcomes.append(outcome)
                derived += outcome.derived
        if store and derived:
            with _network(url, f"STOW-RS of {len(derived)} result(s) for study {study_uid}"):
                client.store_instances(derived, study_instance_uid=study_uid)
            result.stored += len(derived)
            log.info("stored %d result(s) for study %s", len(derived), study_uid)
    return result


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


@contextmanager
def _network(url: str, what: str) -> Iterator[None]:
    """Turn the HTTP client's errors into one line naming the server and the request."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise DicomNetworkError(f"{url}: {what} failed with HTTP {status}") from None
    except requests.RequestException as exc:
        raise DicomNetworkError(f"{url}: {what}: cannot reach the server ({reason(exc)})") from None
