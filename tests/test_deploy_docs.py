"""What the deployment and migration docs ship or claim, checked against the real thing.

* docs/deploy/Dockerfile: CI has no Docker daemon and no registry, so the image is never built
  here. What can be checked without one is: the base images, the COPY sources and the ignore file,
  the user, port, stop signal and health check, the CMD's arguments parsed by Polycorn's own
  command line, and the health check's command run against a real server.
* docs/deploy/kubernetes.yaml: parsed with PyYAML; the container's arguments parsed by the command
  line, the termination grace period against the preStop sleep and the graceful shutdown, and the
  probes' path asked of a real server running the manifest's app.
* docs/deploy/nginx.md: its nginx configuration, run by a real nginx in front of a real Polycorn
  (where nginx is installed: CI installs it), for keep-alive and a WebSocket.
* docs/migrating-from-*.md: every Polycorn flag the tables name exists; every gunicorn (and, where
  it is installed, uvicorn) flag they name exists in that server's own command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from polycorn.config import Config, cli_flag, option_fields
from tests.conftest import RunningServer, free_port
from tests.test_nginx import NGINX, run_nginx

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
MANIFEST = DEPLOY / "kubernetes.yaml"
NGINX_DOC = DEPLOY / "nginx.md"
MIGRATIONS = {
    "uvicorn": ROOT / "docs" / "migrating-from-uvicorn.md",
    "gunicorn": ROOT / "docs" / "migrating-from-gunicorn.md",
}

#: Seconds past --timeout-graceful-shutdown that a stop may take (docs/deployment.md): up to 5 s for
#: cancelled requests to end, and the supervisor kills a worker 10 s after the grace period.
SHUTDOWN_MARGIN = 15

#: What `pip install /src` reads from the build context (pyproject.toml names README.md as the readme).
PACKAGE_PATHS = ["pyproject.toml", "README.md", "engine", "loops", "cli"]


# -- Polycorn's command line ------------------------------------------------------------------------


def cli_config(args: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> Config:
    """Parse ``args`` (everything after ``polycorn``) with the real click command, then build the Config.

    The environment is cleared of every variable the command reads, then given ``env``: the result
    depends on the arguments and ``env`` alone.
    """
    from polycorn.cli.main import command

    for name in list(os.environ):
        if name.startswith("POLYCORN_") or name in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
            monkeypatch.delenv(name)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    ctx = command.make_context("polycorn", list(args))
    fields = {f.name for f in dataclasses.fields(Config)}
    options = {k: v for k, v in ctx.params.items() if k in fields}
    return Config(**options)


def cli_flags() -> set[str]:
    """Every long option the real command line accepts, both halves of --x/--no-x included."""
    from polycorn.cli.main import command

    flags = {"--help"}
    for param in command.params:
        flags.update(o for o in [*param.opts, *getattr(param, "secondary_opts", [])] if o.startswith("--"))
    return flags


# -- the Dockerfile ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def last(self, keyword: str) -> Instruction:
        found = [i for i in self.instructions if i.keyword == keyword]
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


def dockerfile_stages(text: str) -> list[Stage]:
    """The build stages, each with its base image (ARGs declared before the first FROM resolved)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in dockerfile_instructions(text):
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.args.partition("=")
            args[name.strip()] = default.strip()
        elif instruction.keyword == "FROM":
            parts = [p for p in instruction.args.split() if not p.startswith("--platform")]
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(_substitute(parts[0], args), name, []))
        else:
            assert stages, f"line {instruction.line}: {instruction.keyword} before the first FROM"
            stages[-1].instructions.append(instruction)
    return stages


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON list of an exec-form CMD or HEALTHCHECK CMD; fails for the shell form."""
    text = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        _options, sep, text = text.partition("CMD ")
        assert sep, f"line {instruction.line}: HEALTHCHECK without CMD"
    value = json.loads(text) if text.startswith("[") else None
    assert isinstance(value, list), f"line {instruction.line}: {instruction.keyword} is not in exec (JSON) form"
    return [str(v) for v in value]


def copy_sources(instruction: Instruction) -> list[str] | None:
    """The context paths a COPY reads; None when it copies from another stage."""
    if instruction.args.startswith("["):
        parts = json.loads(instruction.args)
        flags: list[str] = []
    else:
        words = shlex.split(instruction.args)
        flags = [w for w in words if w.startswith("--")]
        parts = [w for w in words if not w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return None
    assert len(parts) >= 2, f"line {instruction.line}: COPY needs a source and a destination"
    return [str(p) for p in parts[:-1]]


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line: Go's filepath.Match with Docker's ``**``, paths relative to the context."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + "[" + pattern[i + 1 : end].replace("^", "\\^", 1) + "]", end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exclude, re.compile(regex + r"\Z")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves ``path`` out: the last rule matching it or a parent decides."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for exclude, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = exclude
    return result


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))


def test_dockerfile_parser_reads_stages_continuations_and_forms() -> None:
    text = (
        "# comment\nARG V=3.12\nFROM python:${V}-slim AS build\nRUN a \\\n    b\n"
        'FROM python:${V}-slim\nCOPY --from=build /x /x\nCOPY . /src\nCMD ["polycorn", "x:app"]\nCMD polycorn x:app\n'
    )
    first, second = dockerfile_stages(text)
    assert (first.base, first.name, second.base, second.name) == ("python:3.12-slim", "build", "python:3.12-slim", None)
    assert first.instructions == [Instruction(4, "RUN", "a b")]
    copies = [copy_sources(i) for i in second.instructions if i.keyword == "COPY"]
    assert copies == [None, ["."]]
    assert exec_form(second.instructions[2]) == ["polycorn", "x:app"]
    with pytest.raises(AssertionError, match="exec"):
        exec_form(second.instructions[3])


def test_dockerignore_matching_follows_docker_rules() -> None:
    rules = dockerignore_patterns("**/__pycache__\n*.md\n!README*.md\nbuild\n/docs/x*\n")
    assert ignored("engine/__pycache__/a.pyc", rules) and ignored("__pycache__", rules)
    assert ignored("NOTES.md", rules) and not ignored("README.md", rules) and not ignored("docs/a.md", rules)
    assert ignored("build/lib/x.py", rules) and not ignored("engine/build.py", rules)
    assert ignored("docs/xyz/a.py", rules) and not ignored("docs/y.py", rules)


def test_dockerfile_base_images_are_the_official_python_image(stages: list[Stage]) -> None:
    assert len(stages) >= 1
    names: list[str] = []
    for stage in stages:
        official = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:[\w.-]+", stage.base)
        assert official or stage.base in names, f"FROM {stage.base}: not the official python image or an earlier stage"
        if official:
            assert "slim" in stage.base or "alpine" in stage.base, f"FROM {stage.base}: not a slim image"
        if stage.name:
            names.append(stage.name)


def test_dockerfile_copy_sources_exist_and_are_not_ignored(stages: list[Stage]) -> None:
    rules = dockerignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))
    copied = [
        src for stage in stages for i in stage.instructions if i.keyword == "COPY" for src in copy_sources(i) or []
    ]
    assert copied, "the Dockerfile copies nothing from the build context"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository (the build context)"
        if source not in (".", "./"):
            assert not ignored(source, rules), f"COPY {source}: excluded by {DOCKERIGNORE.name}"
    if "." in copied or "./" in copied:
        # `COPY . /src` then `pip install /src`: what pip reads must survive the ignore file ...
        needed = [
            path.relative_to(ROOT).as_posix()
            for top in PACKAGE_PATHS
            for path in ([ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*.py"))
        ]
        assert len(needed) > 10
        dropped = [p for p in needed if ignored(p, rules)]
        assert dropped == [], f"{DOCKERIGNORE.name} excludes files pip needs: {dropped}"
        # ... and the ignore file does keep the bulk out.
        for heavy in (".git/HEAD", ".venv-ci/bin/python", "engine/__pycache__/config.cpython-311.pyc"):
            assert ignored(heavy, rules), f"{heavy} would be sent to the Docker daemon"


def test_dockerfile_final_stage_user_port_signal_and_command(
    stages: list[Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    final = stages[-1]
    user = final.last("USER").args
    uid = user.partition(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: not a numeric non-root user"
    assert final.last("STOPSIGNAL").args == "SIGTERM"
    cmd = exec_form(final.last("CMD"))
    assert cmd[0] == "polycorn", cmd
    config = cli_config(cmd[1:], monkeypatch)
    assert config.app == "polycorn.demo:app"
    assert config.host == "0.0.0.0", "bound to loopback inside a container, it is unreachable"
    assert config.workers == "auto"
    assert final.last("EXPOSE").args.split("/")[0] == str(config.port)


def test_dockerfile_healthcheck_works_against_a_real_server(
    stages: list[Stage], serve: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    final = stages[-1]
    check = exec_form(final.last("HEALTHCHECK"))
    assert check[:2] == ["python", "-c"], "a slim image has no curl: the check must use Python"
    cmd = exec_form(final.last("CMD"))
    config = cli_config(cmd[1:], monkeypatch)
    url = f"http://127.0.0.1:{config.port}/"
    assert url in check[2], f"the health check does not ask the port the server listens on: {check[2]}"

    srv = serve(config.app, log_level="warning")  # the image's app, here on a free port
    code = check[2].replace(url, f"http://127.0.0.1:{srv.port}/")
    ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    srv.stop()
    down = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert down.returncode != 0, "the health check passes with no server"


# -- the Kubernetes manifest ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if d]
    by_kind = {d["kind"]: d for d in documents}
    assert len(by_kind) == len(documents), "one document per kind expected"
    assert {"Deployment", "Service"} <= set(by_kind)
    return by_kind


def _container(manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = manifest["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _downward_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes would set it (values, and CPU limits via the downward API)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu", f"{item['name']}: only limits.cpu is understood here"
        limit = _millicores(container["resources"]["limits"]["cpu"])
        env[item["name"]] = str(math.ceil(limit / _millicores(ref.get("divisor", "1"))))  # rounded up
    return env


def _millicores(quantity: object) -> int:
    """A Kubernetes CPU quantity ("2", "1.5", "1500m") in thousandths of a CPU."""
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def _port_number(container: dict[str, Any], port: int | str) -> int:
    for item in container["ports"]:
        if port in (item.get("name"), item["containerPort"]):
            return int(item["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of the container")


def _manifest_config(manifest: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Config:
    container = _container(manifest)
    assert container["command"] == ["polycorn"], "command replaces the image's CMD: it must run polycorn"
    return cli_config([str(a) for a in container["args"]], monkeypatch, _downward_env(container))


def test_manifest_args_parse_with_the_real_cli(
    manifest: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _container(manifest)
    config = _manifest_config(manifest, monkeypatch)
    assert config.host == "0.0.0.0"
    assert config.port == _port_number(container, "http")
    cpus = math.ceil(_millicores(container["resources"]["limits"]["cpu"]) / 1000)
    assert config.workers == cpus, "one worker per CPU of the limit (WEB_CONCURRENCY from the downward API)"


def test_termination_grace_period_covers_prestop_and_graceful_shutdown(
    manifest: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = manifest["Deployment"]["spec"]["template"]["spec"]
    pre_stop = _container(manifest)["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", f"preStop {command}: a sleep expected"
        sleep = float(command[1])
    assert sleep > 0
    config = _manifest_config(manifest, monkeypatch)
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > sleep + config.timeout_graceful_shutdown, (
        f"terminationGracePeriodSeconds {grace} <= preStop {sleep:g} + --timeout-graceful-shutdown "
        f"{config.timeout_graceful_shutdown:g}: Kubernetes would kill in-flight requests"
    )
    # The margin the docs ask for: cancelled requests (5 s), then the supervisor's deadline (+10 s).
    assert grace >= sleep + config.timeout_graceful_shutdown + SHUTDOWN_MARGIN


def test_probes_ask_for_a_path_the_app_serves(
    manifest: dict[str, dict[str, Any]], serve: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _container(manifest)
    config = _manifest_config(manifest, monkeypatch)
    probes = {k: v for k, v in container.items() if k in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    srv = serve(config.app, log_level="warning")
    with httpx.Client(timeout=30, trust_env=False) as client:
        for name, probe in probes.items():
            check = probe["httpGet"]
            assert _port_number(container, check["port"]) == config.port, f"{name} asks another port"
            status = client.get(f"{srv.url}{check['path']}").status_code
            assert 200 <= status < 400, (
                f"{name}: {check['path']} answers {status}, which Kubernetes counts as a failure"
            )


def test_service_and_budget_select_the_pods_and_the_pod_runs_as_the_image_user(
    manifest: dict[str, dict[str, Any]], stages: list[Stage]
) -> None:
    deployment = manifest["Deployment"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    service = manifest["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    for port in service["ports"]:
        _port_number(_container(manifest), port["targetPort"])
    if "PodDisruptionBudget" in manifest:
        budget = manifest["PodDisruptionBudget"]["spec"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        assert budget["minAvailable"] < deployment["replicas"], "the budget would block every voluntary eviction"
    security = deployment["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == stages[-1].last("USER").args.partition(":")[0]


# -- the nginx configuration of docs/deploy/nginx.md ------------------------------------------------


def nginx_block_of_the_docs() -> str:
    text = NGINX_DOC.read_text(encoding="utf-8")
    match = re.search(r"^```nginx\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, f"no nginx block in {NGINX_DOC}"
    return match.group(1)


async def proxied_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """HTTP: the request headers and the upstream connection's port; WebSocket: an echo."""
    if scope["type"] == "websocket":
        await receive()
        headers = dict(scope["headers"])
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": headers.get(b"connection", b"").decode()})
        while (event := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": event.get("text"), "bytes": event.get("bytes")})
        return
    if scope["type"] != "http":
        return
    body = json.dumps(
        {"port": scope["client"][1], "headers": {k.decode(): v.decode() for k, v in scope["headers"]}}
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def docs_nginx(tmp_path: Path, serve: Callable[..., RunningServer]) -> Iterator[int]:
    """nginx running the docs' configuration in front of Polycorn; yields nginx's port."""
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it)")
    # No proxy headers: scope["client"] is then nginx's end of the upstream connection.
    srv = serve(proxied_app, log_level="warning", proxy_headers=False, timeout_keep_alive=65)
    port = free_port()
    config = nginx_block_of_the_docs()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{port};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{srv.port};"),
    ):
        assert config.count(old) == 1, f"{old!r} is no longer in the docs' configuration: update this test"
        config = config.replace(old, new)
    proxy = run_nginx(tmp_path, port, config, timeout=30)
    try:
        yield port
    finally:
        proxy.stop()


