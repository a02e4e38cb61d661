"""Polycorn's exception types: the start-up errors, and the one an app's ``send()`` raises.

Only ``polycorn.cli`` turns the start-up errors into exit codes; everything below it raises them
so that embedding code (``Server.serve()``) can handle them like any other exception.
"""

from __future__ import annotations


class PolycornError(Exception):
    """Base of the errors that stop the server with one clear line instead of a traceback."""

    #: Process exit code the CLI uses for this error.
    exit_code = 1


class ConfigError(PolycornError):
    """An option value is invalid (usage error, like click's)."""

    exit_code = 2


class AppLoadError(PolycornError):
    """The application could not be imported or built.

    A distinct code lets supervisors (ours, systemd, gunicorn-style arbiters) tell "the app is
    broken" from "the worker crashed" and stop respawning.
    """

    exit_code = 4


class AppStartupError(PolycornError):
    """The application failed its lifespan start-up."""

    exit_code = 3


class BindError(PolycornError):
    """A listening socket could not be created (port in use, permission denied, bad path)."""

    exit_code = 1


class ClientDisconnected(OSError):
    """``send()`` after the client went away (ASGI HTTP spec 2.4: an OSError subclass).

    Defined here, not beside its users: the compiled build (setup.py) cannot compile a subclass
    of OSError, and this module stays plain Python.
    """
