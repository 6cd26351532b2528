"""The web API, through FastAPI's test client, on the tiny untrained model from conftest."""

from __future__ import annotations

import dataclasses
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from captioner import Captioner
from captioner.config import MAX_NUM_BEAMS
from captioner.serving.app import create_app
from captioner.serving.settings import ServerSettings
from captioner.torch_model import CaptionModel


@pytest.fixture(scope="module")
def client(
    tiny_captioner: Captioner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    page = tmp_path_factory.mktemp("page")
    (page / "index.html").write_text("<!doctype html><title>captioner page</title>")
    settings = ServerSettings(model="tiny", max_upload_mb=1, page_dir=page)
    with TestClient(create_app(settings, model=tiny_captioner)) as client:
        yield client


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def photo(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth colour gradient: something a JPEG encoder treats like a photo."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def post(client: TestClient, data: bytes, filename: str = "upload.bin", **fields):
    form = {name: str(value) for name, value in fields.items()}
    return client.post("/api/caption", files={"file": (filename, data)}, data=form)


BOUNDARY = "captionerboundary"
MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_body(data: bytes, filename: str = "big.jpg") -> bytes:
    """A form with one file field, as a browser sends it."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size in its header: what a decompression bomb looks like first."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# ---- endpoints ------------------------------------------------------------------------------


def test_health(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "tiny"}


def test_model_info(
    client: TestClient, tiny_captioner: Captioner, tiny_model: CaptionModel
) -> None:
    info = client.get("/api/model").json()
    assert info["encoder"]["name"] == "efficientnet-lite0"
    assert (info["encoder"]["grid_h"], info["encoder"]["grid_w"]) == (7, 7)
    assert info["decoder"]["layers"] == 2 and info["decoder"]["heads"] == 4
    assert info["decoder"]["parameters"] == sum(p.numel() for p in tiny_model.decoder.parameters())
    assert info["metadata"] == tiny_captioner.config.metadata
    assert info["server"]["batching"] is True and info["server"]["max_upload_mb"] == 1
    # The page reads its decoding defaults from here.
    assert info["generation"] == dataclasses.asdict(tiny_captioner.config.generation)
    assert info["server"]["max_new_tokens"] == tiny_captioner.config.decoder.max_length - 1
    assert info["server"]["max_num_beams"] == MAX_NUM_BEAMS


def test_model_info_is_described_in_the_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    reply = schema["paths"]["/api/model"]["get"]["responses"]["200"]["content"]
    assert reply["application/json"]["schema"] == {"$ref": "#/components/schemas/ModelInfo"}
    generation = schema["components"]["schemas"]["GenerationConfig"]["properties"]
    assert {"num_beams", "max_new_tokens", "do_sample", "top_p"} <= set(generation)


def test_caption_with_attention(client: TestClient, tiny_captioner: Captioner) -> None:
    data = encode(photo(64, 48), "JPEG")
    response = post(client, data, "photo.jpg", num_beams=1)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = tiny_captioner.caption(data, num_beams=1)[0]
    assert body["caption"] != "" and body["tokens"] == expected.tokens
    assert body["image"] == {"width": 64, "height": 48}
    assert body["batch_size"] == 1
    assert set(body["timings_ms"]) == {"read", "decode", "queue", "inference", "total"}
    maps = body["attention"]
    assert (maps["grid_h"], maps["grid_w"], maps["layers"], maps["heads"]) == (7, 7, 2, 4)
    per_head = np.array(maps["per_head"])
    assert per_head.shape == (len(body["tokens"]), 2, 4, 49)
    # Each head's attention over the grid is a distribution; the mean is the mean of the heads.
    np.testing.assert_allclose(per_head.sum(axis=-1), 1.0, atol=5e-3)
    np.testing.assert_allclose(np.array(maps["mean"]), per_head.mean(axis=(1, 2)), atol=1e-3)
    # The model centre-crops a 48x48 square out of the 64x48 image: that is what the grid covers.
    crop = {"x": 0.125, "y": 0.0, "width": 0.75, "height": 1.0}
    assert maps["crop"] == pytest.approx(crop, abs=0.005)


def test_caption_options(client: TestClient, tiny_captioner: Captioner) -> None:
    image = photo()
    greedy = post(client, encode(image, "PNG"), num_beams=1, attention="false").json()
    beam = post(client, encode(image, "PNG"), num_beams=4, attention="false").json()
    assert greedy["attention"] is None and beam["attention"] is None
    assert greedy["tokens"] == tiny_captioner.caption(image, num_beams=1)[0].tokens
    assert beam["tokens"] == tiny_captioner.caption(image, num_beams=4)[0].tokens
    default = post(client, encode(image, "PNG"), attention="false").json()  # the model's own
    assert default["tokens"] == tiny_captioner.caption(image)[0].tokens


@pytest.mark.parametrize("num_beams", ["0", "17", "-1", "two"])
def test_bad_num_beams(client: TestClient, num_beams: str) -> None:
    response = post(client, encode(photo(), "PNG"), num_beams=num_beams)
    assert response.status_code == 422
    assert response.json()["error"].startswith("num_beams")


def test_the_old_beam_size_field_is_a_422_naming_num_beams(client: TestClient) -> None:
    """A client written before the field took Hugging Face's name: told, not silently served
    the model's default beam."""
    response = post(client, encode(photo(), "PNG"), beam_size="1")
    assert response.status_code == 422
    assert response.json() == {"error": "beam_size: this field is called num_beams now"}


@pytest.mark.parametrize("max_new_tokens", ["0", "1000"])
def test_bad_max_new_tokens(client: TestClient, max_new_tokens: str) -> None:
    """The model's own validation, with the allowed range, as a 422."""
    response = post(client, encode(photo(), "PNG"), max_new_tokens=max_new_tokens)
    assert response.status_code == 422
    assert response.json()["error"].startswith("max_new_tokens must be an integer from 1 to")


def test_max_new_tokens(client: TestClient, tiny_captioner: Captioner) -> None:
    image = photo()
    body = post(client, encode(image, "PNG"), max_new_tokens=2, attention="false").json()
    assert body["tokens"] == tiny_captioner.caption(image, max_new_tokens=2)[0].tokens


def test_missing_file(client: TestClient) -> None:
    response = client.post("/api/caption", data={"num_beams": "1"})
    assert response.status_code == 422
    assert response.json() == {"error": "file: Field required"}


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/caption", "/api/health", "/api/model"} <= set(paths)


def test_page_served_at_root(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and "captioner page" in response.text


def test_page_missing_explains_how_to_build(tiny_captioner: Captioner, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-page"
    with TestClient(create_app(ServerSettings(page_dir=missing), model=tiny_captioner)) as client:
        response = client.get("/")
    assert response.status_code == 200 and "make frontend" in response.text
    assert str(tmp_path) not in response.text  # D22: the server's folders are not shown


def test_page_json_tells_the_page_a_server_is_behind_it(client: TestClient) -> None:
    response = client.get("/page.json")
    assert response.status_code == 200
    assert response.json() == {"format": "captioner-page", "server": True, "device_model": False}


def test_a_site_served_offers_its_model_and_the_browser_revalidates_it(
    tiny_captioner: Captioner, tmp_path: Path
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>captioner site</title>")
    (tmp_path / "page.json").write_text('{"format": "captioner-page", "server": false}')
    (tmp_path / "model" / "captioner.json").write_text('{"format": "captioner-onnx"}')
    (tmp_path / "model" / "step.onnx.gz").write_bytes(b"\x1f\x8b graph bytes")
    with TestClient(create_app(ServerSettings(page_dir=tmp_path), model=tiny_captioner)) as client:
        assert client.get("/page.json").json()["server"] is True  # not the static site's file
        assert client.get("/page.json").json()["device_model"] is True
        graph = client.get("/model/step.onnx.gz")
        assert graph.content == b"\x1f\x8b graph bytes"
        assert graph.headers["cache-control"] == "no-cache" and graph.headers["etag"]
        again = client.get("/model/step.onnx.gz", headers={"if-none-match": graph.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["cache-control"] == "no-cache"
        assert "cache-control" not in client.get("/").headers


def test_unknown_api_path_is_json_404(client: TestClient) -> None:
    response = client.get("/api/nothing")
    assert response.status_code == 404 and "error" in response.json()


# ---- every kind of image the page may send -------------------------------------------------


def _cmyk() -> bytes:
    return encode(photo().convert("CMYK"), "JPEG")


def _sixteen_bit() -> bytes:
    values = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG")


def _animated() -> bytes:
    frames = [photo().convert("P"), Image.new("P", (64, 48), 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_transparent() -> bytes:
    image = photo().convert("P")
    return encode(image, "PNG", transparency=0)


IMAGE_KINDS = {
    "jpeg": lambda: encode(photo(), "JPEG"),
    "grayscale": lambda: encode(photo().convert("L"), "PNG"),
    "rgba": lambda: encode(photo().convert("RGBA"), "PNG"),
    "palette": _palette_transparent,
    "cmyk": _cmyk,
    "16-bit": _sixteen_bit,
    "animated-gif": _animated,
    "webp": lambda: encode(photo(), "WEBP"),
    "bmp": lambda: encode(photo(), "BMP"),
}


@pytest.mark.parametrize("kind", sorted(IMAGE_KINDS))
def test_image_kinds_are_captioned(client: TestClient, kind: str) -> None:
    response = post(client, IMAGE_KINDS[kind](), f"image.{kind}", num_beams=1, attention="false")
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 64, "height": 48}
    assert response.json()["caption"]


def test_exif_orientation_is_honoured(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    data = encode(photo(64, 48), "JPEG", exif=exif.tobytes())
    response = post(client, data, "rotated.jpg", num_beams=1, attention="false")
    assert response.status_code == 200
    assert response.json()["image"] == {"width": 48, "height": 64}


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_is_decoded_small_and_reported_at_full_size(
    client: TestClient, orientation: int
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: stored sideways, displayed a quarter turn round
    data = encode(photo(2400, 1800), "JPEG", exif=exif.tobytes())
    response = post(client, data, "large.jpg", num_beams=1, attention="false")
    assert response.status_code == 200, response.text
    expected = (
        {"width": 2400, "height": 1800} if orientation == 1 else {"width": 1800, "height": 2400}
    )
    assert response.json()["image"] == expected


# ---- bad input: a JSON error, never a stack trace ------------------------------------------


def test_not_an_image(client: TestClient) -> None:
    response = post(client, b"%PDF-1.4 this is a document, not a photo", "paper.pdf")
    assert response.status_code == 415
    assert response.json() == {"error": "the uploaded data is not an image in a supported format"}


def test_empty_file(client: TestClient) -> None:
    response = post(client, b"", "empty.jpg")
    assert response.status_code == 415 and "not an image" in response.json()["error"]


def test_unsupported_format(client: TestClient) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    response = post(client, svg, "drawing.svg")
    assert response.status_code == 415 and "error" in response.json()


def test_truncated_file(client: TestClient) -> None:
    data = encode(photo(256, 256), "JPEG")
    response = post(client, data[: len(data) // 2], "cut.jpg")
    assert response.status_code == 422
    assert "truncated or corrupt" in response.json()["error"]


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        (8_000, 8_000, "over the limit of 40000000 pixels (max_pixels)"),
        (30_000, 30_000, "more pixels than the limit of 40000000 (max_pixels)"),
        # D19: few pixels, but a row each: refused before decoding, not 5 s and a gigabyte
        (1, 39_000_000, "1x39000000 pixels, longer than the limit of 32768 pixels a side"),
    ],
    ids=["over-pixel-limit", "pillow-bomb-check", "over-side-limit"],
)
def test_decompression_bombs_refused(
    client: TestClient, width: int, height: int, reason: str
) -> None:
    response = post(client, png_header_only(width, height), "bomb.png")
    assert response.status_code == 413
    assert reason in response.json()["error"]


def test_upload_over_size_limit(client: TestClient) -> None:
    response = post(client, b"\xff" * (2 * 1024 * 1024), "huge.jpg")  # the limit here is 1 MB
    assert response.status_code == 413
    assert response.json() == {"error": "the upload is larger than the limit of 1 MB"}


def test_chunked_upload_over_size_limit(client: TestClient) -> None:
    """With no Content-Length to judge by, the size is checked while reading."""
    body = multipart_body(b"\xff" * (2 * 1024 * 1024))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = client.post(
        "/api/caption",
        content=chunks(),
        headers={"content-type": MULTIPART_TYPE},
    )
    assert response.status_code == 413 and "limit of 1 MB" in response.json()["error"]


# ---- micro-batching --------------------------------------------------------------------------


def _concurrent_batch_sizes(client: TestClient, requests: int) -> list[int]:
    data = encode(photo(), "JPEG")
    sizes: list[int] = []
    barrier = threading.Barrier(requests)

    def one() -> None:
        barrier.wait()
        response = post(client, data, num_beams=1, attention="false")
        assert response.status_code == 200
        sizes.append(response.json()["batch_size"])

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sizes


@pytest.mark.parametrize("batching", [True, False], ids=["on", "off"])
def test_micro_batching(tiny_captioner: Captioner, batching: bool) -> None:
    settings = ServerSettings(batching=batching, batch_wait_ms=300, max_batch_size=4)
    with TestClient(create_app(settings, model=tiny_captioner)) as client:
        sizes = _concurrent_batch_sizes(client, 6)
    assert len(sizes) == 6
    if batching:
        assert max(sizes) > 1 and max(sizes) <= 4
    else:
        assert sizes == [1] * 6


def test_model_failure_is_a_json_500(
    tiny_captioner: Captioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    app = create_app(ServerSettings(), model=tiny_captioner)
    with TestClient(app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(tiny_captioner, "generate_from_features", broken)
        response = post(client, encode(photo(), "PNG"))
    assert response.status_code == 500
    assert response.json() == {"error": "the server failed to caption this image; see its log"}


# ---- backpressure ----------------------------------------------------------------------------


@pytest.fixture
def model_on_hold(tiny_captioner: Captioner, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The model blocks in each call until `release` is set; `running` is set once it has one."""
    running, release = threading.Event(), threading.Event()
    generate = tiny_captioner.generate_from_features

    def held(*args, **kwargs):
        running.set()
        release.wait(30)
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny_captioner, "generate_from_features", held)
    yield {"running": running, "release": release}
    release.set()


def in_thread(call) -> tuple[threading.Thread, list]:
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread, answers


def test_a_full_queue_is_a_503_with_retry_after(tiny_captioner: Captioner, model_on_hold) -> None:
    settings = ServerSettings(max_queue=1, batch_wait_ms=0)
    with TestClient(create_app(settings, model=tiny_captioner)) as client:
        batcher = client.app.state.serving.batcher
        data = encode(photo(), "PNG")
        first, first_answers = in_thread(lambda: post(client, data, attention="false"))
        assert model_on_hold["running"].wait(30)  # the first is in the model: not waiting
        second, second_answers = in_thread(lambda: post(client, data, attention="false"))
        while batcher.waiting < 1:  # the second is waiting: the queue (1) is full
            threading.Event().wait(0.01)
        refused = post(client, data, attention="false")
        model_on_hold["release"].set()
        first.join(), second.join()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "busy" in refused.json()["error"]
    assert [first_answers[0].status_code, second_answers[0].status_code] == [200, 200]


def test_a_request_past_its_deadline_is_a_504(tiny_captioner: Captioner, model_on_hold) -> None:
    settings = ServerSettings(request_timeout_s=0.2)
    with TestClient(create_app(settings, model=tiny_captioner)) as client:
        response = post(client, encode(photo(), "PNG"), attention="false")
        model_on_hold["release"].set()
    assert response.status_code == 504
    assert response.json() == {"error": "the server is overloaded: no answer within 0.2 s"}


# ---- HTTP details -----------------------------------------------------------------------------


def test_a_wrong_method_keeps_the_allow_header(client: TestClient) -> None:
    response = client.request("TRACE", "/api/health")
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert response.json() == {"error": "Method Not Allowed"}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_the_api_answers_its_paths_not_the_page(client: TestClient, method: str) -> None:
    # D20: with the page mounted at /, it used to answer 404, or 405 "Allow: GET, HEAD"
    assert client.get("/").status_code == 200  # the page is there
    response = client.request(method, "/api/caption")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json() == {"error": "Method Not Allowed"}


def test_several_file_parts_are_refused_not_all_but_one_ignored(client: TestClient) -> None:
    data = encode(photo(), "PNG")
    files = [("file", ("a.png", data)), ("file", ("b.png", data))]
    response = client.post("/api/caption", files=files)  # D21
    assert response.status_code == 422
    assert response.json() == {"error": "send one image a request: this one has several file parts"}


# A part header without a colon: "Found invalid character 13 in header".
MALFORMED_MULTIPART = b"--x\r\nNoColonHeader\r\n\r\nabc\r\n--x--\r\n"


def test_a_malformed_multipart_body_is_a_declared_400(client: TestClient) -> None:
    response = client.post(
        "/api/caption",
        content=MALFORMED_MULTIPART,
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 400 and "error" in response.json()
    declared = client.get("/openapi.json").json()["paths"]["/api/caption"]["post"]["responses"]
    assert {"400", "413", "415", "422", "503", "504"} <= set(declared)


@pytest.mark.parametrize("origins", [(), ("https://cms.example",)], ids=["off", "on"])
def test_cors_only_for_the_origins_given(
    tiny_captioner: Captioner, origins: tuple[str, ...]
) -> None:
    with TestClient(
        create_app(ServerSettings(cors_origins=origins), model=tiny_captioner)
    ) as client:
        simple = client.get("/api/health", headers={"origin": "https://cms.example"})
        preflight = client.options(
            "/api/caption",
            headers={"origin": "https://cms.example", "access-control-request-method": "POST"},
        )
        other = client.get("/api/health", headers={"origin": "https://other.example"})
    allowed = simple.headers.get("access-control-allow-origin")
    assert allowed == ("https://cms.example" if origins else None)
    assert (preflight.status_code == 200) == bool(origins)
    assert "access-control-allow-origin" not in other.headers


# ---- inputs that used to cost seconds or be refused -------------------------------------------


def test_a_tiny_strip_is_captioned_cheaply(client: TestClient) -> None:
    """165 bytes of PNG, 1x20000 pixels: resized to 260x5,200,000 before the crop, once."""
    data = encode(Image.new("RGB", (1, 20_000), (120, 80, 40)), "PNG", optimize=True)
    response = post(client, data, "strip.png", num_beams=1, attention="false")
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 1, "height": 20_000}


def test_an_iphone_heic_photo_is_captioned(client: TestClient) -> None:
    data = encode(photo(64, 48), "HEIF", quality=90)
    assert data[4:12] == b"ftypheic"  # what an iPhone sends
    response = post(client, data, "IMG_0001.HEIC", num_beams=1, attention="false")
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 64, "height": 48}
