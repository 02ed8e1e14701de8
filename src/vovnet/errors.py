"""Errors a user can cause. The CLI prints them as one line; Python users can catch them."""


class VoVNetError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""

    exit_code = 1


class UsageError(VoVNetError, ValueError):
    """A wrong name or argument (CLI exit status 2)."""

    exit_code = 2


class UnknownModelError(UsageError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CheckpointError(VoVNetError):
    """A file that is not a usable checkpoint: unreadable, truncated, or with the wrong keys."""


class DataError(VoVNetError):
    """Data that cannot be used: missing, empty, a single class, unreadable files under --strict."""


class TrainingError(VoVNetError):
    """A run that cannot go on: a non-finite loss, an output folder that cannot be written, a refused resume."""


class DownloadError(VoVNetError):
    """Pretrained weights that cannot be had: offline, refused, truncated or failing their checksum."""
