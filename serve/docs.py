"""API docs that work with no internet: Swagger UI (/docs) and ReDoc (/redoc) load their JS,
CSS and favicon from the fastapi-offline package's static files instead of a public CDN.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
REDOC_CONTENT_SECURITY_POLICY = "img-src 'self' data: blob:"


def offline_assets_dir() -> Path:
    """The folder of fastapi-offline's vendored Swagger UI and ReDoc builds."""
    assets = Path(str(files("fastapi_offline") / "static"))
    missing = [name for name in ASSET_FILES if not (assets / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline has no {', '.join(missing)} in {assets}: is the pinned version installed?")
    return assets


def mount_offline_docs(app: FastAPI, prefix: str = "/docs", redoc_url: str | None = "/redoc") -> None:
    """Add Swagger UI at ``prefix``, its assets under ``prefix``/assets and ReDoc at ``redoc_url``
    (None: no ReDoc). The app must be built with ``docs_url=None, redoc_url=None``."""
    if app.openapi_url is None:
        raise ValueError("the app has openapi_url=None: there is no schema for the docs to show")
    openapi_url = app.openapi_url
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    assets_url = f"{prefix}/assets"
    app.mount(assets_url, StaticFiles(directory=offline_assets_dir()), name="offline-docs-assets")
    # validatorUrl=None: otherwise a layout that shows the validator badge fetches it from swagger.io.
    swagger_ui_parameters = {**(app.swagger_ui_parameters or {}), "validatorUrl": None}

    @app.get(prefix, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        # Behind Serve's route prefix or a proxy every URL the page loads must carry root_path.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{assets_url}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets_url}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets_url}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=swagger_ui_parameters,
        )

    if oauth2_redirect_url:
        # FastAPI adds this route only together with its own docs_url, which the app turned off.
        @app.get(oauth2_redirect_url, include_in_schema=False)
        async def swagger_ui_oauth2_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    if redoc_url is not None:

        @app.get(redoc_url, include_in_schema=False)
        async def redoc(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "").rstrip("/")
            page = get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{assets_url}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{assets_url}/favicon.png",
                with_google_fonts=False,
            )
            # ReDoc's footer fetches its logo from cdn.redoc.ly: this policy has the browser refuse
            # it without reaching out, and ReDoc hides the image that failed to load.
            page.headers["Content-Security-Policy"] = REDOC_CONTENT_SECURITY_POLICY
            return page
