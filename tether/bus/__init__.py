"""The bus wakes things up and carries live deltas. State is the truth; the bus only signals."""

from tether.bus.base import Bus, Committed, Delta, EndWatch, Item, Received, Subscription
from tether.bus.local import LocalBus

__all__ = [
    "Bus",
    "Committed",
    "Delta",
    "EndWatch",
    "Item",
    "LocalBus",
    "Received",
    "Subscription",
]
