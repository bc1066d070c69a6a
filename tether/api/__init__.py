"""The HTTP edge: the ASGI app factory, routes, wire schemas, error mapping."""

from tether.api.app import create_app

__all__ = ["create_app"]
