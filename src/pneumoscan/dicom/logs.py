"""What the DICOM libraries log about a peer's data reaches the log escaped, and their chatter stays out.

pynetdicom and highdicom put a sender's UIDs and names in their log lines as they are: a newline in a
UID would forge a second line. A filter on their loggers escapes every message that is not printable;
highdicom's INFO lines (one "copy attributes of module ..." per module of every result) are left out.
"""

from __future__ import annotations

import logging

from pneumoscan.dicom.instances import printable

LIBRARIES = ("pynetdicom", "highdicom", "pydicom", "dicomweb_client")


class EscapeFilter(logging.Filter):
    """Makes a record's message printable: control characters (a newline, NUL, an ANSI escape) escaped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.isprintable():
            record.msg, record.args = printable(message), None
        return True


_FILTER = EscapeFilter()


def guard_library_logs() -> None:
    """Put :class:`EscapeFilter` on the DICOM libraries' loggers (all of them, children included: a
    logger's filters do not apply to its children's records) and quiet highdicom's INFO.
    Calling it again adds nothing twice."""
    import highdicom  # noqa: F401 - imported first, so that their loggers exist
    import pynetdicom  # noqa: F401

    logging.getLogger("highdicom").setLevel(logging.WARNING)
    names = [n for n in list(logging.root.manager.loggerDict)
             if n.split(".")[0] in LIBRARIES] + list(LIBRARIES) + ["pneumoscan.dicom"]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
