"""`captioner serve` and its settings: flags over CAPTIONER_* variables over the defaults; a bad
value or a port it cannot have is one line and exit code 2, before the model loads."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import uvicorn

from captioner.cli import main
from captioner.serving.settings import ServerSettings
from captioner.torch_model import CaptionModel


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict:
    """What `uvicorn.Server.run` was given, instead of running it."""
    calls: dict = {}

    def run(server: uvicorn.Server, sockets=None) -> None:
        calls.update(app=server.config.app, port=sockets[0].getsockname()[1])

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return calls


def test_flags_reach_the_settings(
    tiny_model: CaptionModel, tmp_path: Path, served: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_model.save_pretrained(tmp_path)
    argv = ["serve", "--model", str(tmp_path), "--port", "0", "--no-batching"]
    argv += ["--max-upload-mb", "2.5", "--cors-origin", "https://a.example"]
    argv += ["--cors-origin", "https://b.example", "--max-queue", "3"]
    assert main(argv) == 0
    settings = served["app"].state.serving.settings
    assert (settings.model, settings.port, settings.host) == (str(tmp_path), 0, "127.0.0.1")
    assert settings.batching is False and settings.max_upload_mb == 2.5
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.max_queue == 3
    assert settings.max_batch_size == ServerSettings().max_batch_size  # unset flags: defaults
    # Said once the port is bound: the one uvicorn is given.
    assert capsys.readouterr().out == f"captioner: serving on http://127.0.0.1:{served['port']}\n"


def test_the_model_is_warm_before_serving_on(
    tiny_model: CaptionModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoder graphs are exported and the sessions open before the port is announced, so
    the first request does not wait for them."""
    tiny_model.save_pretrained(tmp_path)
    monkeypatch.setenv("CAPTIONER_CACHE_DIR", str(tmp_path / "cache"))
    warm: dict = {}

    def run(server: uvicorn.Server, sockets=None) -> None:
        runtime = server.config.app.state.serving.model.runtime
        warm.update(decoder=bool(runtime._steps), encoder=runtime._encoder is not None)

    monkeypatch.setattr(uvicorn.Server, "run", run)
    assert main(["serve", "--model", str(tmp_path), "--port", "0"]) == 0
    assert warm == {"decoder": True, "encoder": True}


def test_environment_variables_under_the_flags(
    tiny_model: CaptionModel, tmp_path: Path, served: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_model.save_pretrained(tmp_path)
    monkeypatch.setenv("CAPTIONER_MODEL", str(tmp_path))
    monkeypatch.setenv("CAPTIONER_PORT", "0")
    monkeypatch.setenv("CAPTIONER_MAX_BATCH_SIZE", "2")
    monkeypatch.setenv("CAPTIONER_BATCHING", "no")
    assert main(["serve", "--batching"]) == 0
    settings = served["app"].state.serving.settings
    assert (settings.model, settings.max_batch_size, settings.batching) == (str(tmp_path), 2, True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "99999"], "port must be an integer from 0 to 65535, got 99999"),
        (["--max-queue", "0"], "max_queue must be an integer >= 1, got 0"),
        (["--max-upload-mb", "-1"], "max_upload_mb must be a number > 0, got -1.0"),
        (["--cors-origin", "cms.example"], "a CORS origin is '*' or scheme://host[:port]"),
    ],
)
def test_bad_values_are_one_line(
    argv: list[str], message: str, served: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *argv]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"captioner: {message}") and err.count("\n") == 1 and out == ""
    assert not served


def test_a_bad_environment_variable_is_one_line(
    monkeypatch: pytest.MonkeyPatch, served: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPTIONER_PORT", "eighty")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == "captioner: CAPTIONER_PORT must be an integer, got 'eighty'\n"


def test_a_busy_port_is_one_line_before_the_model_loads(
    served: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The model does not exist: had it been loaded first, that would be the error.
        assert main(["serve", "--port", str(port), "--model", "/no/such/model"]) == 2
    out, err = capsys.readouterr()
    assert err == f"captioner: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert out == "" and not served


def test_an_unknown_host_is_one_line(served: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "no-such-host.invalid", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("captioner: cannot listen on no-such-host.invalid:0: ")
    assert err.count("\n") == 1


def test_a_missing_model_is_one_line(served: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0", "--model", "/no/such/model"]) == 2
    out, err = capsys.readouterr()
    assert "not a model folder" in err and "serving on" not in out


def test_settings_from_the_environment_have_their_types() -> None:
    environ = {
        "CAPTIONER_PORT": "9000",
        "CAPTIONER_BATCH_WAIT_MS": "2.5",
        "CAPTIONER_BATCHING": "false",
        "CAPTIONER_CORS_ORIGINS": "https://a.example, https://b.example",
        "CAPTIONER_PAGE_DIR": "/srv/page",
        "CAPTIONER_MODEL": "",
    }
    settings = ServerSettings.from_env(environ, max_queue=5)
    assert (settings.port, settings.batch_wait_ms, settings.batching) == (9000, 2.5, False)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.page_dir == Path("/srv/page") and settings.model is None
    assert settings.max_queue == 5


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("CAPTIONER_BATCHING", "maybe", "CAPTIONER_BATCHING must be true or false"),
        ("CAPTIONER_BATCH_WAIT_MS", "soon", "CAPTIONER_BATCH_WAIT_MS must be a number"),
        ("CAPTIONER_DECODE_WORKERS", "0", "decode_workers must be an integer from 1 to 64"),
    ],
)
def test_bad_environment_values_are_named(name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerSettings.from_env({name: text})
