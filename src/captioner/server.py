"""The web app's backend: a JSON API over one loaded `Captioner`, and the built page at `/`.

Requests are gathered into micro-batches: while the model works on one batch, new requests queue
up and go together into the next `model.caption` call, so throughput grows with load instead of
each request waiting for all the ones before it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from captioner import __version__
from captioner.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageTooLargeError,
    UnsupportedImageError,
    full_size,
)
from captioner.model import Caption, Captioner
from captioner.transforms import Preprocess

log = logging.getLogger(__name__)

MAX_BEAM_SIZE = 8
# Room for the multipart framing around the file when judging a request by its Content-Length.
MULTIPART_SLACK_BYTES = 64 * 1024
# Where `npm run build` in frontend/ puts the page (an editable install runs from the checkout).
DEFAULT_PAGE_DIR = Path(__file__).resolve().parents[2] / "frontend" / "dist"


@dataclass
class ServerSettings:
    """Everything `captioner serve` can be told; the defaults suit a laptop demo."""

    model: str | None = None  # folder, hub id or wandb: artifact; None means the bundled model
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 10.0
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded size limit: refuses decompression bombs
    batching: bool = True  # off: one model call per request (for comparison in benchmarks)
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0  # how long a lone request waits for company before running
    page_dir: Path = DEFAULT_PAGE_DIR

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


# ---- micro-batching ------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What must be equal for two requests to share one `model.caption` call."""

    beam_size: int
    attention: bool


@dataclass
class BatchStats:
    size: int
    queue_s: float
    inference_s: float