def test_docs_nginx_config_keeps_upstream_connections_alive(docs_nginx: int) -> None:
    with httpx.Client(timeout=30, trust_env=False) as client:
        answers = [client.get(f"http://127.0.0.1:{docs_nginx}/n/{i}").json() for i in range(20)]
    headers = answers[0]["headers"]
    assert "connection" not in headers, "nginx sent a Connection header: Polycorn would close after each response"
    assert headers["x-forwarded-proto"] == "http" and headers["x-forwarded-for"] == "127.0.0.1"
    upstream_ports = {a["port"] for a in answers}
    # Sequential requests reuse the idle upstream connection; without keep-alive there would be 20.
    assert len(upstream_ports) <= 2, f"{len(upstream_ports)} upstream connections for 20 sequential requests"


def test_docs_nginx_config_passes_websockets(docs_nginx: int) -> None:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{docs_nginx}/ws", open_timeout=30, close_timeout=10) as ws:
        assert str(ws.recv(timeout=30)).lower() == "upgrade"  # the Connection header Polycorn saw
        ws.send("hello through nginx")
        assert ws.recv(timeout=30) == "hello through nginx"


# -- the migration tables -----------------------------------------------------------------------------


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header cells, rows of cells) of every pipe table outside code blocks."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    lines = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL).splitlines()

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    i = 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.fullmatch(
            r"\s*\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*\|?\s*", lines[i + 1]
        ):
            header, rows = cells(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def flags_in(cell: str) -> list[str]:
    """The long and short options named in a cell's code spans (values and `=` dropped)."""
    found = []
    for span in re.findall(r"`([^`]+)`", cell):
        for word in span.split():
            match = re.fullmatch(r"(--?[A-Za-z][\w-]*)(=.*)?", word)
            if match:
                found.append(match.group(1))
    return found


def migration_flags(server: str) -> tuple[list[str], list[str]]:
    """(Polycorn flags, the other server's flags) named in a migration page's tables ("same" counts as both)."""
    polycorn: list[str] = []
    theirs: list[str] = []
    for header, rows in markdown_tables(MIGRATIONS[server].read_text(encoding="utf-8")):
        if "Polycorn" not in header:
            continue
        ours_at = header.index("Polycorn")
        theirs_at = header.index(server) if server in header else None
        for row in rows:
            other = flags_in(row[theirs_at]) if theirs_at is not None else []
            theirs += other
            if row[ours_at].lower() == "same":
                polycorn += [f for f in other if f.startswith("--")]
            else:
                polycorn += flags_in(row[ours_at])
    return polycorn, theirs


@pytest.mark.parametrize("server", sorted(MIGRATIONS))
def test_migration_tables_name_only_real_polycorn_flags(server: str) -> None:
    named, theirs = migration_flags(server)
    assert len(theirs) > 40, f"the {server} tables look empty"
    unknown = sorted(set(named) - cli_flags())
    assert unknown == [], f"docs/migrating-from-{server}.md names Polycorn flags that do not exist: {unknown}"


def test_migration_from_uvicorn_covers_every_polycorn_option() -> None:
    named = set(migration_flags("uvicorn")[0])
    missing = [cli_flag(f) for f in option_fields() if cli_flag(f) not in named]
    assert missing == [], f"docs/migrating-from-uvicorn.md does not mention: {missing}"


def test_migration_from_gunicorn_names_only_real_gunicorn_flags() -> None:
    from gunicorn.config import Config as GunicornConfig  # type: ignore[import-untyped]

    parser = GunicornConfig().parser()
    real = {o for action in parser._actions for o in action.option_strings}
    _, named = migration_flags("gunicorn")
    unknown = sorted(set(named) - real)
    assert unknown == [], f"docs/migrating-from-gunicorn.md names gunicorn flags that do not exist: {unknown}"


def test_migration_from_uvicorn_names_only_real_uvicorn_flags() -> None:
    uvicorn_main = pytest.importorskip(
        "uvicorn.main", reason="uvicorn is not a test dependency; checked where installed"
    )
    real = {o for param in uvicorn_main.main.params for o in [*param.opts, *getattr(param, "secondary_opts", [])]}
    real.add("--help")
    _, named = migration_flags("uvicorn")
    unknown = sorted(set(named) - real)
    assert unknown == [], f"docs/migrating-from-uvicorn.md names uvicorn flags that do not exist: {unknown}"


def test_markdown_table_reader() -> None:
    text = "| a | Polycorn |\n|---|---|\n| `--x 1` | same |\n| `-y`, `--z=3` | `--q` / `--no-q` |\n\n```\n| no | table |\n|---|---|\n```\n"
    assert markdown_tables(text) == [(["a", "Polycorn"], [["`--x 1`", "same"], ["`-y`, `--z=3`", "`--q` / `--no-q`"]])]
    assert flags_in("`-y`, `--z=3` and `--q` / `--no-q`") == ["-y", "--z", "--q", "--no-q"]
