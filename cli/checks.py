"""Friendly failures shared by the `xhub` commands: argument types, --version, warnings."""

from __future__ import annotations

import argparse
import sys

from xhub.hub.core.config import unknown_env_warnings
from xhub.protocol import package_version

MAX_CERTIFICATE_DAYS = 3650  # the hub's own certificates last ten years; a member's no longer


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"{parser.prog} {package_version()}")


def certificate_days(text: str) -> int:
    """argparse type for ``--days``: 1 … MAX_CERTIFICATE_DAYS."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= days <= MAX_CERTIFICATE_DAYS:
        raise argparse.ArgumentTypeError(
            f"{days} is out of range: a certificate is valid 1 to {MAX_CERTIFICATE_DAYS} days"
        )
    return days


def warn_unknown_environment() -> None:
    """One stderr line per misspelled or unknown XHUB_* variable."""
    for warning in unknown_env_warnings():
        print(f"warning: {warning}", file=sys.stderr)
