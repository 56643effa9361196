"""The project's own errors. The CLI prints their message on one line and exits with code 2.

Every message names the file (or option) and the problem, and where it can, the fix.
"""


class PneumoscanError(Exception):
    """Base class: a problem with the user's input, not a bug in pneumoscan."""


class DatasetError(PneumoscanError, ValueError):
    """The data on disk is not what the command needs; the message says which file and why."""


class ImageReadError(PneumoscanError, ValueError):
    """One image could not be decoded; the message names the file and the reason."""


class ModelFileError(PneumoscanError, ValueError):
    """A model file is missing, of another architecture, or not one of ours (never unpickled)."""


class ConfigError(PneumoscanError, ValueError):
    """An option or a config file is invalid."""


class OutputError(PneumoscanError, OSError):
    """An output folder cannot be written (read-only, full disk)."""


def reason(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), short enough for a one-line error."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


class DicomNetworkError(PneumoscanError, OSError):
    """A DICOM or DICOMweb peer cannot be reached or refused a request; the message names it."""
