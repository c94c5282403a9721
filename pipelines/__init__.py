"""The Beam pipelines and the `imgindex` command line: the only package that imports apache_beam."""

from importlib.metadata import PackageNotFoundError, version

UNKNOWN_VERSION = "0+unknown"


def imgindex_version() -> str:
    """The installed imgindex version, or UNKNOWN_VERSION when run from an uninstalled tree."""
    try:
        return version("imgindex")
    except PackageNotFoundError:
        return UNKNOWN_VERSION
