"""The package's exceptions: one base class for every problem a user can fix.

Each message names the problem and the fix, so the command line prints it as it is (one line,
no traceback) and a notebook shows the same words. Each class also derives from the built-in
exception code would have caught before it existed (ValueError, RuntimeError, ...), so
`except ValueError` around a call keeps working.
"""

from __future__ import annotations


class InceptionError(Exception):
    """A problem the user can fix (bad setting, bad file, missing data); the message says how."""


class ConfigError(InceptionError, ValueError):
    """A setting, an argument or a combination of them is invalid (caught before any work)."""


class DatasetError(InceptionError, RuntimeError):
    """The dataset is missing, corrupt, unsafe or unreachable; the message names the file."""


class CheckpointError(InceptionError, ValueError):
    """A checkpoint is unreadable, not one of ours, or for a different model or run."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was asked for; the message lists any kept-aside ones nearby."""


class WeightsError(InceptionError, ValueError):
    """A weight file is damaged, unreadable or not the network's; the message names the file."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Downloadable weights are not on disk and could not be fetched; the message gives the URL
    to download and the exact path to put the file at."""


class ModelInputError(InceptionError, ValueError):
    """A tensor given to the model has the wrong shape, dtype or size for the network."""


class TrainingError(InceptionError, RuntimeError):
    """Training cannot go on (for example the loss became NaN); the last good checkpoint is kept."""


class DistributedError(InceptionError, RuntimeError):
    """Data-parallel training lost a rank: it crashed, hung or was stopped; the message says so."""


def first_line(err: BaseException, *, typed: bool = True, limit: int | None = None) -> str:
    """The first line of an exception's message (at most `limit` characters), for quoting it
    inside one of ours; prefixed with its type when `typed`, and the type alone when empty."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    line = lines[0][:limit]
    return f"{type(err).__name__}: {line}" if typed else line

