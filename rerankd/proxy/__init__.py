"""The HTTP face of rerankd: app factory, routes, API schemas, errors."""

from rerankd.proxy.app import create_app

__all__ = ["create_app"]
