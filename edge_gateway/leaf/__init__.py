"""The leaf aggregator: answers devices (via the proxy's link) and feeds partial sums upward."""

from .service import Leaf

__all__ = ["Leaf"]
