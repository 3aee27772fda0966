"""User-facing error types.

The CLI maps :class:`BadInput` to exit code 2 and :class:`RuntimeFailure` to
exit code 1. Library code raises these with one sentence that names the file,
key or line at fault, so the message can be shown to the user unchanged.
"""

from __future__ import annotations


class ReleaseGateError(Exception):
    """Base class of every error the CLI reports as one line."""

    exit_code = 1


class BadInput(ReleaseGateError):
    """A config, adapter, calibration file or policy the user gave is unusable."""

    exit_code = 2


class CalibrationMissing(BadInput):
    """A policy needs calibration data and none was given (each front end says how to give it)."""


class RuntimeFailure(ReleaseGateError):
    """Something failed while running on good input (engine death, I/O)."""

    exit_code = 1
