"""Compatibility surfaces: other vendors' APIs over Tether's own sessions, turns and stops."""