@dataclass
class _Job:
    image: Image.Image
    options: Options
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Feeds queued requests to the model on one worker thread, off the event loop.

    The worker takes whatever is queued (up to `max_batch_size`, waiting at most `max_wait_s`
    for more), groups it by options and makes one `model.caption` call per group.
    `max_batch_size=1` turns batching off.
    """

    def __init__(self, model: Captioner, max_batch_size: int, max_wait_s: float):
        self.model = model
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max_wait_s if self.max_batch_size > 1 else 0.0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-model")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def caption(self, image: Image.Image, options: Options) -> tuple[Caption, BatchStats]:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(image, options, future))
        return await future

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[Options, list[_Job]] = defaultdict(list)
            for job in jobs:
                if not job.future.done():  # the client went away while queued
                    groups[job.options].append(job)
            for options, group in groups.items():
                await self._run_group(options, group)

    async def _collect(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(jobs) < self.max_batch_size:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return jobs

    async def _run_group(self, options: Options, group: list[_Job]) -> None:
        started = time.perf_counter()
        call = partial(
            self.model.caption,
            [job.image for job in group],
            beam_size=options.beam_size,
            return_attention=options.attention,
            batch_size=len(group),
        )
        try:
            captions = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except Exception as error:
            log.exception("captioning a batch of %d failed", len(group))
            for job in group:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        inference_s = time.perf_counter() - started
        for job, result in zip(group, captions):
            if not job.future.done():
                queue_s = started - job.queued_at
                job.future.set_result((result, BatchStats(len(group), queue_s, inference_s)))


# ---- response bodies (also what /docs shows) -----------------------------------------------


class ImageSize(BaseModel):
    width: int
    height: int


class CropBox(BaseModel):
    """The part of the image the model saw (it centre-crops), as fractions of width and height:
    the attention grid covers this box."""

    x: float
    y: float
    width: float
    height: float


class AttentionMaps(BaseModel):
    grid_h: int
    grid_w: int
    layers: int
    heads: int
    per_head: list[list[list[list[float]]]]  # tokens x layers x heads x (grid_h * grid_w)
    mean: list[list[float]]  # tokens x (grid_h * grid_w): the mean over layers and heads
    crop: CropBox


class CaptionResponse(BaseModel):
    caption: str
    tokens: list[str]
    score: float
    attention: AttentionMaps | None
    image: ImageSize
    timings_ms: dict[str, float]
    batch_size: int


class ErrorResponse(BaseModel):
    error: str


class HealthResponse(BaseModel):
    status: str
    model: str


class ModelInfo(BaseModel):
    source: str
    encoder: dict[str, Any]
    decoder: dict[str, Any]
    generation: dict[str, Any]
    metadata: dict[str, Any]
    server: dict[str, Any]


def crop_box(preprocess: Preprocess, width: int, height: int) -> CropBox:
    """Where `preprocess` (resize the shorter side, centre-crop) cuts its square from the image."""
    side = preprocess.crop_size * min(width, height) / preprocess.resize_size
    return CropBox(
        x=(width - side) / 2 / width,
        y=(height - side) / 2 / height,
        width=side / width,
        height=side / height,
    )


def attention_maps(caption: Caption, crop: CropBox) -> AttentionMaps | None:
    if caption.attention is None:
        return None
    tokens, layers, heads, grid_h, grid_w = caption.attention.shape
    cells = grid_h * grid_w
    # float64 before rounding, so that 0.0201 is sent as 0.0201, not as float32's 0.020099999...
    weights = caption.attention.astype(np.float64)
    per_head = np.round(weights.reshape(tokens, layers, heads, cells), 4)
    mean = np.round(weights.mean(axis=(1, 2)).reshape(tokens, cells), 4)
    # model_construct: the values are ours and well-formed; validating ~50k floats is slow.
    return AttentionMaps.model_construct(
        grid_h=grid_h,
        grid_w=grid_w,
        layers=layers,
        heads=heads,
        per_head=per_head.tolist(),
        mean=mean.tolist(),
        crop=crop,
    )


# ---- the app -------------------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status_for(error: ImageLoadError) -> int:
    if isinstance(error, ImageTooLargeError):
        return 413
    if isinstance(error, UnsupportedImageError):
        return 415
    return 422  # truncated or corrupt


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "upload or decoded image too large"},
    415: {"model": ErrorResponse, "description": "not an image, or an unsupported format"},
    422: {"model": ErrorResponse, "description": "bad options, or a truncated or corrupt image"},
}


def create_app(settings: ServerSettings | None = None, model: Captioner | None = None) -> FastAPI:
    """The API and page over `model`, or over the model `settings.model` names (loaded once)."""
    settings = settings or ServerSettings()
    if model is None:
        model = Captioner.from_pretrained(settings.model)
    batcher = MicroBatcher(
        model, settings.max_batch_size if settings.batching else 1, settings.batch_wait_ms / 1000
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
    app.state.settings, app.state.model, app.state.batcher = settings, model, batcher

    @app.exception_handler(ImageLoadError)
    async def bad_image(request: Request, error: ImageLoadError) -> JSONResponse:
        return _error(_status_for(error), str(error))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in problem['loc'][1:]) or 'request'}: {problem['msg']}"
            for problem in error.errors()
        ]
        return _error(422, "; ".join(problems))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, "the server failed to caption this image; see its log")

    @app.middleware("http")
    async def refuse_large_uploads(request: Request, call_next):
        """Answer 413 from the Content-Length alone, before a huge body is read and spooled."""
        length = request.headers.get("content-length", "")
        limit = settings.max_upload_bytes + MULTIPART_SLACK_BYTES
        if request.url.path == "/api/caption" and length.isdigit() and int(length) > limit:
            return _too_large(settings)
        return await call_next(request)

    @app.get("/api/health", response_model=HealthResponse)
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": settings.model or "bundled"}

    @app.get("/api/model", response_model=ModelInfo)
    async def model_info() -> dict[str, Any]:
        config, encoder = model.config, model.encoder
        return {
            "source": settings.model or "bundled",
            "encoder": {
                "name": config.encoder.name,
                "grid_h": encoder.grid_h,
                "grid_w": encoder.grid_w,
                "image_size": encoder.preprocess.crop_size,
            },
            "decoder": {
                "layers": config.decoder.n_layers,
                "heads": config.decoder.n_heads,
                "d_model": config.decoder.d_model,
                "vocab_size": config.decoder.vocab_size,
                "parameters": sum(p.numel() for p in model.decoder.parameters()),
            },
            "generation": dataclasses.asdict(config.generation),
            "metadata": config.metadata,
            "server": {
                "batching": settings.batching,
                "max_batch_size": batcher.max_batch_size,
                "batch_wait_ms": settings.batch_wait_ms,
                "max_upload_mb": settings.max_upload_mb,
                "max_pixels": settings.max_pixels,
                "max_beam_size": MAX_BEAM_SIZE,
            },
        }

    @app.post("/api/caption", response_model=CaptionResponse, responses=ERROR_RESPONSES)
    async def caption(
        file: Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, GIF, ...)")],
        beam_size: Annotated[
            int | None,
            Form(ge=1, le=MAX_BEAM_SIZE, description="1 = greedy; default: the model's own"),
        ] = None,
        attention: Annotated[bool, Form(description="include per-token attention maps")] = True,
    ) -> JSONResponse:
        started = time.perf_counter()
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:  # a chunked upload with no Content-Length
            return _too_large(settings)
        read = time.perf_counter()
        image = await run_in_threadpool(model.encoder.preprocess.load, data, settings.max_pixels)
        decoded = time.perf_counter()
        options = Options(beam_size or model.config.generation.beam_size, attention)
        result, stats = await batcher.caption(image, options)
        crop = crop_box(model.encoder.preprocess, image.width, image.height)
        width, height = full_size(image)  # what the client sent, though decoded smaller
        maps = attention_maps(result, crop)
        timings = {
            "read": read - started,
            "decode": decoded - read,
            "queue": stats.queue_s,
            "inference": stats.inference_s,
            "total": time.perf_counter() - started,
        }
        body = CaptionResponse.model_construct(
            caption=result.text,
            tokens=result.tokens,
            score=round(result.score, 4),
            attention=maps,
            image=ImageSize(width=width, height=height),
            timings_ms={name: round(seconds * 1000, 2) for name, seconds in timings.items()},
            batch_size=stats.size,
        )
        return JSONResponse(body.model_dump())

    if (settings.page_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=settings.page_dir, html=True), name="page")
    else:

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def page_missing() -> str:
            return (
                "<!doctype html><title>captioner</title><h1>captioner</h1>"
                f"<p>The page is not built ({settings.page_dir} has no index.html): run "
                "<code>make frontend</code>. The API is up: see <a href='/docs'>/docs</a>.</p>"
            )

    return app


def _too_large(settings: ServerSettings) -> JSONResponse:
    return _error(413, f"the upload is larger than the limit of {settings.max_upload_mb:g} MB")


def serve(args: argparse.Namespace) -> int:
    """`captioner serve`: flags left unset (None) keep the `ServerSettings` defaults."""
    import uvicorn

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ServerSettings)
        if getattr(args, f.name, None) is not None
    }
    settings = ServerSettings(**given)
    app = create_app(settings)
    print(f"captioner: serving on http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0
