"""Compatibility surfaces: other vendors' session APIs over Tether's own use cases.

Each surface is a router under its own prefix. None keeps state of its own: every session,
turn, stop and interrupt is Tether's, so what one surface creates the others (and /v1) see.
"""
