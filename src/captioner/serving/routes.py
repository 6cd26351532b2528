"""The API's endpoints, over the `Serving` state that `create_app` builds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from captioner.config import RENAMED_OPTIONS
from captioner.model import Caption, Captioner
from captioner.serving.batcher import MicroBatcher
from captioner.serving.captioning import Options
from captioner.serving.errors import ERROR_RESPONSES, error_response, upload_too_large_message
from captioner.serving.schemas import (
    CaptionResponse,
    HealthResponse,
    ImageSize,
    ModelInfo,
    Timings,
    attention_maps,
    crop_box,
)
from captioner.serving.settings import ServerSettings
from captioner.transforms import PreparedImage


@dataclass(frozen=True)
class Serving:
    """What the endpoints share: one per app."""

    settings: ServerSettings
    model: Captioner
    batcher: MicroBatcher[Options, PreparedImage, Caption]
    info: ModelInfo


def serving(request: Request) -> Serving:
    return request.app.state.serving


ServingState = Annotated[Serving, Depends(serving)]
router = APIRouter(prefix="/api")


@router.get("/health", response_model=HealthResponse)
async def health(state: ServingState) -> HealthResponse:
    return HealthResponse(status="ok", model=state.info.source)


@router.get("/model", response_model=ModelInfo)
async def model_info(state: ServingState) -> ModelInfo:
    return state.info


@router.post("/caption", response_model=CaptionResponse, responses=ERROR_RESPONSES)
async def caption(
    request: Request,
    state: ServingState,
    file: Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, HEIC, GIF, ...)")],
    num_beams: Annotated[
        int | None, Form(description="1 = greedy; default: the model's (see /api/model)")
    ] = None,
    max_new_tokens: Annotated[
        int | None, Form(description="the longest caption, in tokens; default: the model's")
    ] = None,
    attention: Annotated[bool, Form(description="include per-token attention maps")] = True,
) -> JSONResponse:
    started = time.perf_counter()
    settings, model = state.settings, state.model
    form = await request.form()  # parsed already: FastAPI's copy
    if len(form.getlist("file")) > 1:
        return error_response(422, "send one image a request: this one has several file parts")
    for name in form:
        if name in RENAMED_OPTIONS:  # ignored, it would caption with the model's default
            return error_response(422, f"{name}: this field is called {RENAMED_OPTIONS[name]} now")
    asked = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
    try:
        generation = model.generation_config(**{k: v for k, v in asked.items() if v is not None})
    except ValueError as error:
        return error_response(422, str(error))
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:  # within the multipart slack the middleware allows
        return error_response(413, upload_too_large_message(settings.max_upload_mb))
    read = time.perf_counter()
    options = Options(generation.num_beams, generation.max_new_tokens, attention)
    prepare = partial(
        model.preprocess.prepare, data, max_pixels=settings.max_pixels, max_side=settings.max_side
    )
    done = await state.batcher.submit(prepare, options, settings.request_timeout_s)
    image, result, stats = done.item, done.result, done.stats
    timings = Timings(
        read=(read - started) * 1000,
        decode=stats.prepare_s * 1000,
        queue=stats.queue_s * 1000,
        inference=stats.inference_s * 1000,
        total=(time.perf_counter() - started) * 1000,
    )
    body = CaptionResponse.model_construct(
        caption=result.text,
        tokens=result.tokens,
        score=round(result.score, 4),
        attention=attention_maps(result, crop_box(image.crop)),
        image=ImageSize(width=image.width, height=image.height),
        timings_ms=Timings(**{name: round(ms, 2) for name, ms in timings.model_dump().items()}),
        batch_size=stats.size,
    )
    return JSONResponse(body.model_dump())


# Every other /api path and method, answered as the API (JSON), not by the page mounted at `/`,
# which would take a GET of /api/caption for a file it does not have. Included after every route
# and just before the page (create_app).
api_fallback = APIRouter(prefix="/api")


@api_fallback.api_route(
    "/{path:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"],
    include_in_schema=False,
)
async def not_an_endpoint(request: Request, path: str) -> JSONResponse:
    allowed: set[str] = set()
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
            allowed |= route.methods or set()
    if allowed:
        return error_response(405, "Method Not Allowed", {"Allow": ", ".join(sorted(allowed))})
    return error_response(404, "Not Found")
