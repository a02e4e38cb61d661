"""The ``polycorn`` command: flags, environment and config file -> one validated Config -> the server.

This is the only layer that turns errors into exit codes and one-line messages, and the only one
that reads the environment and config files: ``polycorn.run()`` and ``Config`` take keywords only.

Precedence is click's own order of sources: the command line, then the option's environment
variables, then the context's ``default_map`` (which holds the config file), then the default.
The config file and the --env-file are read in :meth:`PolycornCommand.parse_args`, before click
resolves any value, so that POLYCORN_* variables in the .env file count as environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import click
from click.core import ParameterSource

from polycorn.config import Config, cli_flag, envvar_name, envvars, option_fields
from polycorn.config_file import ConfigFile, find_config_file, read_config_file, read_env_file, render_toml
from polycorn.errors import ConfigError, PolycornError
from polycorn.loops.server import Server, prepare_process
from polycorn.loops.supervisor import Supervisor, supervised
from polycorn.version import __version__

#: ctx.meta keys: the ConfigFile read for this invocation (or None), and the --env-file path with
#: the names of the variables it set (for --print-config's comments).
_FILE_KEY = "polycorn.config_file"
_ENV_FILE_KEY = "polycorn.env_file"

#: The variable naming the config file (--config is no Config field: it chooses where they come from).
CONFIG_ENVVAR = "POLYCORN_CONFIG"


class _Lines(click.types.StringParamType):
    """A repeatable option's type: its environment variable holds one value per line.

    Click splits on whitespace by default, but a header value or a path may contain spaces and
    commas; it cannot contain a newline. Blank lines and the spaces around a value are ignored.
    """

    envvar_list_splitter: ClassVar[str] = "\n"

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return [line.strip() for line in rv.splitlines() if line.strip()]


def _click_type(field_type: str, meta: Mapping[str, Any]) -> Any:
    if meta["kind"] == "choice":
        return click.Choice(meta["choices"], case_sensitive=False)
    if "str" in field_type:  # e.g. --workers: a number or 'auto', checked by Config
        return click.STRING
    if field_type.startswith("int"):
        return click.INT
    if field_type.startswith("float"):
        return click.FLOAT
    return click.STRING


_APP = click.Argument(["app"], envvar="POLYCORN_APP", required=False, metavar="APP")


def _params() -> list[click.Parameter]:
    params: list[click.Parameter] = [_APP]
    for f in option_fields():
        meta = f.metadata
        flag = cli_flag(f)
        kind = meta["kind"]
        common: dict[str, Any] = {
            "help": meta["help"],
            "envvar": envvars(f),
            "show_envvar": True,
            "show_default": True,
        }
        if kind == "bool":
            params.append(click.Option([f"{flag}/--no-{flag[2:]}", f.name], default=f.default, **common))
        elif kind == "flag":
            params.append(click.Option([flag, f.name], is_flag=True, default=f.default, **common))
        elif kind == "multi":
            common["show_default"] = False
            params.append(click.Option([flag, f.name], multiple=True, type=_Lines(), metavar=meta["metavar"], **common))
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


class _SourceError(click.ClickException):
    """A bad config or env file: one 'Error:' line and exit code 2, like a ConfigError."""

    exit_code = 2


class PolycornCommand(click.Command):
    """The command, with the config file and --env-file read before click resolves the values."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not ctx.resilient_parsing:
            self._read_sources(ctx, args)
        return super().parse_args(ctx, args)

    def _read_sources(self, ctx: click.Context, args: list[str]) -> None:
        """Choose and read the config file, then load the .env file into the environment.

        The two options that choose them are looked up in a first, side-effect-free parse of the
        arguments; a parse error is left for click's real parse to report.
        """
        try:
            opts, _, order = self.make_parser(ctx).parse_args(args=list(args))
        except click.UsageError:
            return
        if any(param.is_eager for param in order):
            return  # --help and --version work whatever state the files are in

        def given(name: str) -> str | None:
            value = opts.get(name)
            return value if isinstance(value, str) and value else None

        try:
            path = given("config") or os.environ.get(CONFIG_ENVVAR)
            file = read_config_file(path) if path else find_config_file()
            if file is not None:
                ctx.default_map = {**(ctx.default_map or {}), **file.values}
            ctx.meta[_FILE_KEY] = file
            env_file = (
                given("env_file")
                or os.environ.get(envvar_name("env_file"))
                or (file.values.get("env_file") if file else None)
            )
            if env_file:
                variables = read_env_file(env_file)
                for name in (CONFIG_ENVVAR, envvar_name("env_file")):  # they were needed before it was read
                    if name in variables:
                        raise ConfigError(
                            f"{env_file}: {name} cannot be set in the --env-file: the config and env files "
                            "are chosen before it is read"
                        )
                # Its variables replace the process environment's, for the app (as prepare_process
                # does again) and for the POLYCORN_* options click is about to read.
                os.environ.update(variables)
                ctx.meta[_ENV_FILE_KEY] = (env_file, frozenset(variables))
        except ConfigError as exc:
            raise _SourceError(str(exc)) from None


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


