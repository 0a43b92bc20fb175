"""DEL server: de-projects private prompt frames, adds the soft prompt, runs the frozen LLM."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("del-inference")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
