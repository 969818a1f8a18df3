"""The ``git`` command line, driven safely: one hardened way to start it, and the remote URL policy.

Why the git CLI and not dulwich or pygit2: the CLI is already on every machine pairroom runs on
(Debian's git 2.39.5 here, with the 2024 clone fixes), speaks every transport and credential form
operators use (https with a token header, ssh with a key) and has ``merge-tree --write-tree`` for
merges without a work tree. dulwich would add a pure-Python reimplementation of the protocol to
trust, pygit2 a native libgit2 build; neither is needed.

How git is kept to the server's side and to its own directory:

- every repository is **bare** and lives in a directory only the server can read (never in a room's
  workspace, which room code owns): git never checks out, so it never writes, reads or follows a path
  in the workspace. Files go from the document to blobs through stdin, and back through the
  document (the workspace's sync writes them to disk with its safe primitives);
- no configuration but ours: ``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``, ``HOME`` an
  empty server directory, and ``-c`` flags: ``core.hooksPath=/dev/null`` (no hook from anywhere
  runs), ``core.fsmonitor=false``, ``protocol.allow=never`` with only the allowed schemes turned on,
  ``http.followRedirects=false``, ``transfer.fsckObjects=true``, ``submodule.recurse=false``;
- no prompt ever (``GIT_TERMINAL_PROMPT=0``, ``GIT_ASKPASS=/bin/false``, ssh in ``BatchMode``);
- ``--`` before every URL and ref taken from a request (no ``--upload-pack=`` injection);
- a credential reaches git only through the environment of that one process
  (``GIT_CONFIG_COUNT`` with ``http.extraHeader``, or an ssh key file the server owns, mode 0600,
  removed after the call): never on a command line, never in the document, and every output
  shown to people is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import re
import shlex
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

GIT = "git"
OUTPUT_CAP = 64 * 1024 * 1024  # bytes of stdout kept from one git call
SAFE_SCHEMES = ("https", "ssh")
LOCAL_SCHEMES = ("http", "git", "file")
SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?!//)(?P<path>.+)$")


class GitError(Exception):
    """A git call that failed: ``status`` is the HTTP status the API answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Remote:
    """A remote URL that passed the policy: ``url`` has no credential in it."""

    url: str
    scheme: str
    host: str


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified or not ip.is_global
    )


