"""The xhub kernel: codes, envelopes, signing, bundles, the audit log's formats."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed xhub distribution's version (``xhub --version``)."""
    try:
        return version("xhub")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"
