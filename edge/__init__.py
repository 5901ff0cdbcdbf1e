"""icu-edge daemon core."""

from importlib.metadata import PackageNotFoundError, version


def appliance_version() -> str:
    """Return the installed icu-edge version."""
    try:
        return version("icu-edge")
    except PackageNotFoundError:
        return "0+unknown"