def parse_remote(url: object) -> tuple[str, str]:
    """(scheme, host) of a remote URL, or GitError(400) for what is not one."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise GitError(400, "git url must be a non-empty string of at most 2048 characters")
    if url.startswith("-") or any(c in url for c in "\0\n\r\t ") :
        raise GitError(400, "git url holds a character a URL cannot have")
    scp = SCP_LIKE.match(url)
    if "://" not in url and scp is not None:
        return "ssh", scp.group("host")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise GitError(400, f"git url does not parse: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in SAFE_SCHEMES + LOCAL_SCHEMES:
        raise GitError(400, f"git url scheme {scheme or '(none)'!r} is not supported: use https:// or ssh://")
    if parts.password is not None or (scheme in ("https", "http") and parts.username):
        raise GitError(400, "git url must not carry a credential: an owner sets one with PUT .../git/remote")
    host = parts.hostname or ""
    if scheme != "file" and not host:
        raise GitError(400, "git url has no host")
    return scheme, host


async def check_remote(url: object, *, allow_local: bool) -> Remote:
    """The URL policy: https and ssh to public hosts; ``git://``, ``http://``, ``file://`` and hosts
    that resolve to loopback, private, link-local or reserved addresses only with ``allow_local``
    (a server must not become a way into its own network). Raises GitError(400).

    The address check runs before git does; a DNS answer that changes in between (rebinding) is not
    caught here: operators who need that closed put git behind an allowlisting proxy (docs/git.md)."""
    scheme, host = parse_remote(url)
    assert isinstance(url, str)
    if allow_local:
        return Remote(url, scheme, host)
    if scheme in LOCAL_SCHEMES:
        raise GitError(400, f"{scheme}:// remotes are refused on this server (use https:// or ssh://;"
                            " the operator may pass --git-allow-local)")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise GitError(400, f"git url host {host!r} does not resolve: {exc}") from exc
    for info in infos:
        address = str(info[4][0])
        if _private(address):
            raise GitError(400, f"git url host {host!r} resolves to {address}, a loopback or private address:"
                                " refused (the operator may pass --git-allow-local)")
    return Remote(url, scheme, host)


@dataclass(frozen=True, slots=True)
class Credential:
    """What an owner gave for pushing and pulling: a token (sent as an HTTP header) or an ssh key."""

    token: str | None = None
    ssh_key: str | None = None
    user: str | None = None  # the HTTP Basic user name sent with the token (default x-access-token)

    def secrets(self) -> list[str]:
        found = [s for s in (self.token, self.ssh_key) if s]
        if self.token:
            found.append(base64.b64encode(f"{self.user or 'x-access-token'}:{self.token}".encode()).decode())
        return found


@dataclass(slots=True)
class Result:
    code: int
    out: bytes
    err: str


class Git:
    """Starts ``git`` against one bare repository with the hardened environment (module docstring)."""

    def __init__(self, repo: str, home: str, *, allow_local: bool, timeout: float = 120.0) -> None:
        self.repo = repo
        self.home = home
        self.allow_local = allow_local
        self.timeout = timeout

    def flags(self) -> list[str]:
        schemes = SAFE_SCHEMES + (LOCAL_SCHEMES if self.allow_local else ())
        flags = [
            "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.askPass=/bin/false",
            "-c", "protocol.allow=never", "-c", "http.followRedirects=false",
            "-c", "transfer.fsckObjects=true", "-c", "submodule.recurse=false",
            "-c", f"safe.directory={self.repo}", "-c", "gc.auto=0", "-c", "maintenance.auto=false",
        ]
        for scheme in schemes:
            flags += ["-c", f"protocol.{scheme}.allow=always"]
        return flags

    def env(self, credential: Credential | None = None, key_file: str | None = None,
            extra: Mapping[str, str] | None = None, in_repo: bool = True) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new"
            + (f" -o IdentitiesOnly=yes -i {shlex.quote(key_file)}" if key_file else ""),
        }
        if credential is not None and credential.token:
            env.update({
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": "Authorization: Basic " + base64.b64encode(
                    f"{credential.user or 'x-access-token'}:{credential.token}".encode()).decode(),
            })
        if in_repo:
            env["GIT_DIR"] = self.repo
        if extra:
            env.update(extra)
        return env

    async def run(
        self, args: Sequence[str], *, stdin: bytes | None = None, credential: Credential | None = None,
        env: Mapping[str, str] | None = None, check: bool = True, status: int = 500, in_repo: bool = True,
    ) -> Result:
        """Run one git command; a failure raises GitError(``status``) with git's scrubbed message."""
        key_file = None
        if credential is not None and credential.ssh_key:
            key_file = os.path.join(self.home, f"key-{os.getpid()}-{id(args)}")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(credential.ssh_key.strip() + "\n")
        try:
            proc = await asyncio.create_subprocess_exec(
                GIT, *self.flags(), *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=self.env(credential, key_file, env, in_repo), cwd=self.home,
            )
            try:
                async with asyncio.timeout(self.timeout):
                    out, err = await proc.communicate(stdin)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise GitError(504, f"git {args[0]} took longer than {self.timeout:.0f} s") from None
        finally:
            if key_file is not None:
                os.unlink(key_file)
        message = scrub(err.decode("utf-8", "replace"), credential)
        if len(out) > OUTPUT_CAP:
            raise GitError(413, f"git {args[0]} answered more than {OUTPUT_CAP // (1024 * 1024)} MiB")
        result = Result(proc.returncode if proc.returncode is not None else -1, out, message)
        if check and result.code != 0:
            raise GitError(status, f"git {args[0]} failed: {message.strip()[-2000:] or 'exit ' + str(result.code)}")
        return result

    async def text(self, *args: str, **kwargs: object) -> str:
        return (await self.run(args, **kwargs)).out.decode("utf-8", "replace")  # type: ignore[arg-type]


def scrub(text: str, credential: Credential | None) -> str:
    """``text`` without any credential in it (git may echo a URL or a header)."""
    if credential is not None:
        for secret in credential.secrets():
            text = text.replace(secret, "***")
    return re.sub(r"(https?://)[^/@\s]+@", r"\1***@", text)
