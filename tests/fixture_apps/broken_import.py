"""A module that fails while being imported."""

raise RuntimeError("kaboom at import time")