def _sources(ctx: click.Context) -> dict[str, str]:
    """Where each explicitly set value came from: ``--flag``, ``$VARIABLE`` or the config file."""
    file: ConfigFile | None = ctx.meta.get(_FILE_KEY)
    sources: dict[str, str] = {}
    for param in ctx.command.params:
        name = param.name
        if not name or not param.expose_value:
            continue
        source = ctx.get_parameter_source(name)
        if source is ParameterSource.COMMANDLINE:
            if isinstance(param, click.Option):
                used = param.secondary_opts if param.secondary_opts and ctx.params[name] is False else param.opts
                sources[name] = used[0]
            else:
                sources[name] = "the command line"
        elif source is ParameterSource.ENVIRONMENT:
            names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
            var = next((var for var in names if os.environ.get(var)), None)
            env_file, from_file = ctx.meta.get(_ENV_FILE_KEY, ("", frozenset()))
            sources[name] = f"${var}" + (f" in {env_file}" if var in from_file else "") if var else "the environment"
        elif source is ParameterSource.DEFAULT_MAP and file is not None:
            sources[name] = file.path
    return sources


def _source_hint(message: str, sources: Mapping[str, str]) -> str:
    """Add where the value came from to a Config error about one option (``--port: ...``)."""
    flag, sep, _ = message.partition(":")
    if sep and flag.startswith("--"):
        for f in option_fields():
            if cli_flag(f) == flag and f.name in sources and not sources[f.name].startswith("--"):
                return f"{message} (from {sources[f.name]})"
    return message


def _print_config(ctx: click.Context, config: Config, *, app_set: bool) -> None:
    file: ConfigFile | None = ctx.meta.get(_FILE_KEY)
    if file is None:
        read = "no config file read"
    else:
        read = f"read from {file.path}" + (f" [{file.table}]" if file.table else "")
    heading = (
        f"Polycorn's effective configuration ({read}).\n"
        "Save it as polycorn.toml, or under [tool.polycorn] in pyproject.toml."
    )
    click.echo(render_toml(config, _sources(ctx), app_set=app_set, heading=heading), nl=False)


def _callback(app: str | None, print_config: bool, **options: Any) -> None:
    ctx = click.get_current_context()
    if app is None and not print_config:
        raise click.MissingParameter(ctx=ctx, param=_APP)
    try:
        config = Config(**options) if app is None else Config(app=app, **options)
    except PolycornError as exc:
        _fail(_source_hint(str(exc), _sources(ctx)), exc.exit_code)
    if print_config:
        _print_config(ctx, config, app_set=app is not None)
        return
    serve_config(config)


def _print_version(ctx: click.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        import platform

        click.echo(f"polycorn {__version__} ({platform.python_implementation()} {platform.python_version()})")
        ctx.exit()


command = PolycornCommand(
    "polycorn",
    callback=_callback,
    params=[
        *_params(),
        click.Option(
            ["--config"],
            metavar="PATH",
            envvar=CONFIG_ENVVAR,
            show_envvar=True,
            expose_value=False,
            help="Read options from this TOML file: a polycorn.toml, or a pyproject.toml's [tool.polycorn] "
            "table (default: ./polycorn.toml, else ./pyproject.toml if it has the table).",
        ),
        click.Option(
            ["--print-config"],
            is_flag=True,
            help="Print the effective configuration as TOML, with where each value came from, and exit.",
        ),
        click.Option(
            ["--version"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=lambda ctx, _p, v: _print_version(ctx, v),
            help="Show the version and exit.",
        ),
    ],
    help="Serve the ASGI application APP ('module:attribute', or $POLYCORN_APP).\n\n"
    "Each option is read from the command line, else from its POLYCORN_* environment variable, "
    "else from the config file, else its default.",
    context_settings={"max_content_width": 100},
)


def run(app: Any, **options: Any) -> None:
    """Programmatic entry point: ``polycorn.run("main:app", port=8080)``.

    Keywords only: no environment variables or config files are read, so embedding code gets
    exactly what it asked for.
    """
    try:
        config = Config(app=app, **options)
    except PolycornError as exc:
        _fail(str(exc), exc.exit_code)
    serve_config(config)


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="polycorn")
