"""pyxapi: a XenAPI-compatible virtualization toolstack."""

__version__ = "0.1.0"
