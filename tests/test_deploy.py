"""The deployment files are valid: docker-compose.yml passes `docker compose config`, and
deploy/nginx.conf passes `nginx -t` and routes websockets sticky by room through a real nginx.

No container engine runs here, so compose is checked with `config` only. The tools are installed
(Debian packages, as root) when missing; these tests are never skipped.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tests.support.tcpproxy import closed_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
APT_INSTALL = ROOT / "scripts" / "apt-install"
DEADLINE_S = 10.0
REQUIRED_SERVICES = {"redis", "postgres", "node1", "node2", "lb"}


def _install(package: str) -> None:
    subprocess.run([str(APT_INSTALL), package], check=True, timeout=600)


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """The compose command: the docker CLI plugin if present, else docker-compose (installed if needed)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if not shutil.which("docker-compose"):
        _install("docker-compose")
    path = shutil.which("docker-compose")
    assert path, "docker-compose is still missing after installing Debian's docker-compose package"
    return [path]


@pytest.fixture(scope="module")
def nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        _install("nginx-light")
        found = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.access(found, os.X_OK), f"nginx is still missing after installing nginx-light ({found})"
    return found


def _run_compose(compose: list[str], *args: str, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "PAIRROOM_"))}
    if secret is not None:
        env["PAIRROOM_SECRET"] = secret
    return subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_compose_file_is_valid(compose: list[str]) -> None:
    result = _run_compose(compose, "config", "-q", secret="test-secret")
    assert result.returncode == 0, result.stderr
    services = _run_compose(compose, "config", "--services", secret="test-secret")
    assert services.returncode == 0, services.stderr
    assert REQUIRED_SERVICES <= set(services.stdout.split()), services.stdout


def test_compose_refuses_to_run_without_a_secret(compose: list[str]) -> None:
    result = _run_compose(compose, "config", "-q", secret=None)
    assert result.returncode != 0
    assert "set a secret" in result.stderr


def test_compose_nodes_get_their_settings(compose: list[str]) -> None:
    result = _run_compose(compose, "config", secret="test-secret")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "PAIRROOM_DB: postgresql+asyncpg://pairroom:" in text
    assert "PAIRROOM_REDIS: redis://redis:6379/0" in text
    assert "PAIRROOM_SECRET: test-secret" in text
    assert "nginx.conf:/etc/nginx/nginx.conf:ro" in text


def test_the_image_has_git_and_each_node_keeps_its_repositories(compose: list[str]) -> None:
    """Version control drives the git command line: the image installs git (and ssh for ssh://
    remotes), and each compose node's git root is a volume of its own, so a restart loses no commit."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = re.search(r"apt-get install -y --no-install-recommends ([^\n\\]+)", dockerfile)
    assert install and {"git", "openssh-client"} <= set(install.group(1).split())
    assert "ENV PAIRROOM_GIT_ROOT=/var/lib/pairroom/git" in dockerfile
    assert "-o pairroom -g pairroom /var/lib/pairroom/git" in dockerfile  # writable by the server's user
    result = _run_compose(compose, "config", "--volumes", secret="test-secret")
    assert result.returncode == 0, result.stderr
    assert {"git1", "git2", "git3"} <= set(result.stdout.split())
    text = COMPOSE_FILE.read_text()
    for n in (1, 2, 3):
        assert re.search(
            rf"\n  node{n}:\n    <<: \*node\n    volumes:\n      - git{n}:/var/lib/pairroom/git\n", text
        ), n


# -- nginx ---------------------------------------------------------------------------------------------


def _local_copy(directory: Path, listen_port: int, backends: list[int]) -> Path:
    """deploy/nginx.conf with the nodes, the listening port and the paths made local."""
    text = NGINX_CONF.read_text()
    servers = re.findall(r"server node\d+:8000", text)
    assert len(servers) >= 2, "the upstream should list the compose nodes"
    assert len(backends) == len(servers)
    for server, port in zip(servers, backends):
        text = text.replace(server, f"server 127.0.0.1:{port}", 1)
    text = re.sub(r"(?m)^pid .*$", f"pid {directory}/nginx.pid;", text)
    text = re.sub(r"(?m)^worker_processes .*$", "worker_processes 1;", text)
    text = re.sub(r"(?m)^error_log .*$", f"error_log {directory}/error.log warn;", text)
    text = text.replace("access_log /dev/stdout;", "access_log off;")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    # Temporary files under our directory, so nginx runs without root too.
    temp = "".join(
        f"\n    {kind}_temp_path {directory}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {", "http {" + temp, 1)
    conf = directory / "nginx.conf"
    conf.write_text(text)
    return conf


def test_nginx_conf_passes_nginx_t(nginx: str, tmp_path: Path) -> None:
    conf = _local_copy(tmp_path, closed_port(), [closed_port() for _ in range(3)])
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


class Node:
    """A stand-in pairroom node: a websocket server that says its name and echoes, plus /healthz."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: Server | None = None
        self.upgrade_headers: list[Headers] = []

    async def start(self) -> Node:
        self.server = await serve(self._handler, "127.0.0.1", 0, process_request=self._http)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return conn.respond(200, f"{self.name}\n")
        self.upgrade_headers.append(request.headers)
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        await ws.send(f"{self.name} {ws.request.path if ws.request else ''}")
        async for message in ws:
            await ws.send(message)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    started = [await Node(f"node{i}").start() for i in (1, 2, 3)]
    yield started
    for node in started:
        await node.stop()


