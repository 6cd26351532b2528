"""`create_app`: the API and the page over one loaded `Captioner`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

from captioner import __version__
from captioner.config import MAX_NUM_BEAMS
from captioner.hub import DEFAULT_MODEL
from captioner.model import Captioner
from captioner.page import DEVICE_MODEL_DIR, DEVICE_MODEL_FILE, PAGE_FILE, page_description
from captioner.serving.batcher import MicroBatcher
from captioner.serving.captioning import caption_batch
from captioner.serving.errors import UploadLimit, add_error_handlers, upload_too_large_message
from captioner.serving.routes import Serving, api_fallback, router
from captioner.serving.schemas import DecoderInfo, EncoderInfo, ModelInfo, ServerInfo
from captioner.serving.settings import ServerSettings

# Room for the multipart framing around the file when judging a request by its size.
MULTIPART_SLACK_BYTES = 64 * 1024


def create_app(settings: ServerSettings | None = None, model: Captioner | None = None) -> FastAPI:
    """The API and page over `model`, or over the model `settings.model` names (loaded once)."""
    settings = settings or ServerSettings()
    if model is None:
        model = Captioner.from_pretrained(settings.model)
    batcher = MicroBatcher(
        partial(caption_batch, model),
        max_batch_size=settings.max_batch_size if settings.batching else 1,
        max_wait_s=settings.batch_wait_ms / 1000,
        max_queue=settings.max_queue,
        prepare_workers=settings.decode_workers,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="captioner",
        version=__version__,
        description="Caption images and see where the model looked for each word.",
        lifespan=lifespan,
    )
    app.state.serving = Serving(settings, model, batcher, model_info(settings, model))
    add_error_handlers(app)
    app.include_router(router)
    app.add_middleware(
        UploadLimit,
        path="/api/caption",
        max_bytes=settings.max_upload_bytes + MULTIPART_SLACK_BYTES,
        message=upload_too_large_message(settings.max_upload_mb),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"]
        )
    app.include_router(api_fallback)
    mount_page(app, settings)
    return app


def model_info(settings: ServerSettings, model: Captioner) -> ModelInfo:
    config = model.config
    return ModelInfo(
        source=settings.model or DEFAULT_MODEL,
        encoder=EncoderInfo(
            name=config.encoder.name,
            grid_h=model.grid[0],
            grid_w=model.grid[1],
            image_size=model.preprocess.crop_size,
        ),
        decoder=DecoderInfo(
            layers=config.decoder.n_layers,
            heads=config.decoder.n_heads,
            d_model=config.decoder.d_model,
            vocab_size=config.decoder.vocab_size,
            parameters=model.runtime.parameters,
        ),
        generation=config.generation,
        metadata=config.metadata,
        server=ServerInfo(
            batching=settings.batching,
            max_batch_size=settings.max_batch_size if settings.batching else 1,
            batch_wait_ms=settings.batch_wait_ms,
            max_upload_mb=settings.max_upload_mb,
            max_pixels=settings.max_pixels,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout_s,
            max_num_beams=MAX_NUM_BEAMS,
            max_new_tokens=model.max_new_tokens_limit,
        ),
    )


def mount_page(app: FastAPI, settings: ServerSettings) -> None:
    """The built page at `/`, or a page saying how to build it; and `page.json`, which tells the
    page that this server is behind it (and whether a model is beside it)."""

    @app.get(f"/{PAGE_FILE}", include_in_schema=False)
    async def page_info() -> dict[str, Any]:
        device_model = (settings.page_dir / DEVICE_MODEL_FILE).is_file()
        return page_description(server=True, device_model=device_model)

    if (settings.page_dir / "index.html").is_file():
        app.mount("/", PageFiles(directory=settings.page_dir, html=True), name="page")
        return

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page_missing() -> str:
        return (
            # No icon to ask for: the browser's /favicon.ico request would only 404.
            "<!doctype html><title>captioner</title><link rel='icon' href='data:,'>"
            "<h1>captioner</h1>"
            "<p>The page is not built (its folder has no index.html): run "
            "<code>make frontend</code>, or give <code>--page-dir</code>. The API is up: see "
            "<a href='/docs'>/docs</a>.</p>"
        )


class PageFiles(StaticFiles):
    """The page's files. Those of the exported model (`model/`, tens of MB) go out with
    `Cache-Control: no-cache`: the browser keeps them and asks again with their ETag on each
    load, so a reload costs a 304 instead of the download, and a model exported again is
    picked up at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if path.replace(os.sep, "/").startswith(f"{DEVICE_MODEL_DIR}/"):
            response.headers["Cache-Control"] = "no-cache"
        return response
