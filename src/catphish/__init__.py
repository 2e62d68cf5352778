"""catphish: privacy-preserving multi-site brain-tumour MRI learning (CATphishing and its baselines)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("catphish")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