@pytest.fixture
def running_nginx(nginx: str, nodes: list[Node], tmp_path: Path) -> Iterator[int]:
    port = closed_port()
    conf = _local_copy(tmp_path, port, [n.port for n in nodes])
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf),
         "-g", "daemon off;"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:  # bounded: until nginx answers its own health check or the deadline
            try:
                if httpx.get(f"http://127.0.0.1:{port}/lb-healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, f"nginx exited: {proc.stderr.read() if proc.stderr else ''}"
            assert time.monotonic() < deadline, "nginx did not answer /lb-healthz in time"
            time.sleep(0.02)
        yield port
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop; SIGKILL if it lingers
        try:
            proc.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(DEADLINE_S)
        if proc.stderr:
            proc.stderr.close()


async def _node_for(port: int, room: str, token: str) -> str:
    url = f"ws://127.0.0.1:{port}/yjs/{room}?token={token}"
    async with asyncio.timeout(DEADLINE_S):
        async with websockets.connect(url) as ws:
            hello = str(await ws.recv())
            await ws.send(b"\x00\x01")
            assert await ws.recv() == b"\x00\x01"  # binary frames pass both ways
    name, path = hello.split(" ", 1)
    assert path == f"/yjs/{room}?token={token}"
    return name


async def test_nginx_routes_websockets_sticky_by_room(running_nginx: int, nodes: list[Node]) -> None:
    port = running_nginx
    placement: dict[str, str] = {}
    for i in range(24):
        room = f"room-{i}"
        first = await _node_for(port, room, "ada")
        # Another member with another token: the same node, whatever the query string.
        assert await _node_for(port, room, "grace") == first
        placement[room] = first
    assert len(set(placement.values())) >= 2, placement  # rooms spread over the nodes
    upgrade = nodes[0].upgrade_headers or nodes[1].upgrade_headers or nodes[2].upgrade_headers
    assert upgrade[0]["Upgrade"].lower() == "websocket"
    assert upgrade[0]["Connection"].lower() == "upgrade"
    assert "X-Forwarded-For" in upgrade[0]

    async with httpx.AsyncClient(timeout=DEADLINE_S) as http:
        health = await http.get(f"http://127.0.0.1:{port}/healthz")
    assert health.status_code == 200 and health.text.strip() in {n.name for n in nodes}

    # A node dies: its rooms reconnect to another node, and the other rooms stay where they were.
    victim = next(n for n in nodes if n.name in placement.values())
    await victim.stop()
    for room, name in placement.items():
        now = await _node_for(port, room, "ada")
        if name == victim.name:
            assert now != victim.name
        else:
            assert now == name, room
