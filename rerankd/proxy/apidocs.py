"""The API reference pages (``/docs``, ``/docs/swagger``), served with no network.

Litestar's render plugins load their JavaScript from a CDN by default, unpinned, so the page is
blank on an air-gapped host. Here Swagger UI's assets come from the ``swagger-ui-py`` package
(pinned in ``pyproject.toml``, so the UI's version changes only with it) and are served by rerankd
under ``/docs/assets/``, which is open like the rest of ``/docs``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

from rerankd.proxy.paths import DOCS

__all__ = ["ASSETS_PATH", "assets_router", "swagger_plugin"]

ASSETS_PATH = DOCS + "/assets"


def _assets_dir() -> Path:
    # The package's folder without importing it: its __init__ imports a templating stack this
    # server never uses.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing: reinstall rerankd")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def assets_router() -> Router:
    return create_static_files_router(
        path=ASSETS_PATH, directories=[_assets_dir()], include_in_schema=False, name="docs-assets"
    )


def swagger_plugin() -> SwaggerRenderPlugin:
    """Swagger UI at ``/docs`` and ``/docs/swagger``, every asset from rerankd itself."""
    return SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
        path=["/", "/swagger"],
    )
