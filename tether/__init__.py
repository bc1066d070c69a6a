"""Tether: a self-hostable, stateful agent execution service."""

__version__ = "0.1.0"
