"""The ``polycorn`` command: flags -> one validated Config -> the server.

This is the only layer that turns errors into exit codes and one-line messages.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import click

from polycorn.config import Config, cli_flag, option_fields
from polycorn.errors import PolycornError
from polycorn.loops.server import Server, prepare_process
from polycorn.loops.supervisor import Supervisor, supervised
from polycorn.version import __version__


def _click_type(field_type: str, meta: Mapping[str, Any]) -> Any:
    if meta["kind"] == "choice":
        return click.Choice(meta["choices"], case_sensitive=False)
    if field_type.startswith("int"):
        return click.INT
    if field_type.startswith("float"):
        return click.FLOAT
    return click.STRING


def _params() -> list[click.Parameter]:
    params: list[click.Parameter] = [click.Argument(["app"], envvar="POLYCORN_APP")]
    for f in option_fields():
        meta = f.metadata
        flag = cli_flag(f)
        kind = meta["kind"]
        common: dict[str, Any] = {"help": meta["help"], "envvar": meta.get("envvar"), "show_default": True}
        if kind == "bool":
            params.append(click.Option([f"{flag}/--no-{flag[2:]}", f.name], default=f.default, **common))
        elif kind == "flag":
            params.append(click.Option([flag, f.name], is_flag=True, default=f.default, **common))
        elif kind == "multi":
            common["show_default"] = False
            params.append(click.Option([flag, f.name], multiple=True, metavar=meta["metavar"], **common))
        else:
            params.append(
                click.Option(
                    [flag, f.name],
                    type=_click_type(str(f.type), meta),
                    default=f.default,
                    metavar=meta["metavar"],
                    **common,
                )
            )
    return params


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def serve_config(config: Config) -> None:
    """Run the server for a validated config; errors become one line and an exit code."""
    try:
        prepare_process(config)
        if supervised(config):
            Supervisor(config).run()
        else:
            Server(config).run()
    except PolycornError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        pass


def _callback(app: str, **options: Any) -> None:
    try:
        config = Config(app=app, **options)
    except PolycornError as exc:
        _fail(str(exc), exc.exit_code)
    serve_config(config)


command = click.Command(
    "polycorn",
    callback=_callback,
    params=[
        *_params(),
        click.Option(
            ["--version"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=lambda ctx, _p, v: _print_version(ctx, v),
            help="Show the version and exit.",
        ),
    ],
    help="Serve the ASGI application APP ('module:attribute').",
    context_settings={"max_content_width": 100},
)


def _print_version(ctx: click.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        import platform

        click.echo(f"polycorn {__version__} ({platform.python_implementation()} {platform.python_version()})")
        ctx.exit()


def run(app: Any, **options: Any) -> None:
    """Programmatic entry point: ``polycorn.run("main:app", port=8080)``."""
    try:
        config = Config(app=app, **options)
    except PolycornError as exc:
        _fail(str(exc), exc.exit_code)
    serve_config(config)


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="polycorn")
