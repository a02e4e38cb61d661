"""Config validation, immutability and pickling; the public API (Config, Server, run)."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import signal
import sys
from typing import Any

import httpx
import pytest

import polycorn
from polycorn.config import Config, cli_flag, option_fields
from polycorn.errors import AppLoadError, AppStartupError, BindError, ConfigError, PolycornError
from tests.apps import echo, hello
from tests.conftest import free_port
from tests.fixture_apps.process import FIXTURE_DIR, Child

# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"timeout_keep_alive": -1}, "--timeout-keep-alive"),
        ({"timeout_graceful_shutdown": -0.5}, "--timeout-graceful-shutdown"),
        ({"timeout_request_header": -1}, "--timeout-request-header"),
        ({"timeout_request_body": -1}, "--timeout-request-body"),
        ({"port": 65536}, "65535"),
        ({"port": -1}, "--port"),
        ({"port": "8000"}, "expected a number"),
        ({"port": True}, "expected a number"),
        ({"backlog": 0}, "--backlog"),
        ({"limit_concurrency": 0}, "--limit-concurrency"),
        ({"limit_request_line": 10}, "--limit-request-line"),
        ({"read_high_water": 10}, "--read-high-water"),
        ({"loop": "nope"}, "--loop"),
        ({"http": "h2"}, "--http"),
        ({"lifespan": "maybe"}, "--lifespan"),
        ({"log_level": "verbose"}, "--log-level"),
        ({"forwarded_allow_ips": "not-an-ip"}, "--forwarded-allow-ips"),
        ({"forwarded_allow_ips": "10.0.0.0/33"}, "--forwarded-allow-ips"),
        ({"forwarded_allow_ips": "127.0.0.1, 300.1.1.1"}, "300.1.1.1"),
        ({"headers": ("no colon",)}, "Name:Value"),
        ({"headers": ("bad name:x",)}, "not a valid header name"),
        ({"headers": ("X-Bad\r\nInjected:x",)}, "not a valid header name"),
        ({"headers": (("X-Bad", "a\nb"),)}, "control characters"),
        ({"headers": (("X-Bad", "snow \u2603"),)}, "latin-1"),
        ({"headers": (":value",)}, "not a valid header name"),
        ({"root_path": "api"}, "--root-path"),
        ({"uds": "/tmp/x.sock", "fd": 3}, "--uds and --fd"),
        ({"app": 42}, "import string"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
def test_invalid_options_raise_config_error(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**options)
    assert needle in str(info.value)
    assert info.value.exit_code == 2


def test_defaults_are_valid_and_match_the_table() -> None:
    config = Config()
    for f in option_fields():
        assert getattr(config, f.name) == f.default
        assert f.metadata["help"], f"{f.name} has no help text"
        assert cli_flag(f).startswith("--")
    assert option_fields()[0].name == "host"
    assert "app" not in {f.name for f in option_fields()}


def test_valid_values_are_normalised() -> None:
    config = Config(
        headers=("X-One: 1", ("X-Two", " two ")),
        log_level="WARNING",
        forwarded_allow_ips="10.0.0.0/8, ::1",
        root_path="/api",
        port=0,
        timeout_keep_alive=0,
    )
    assert config.headers == (("X-One", "1"), ("X-Two", "two"))
    assert config.log_level == "warning"
    nets = config.forwarded_networks
    assert nets is not None and [str(n) for n in nets] == ["10.0.0.0/8", "::1/128"]
    assert Config(forwarded_allow_ips="*").forwarded_networks is None
    assert Config().head_limit_h11 == Config().limit_request_head
    assert Config(h11_max_incomplete_event_size=4096).head_limit_h11 == 4096


def test_callable_app_is_accepted() -> None:
    assert Config(app=hello).app is hello


def test_config_is_frozen() -> None:
    config = Config(port=1234)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 80  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.headers = ()  # type: ignore[misc]
    assert config.port == 1234


def test_replace_returns_a_new_validated_config() -> None:
    config = Config(port=1234)
    other = config.replace(port=4321, headers=("X-A:b",))
    assert (config.port, other.port) == (1234, 4321)
    assert other.headers == (("X-A", "b"),)
    with pytest.raises(ConfigError):
        config.replace(port=99999)


def test_config_pickle_round_trip() -> None:
    config = Config(
        app="polycorn.demo:app",
        port=9999,
        headers=("X-A: 1",),
        forwarded_allow_ips="10.0.0.0/8",
        lifespan="on",
        limit_concurrency=10,
        timeout_graceful_shutdown=1.5,
    )
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy is not config
    assert copy.headers == (("X-A", "1"),)
    assert copy != config.replace(port=9998)


def test_error_exit_codes() -> None:
    assert issubclass(ConfigError, PolycornError)
    codes = [error.exit_code for error in (ConfigError, AppLoadError, AppStartupError, BindError)]
    assert codes == [2, 4, 3, 1]


# -- the public API ---------------------------------------------------------------------------------


def test_public_names_at_the_package_root() -> None:
    from polycorn import Config as RootConfig
    from polycorn import Server, run
    from polycorn.cli.main import run as cli_run
    from polycorn.loops.server import Server as LoopServer

    assert RootConfig is Config
    assert Server is LoopServer
    assert run is cli_run
    assert set(polycorn.__all__) >= {"Config", "Server", "run", "__version__"}
    with pytest.raises(AttributeError):
        polycorn.does_not_exist  # noqa: B018


def test_polycorn_run_in_a_script_returns_after_sigint() -> None:
    port = free_port()
    child = Child([sys.executable, f"{FIXTURE_DIR}/run_script.py", str(port)])
    try:
        assert child.url() == f"http://127.0.0.1:{port}"
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "Hello, world!"
        child.send_signal(signal.SIGINT)
        rc = child.wait(15)
    finally:
        child.kill()
    assert rc == 0, child.output
    assert "polycorn.run returned" in child.stdout
    assert "Traceback" not in child.output


def test_polycorn_run_with_bad_options_exits_2() -> None:
    child = Child([sys.executable, "-c", "import polycorn; polycorn.run('polycorn.demo:app', port=-5)"])
    try:
        rc = child.wait(15)
    finally:
        child.kill()
    assert rc == 2
    assert child.stderr.strip().startswith("Error: --port")
    assert "Traceback" not in child.stderr


def test_server_serve_embedded_in_a_running_loop() -> None:
    async def main() -> tuple[list[Any], bool]:
        server = polycorn.Server(Config(app=echo, port=0, lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve())
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, task
        port = server.bound[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            results = await asyncio.gather(*(client.post("/", content=b"x%d" % i) for i in range(5)))
        server.request_exit()
        await asyncio.wait_for(task, 10)
        return [(r.status_code, r.content) for r in results], server.started

    results, still_started = asyncio.run(main())
    assert results == [(200, b"x%d" % i) for i in range(5)]
    assert still_started is False


def test_server_serve_embedded_raises_typed_errors() -> None:
    async def main() -> None:
        await polycorn.Server(Config(app="no_such_module_abc:app", port=0)).serve()

    with pytest.raises(AppLoadError, match="no_such_module_abc"):
        asyncio.run(main())


def test_request_exit_before_serve_stops_at_once() -> None:
    async def main() -> bool:
        server = polycorn.Server(Config(app=hello, port=0, lifespan="off", log_level="warning"))
        server.request_exit()
        await asyncio.wait_for(server.serve(), 10)
        return bool(server.started)

    assert asyncio.run(main()) is False
