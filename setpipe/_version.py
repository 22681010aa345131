"""setpipe's version, in a leaf module so any layer can name it without importing the package."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("setpipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
