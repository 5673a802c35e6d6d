"""The hub (交换平台): `server.py` wires the features of this package over `core/`; see
ARCHITECTURE.md.
"""
