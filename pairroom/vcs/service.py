"""Version control of a room: open a repository, commit with every author credited, push, pull live.

One bare repository per room on this node, under a directory only the server reads
(``repo.py``; never the workspace). What the server knows of a room's repository (its remote, branch,
the seq of the log its last commit covered, the credential) is kept on the server
(``pairroom-state.json`` beside the repository, the credential only in memory); the document's
``meta.git`` is a copy for people to see, which nobody's change can make git act on, plus
``meta.git.people``: how to credit each member, written by whichever node they joined.

The repository is on the node that opened it. In a cluster that node holds the room's git lease
and the other nodes forward their git requests to it (``cluster.py``); without ``git_root`` the
repository is removed when the node stops, and the room's git routes then answer 409 until it is
opened again (docs/git.md).
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Array, Assoc, Map, StickyIndex, Text

from pairroom.protocol.origins import LocalOrigin
from pairroom.rooms.identity import Principal
from pairroom.rooms.room import Room, RoomState
from pairroom.workspace import LISTING_ROOT, Workspaces, merge, safe_fs
from pairroom.workspace.workspace import dir_name

from . import attribution
from .cluster import GitLeases
from .gitcli import Credential, Git, GitError, Remote, check_remote
from .pull import Conflict, merge_lines
from .repo import FETCHED_REF, HEAD_REF, Entry, Person, Repo, blob_sha, copy_repository
from .settings import VcsSettings

log = logging.getLogger("pairroom.vcs")

MiB = 1024 * 1024
MAX_SIDE = 64 * 1024  # characters of each side a conflict shows in meta.git.conflicts
SERVER = Person("pairroom", "pairroom@users.noreply.pairroom")
STATE_FILE = "pairroom-state.json"
BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/-]{1,200}(?<![./])$")


def noreply(user_id: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', user_id)[:64] or 'user'}@users.noreply.pairroom"


def person_of(principal: Principal) -> Person:
    name = re.sub(r"[<>\n\r]", "", principal.name).strip() or principal.user_id
    email = getattr(principal, "email", None) or noreply(principal.user_id)
    return Person(name, email)


def inherit(touches: attribution.Touches, inherited: dict[str, dict[str, int]]) -> attribution.Touches:
    """``touches`` plus a fork's inherited ones (who changed the files in the source before the fork)."""
    for path, users in inherited.items():
        mine = touches.by_path.setdefault(path, {})
        for user, at in users.items():
            mine.setdefault(user, at)  # an edit in the fork itself is newer
    return touches


def check_path(path: object) -> str:
    if not isinstance(path, str) or not safe_fs.valid_path(path):
        raise GitError(400, f"not a room file path: {path!r} (relative, no '.' or '..' segments)")
    return path


@dataclass(slots=True)
class RoomGit:
    """What the server keeps of one room's repository."""

    name: str
    repo: Repo
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    remote: str = ""
    branch: str = ""
    ref: str = ""  # the remote branch or tag it was opened from
    base: str = ""  # the commit it was opened at
    last_seq: int = 0  # the log up to here is committed (co-authors count from after it)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)  # commit made here -> the log seq its files are
    # a fork's: who changed which file in the source between its head commit and the fork point
    # (path -> user -> ms), credited like the fork's own edits until its first commit
    inherited: dict[str, dict[str, int]] = field(default_factory=dict)
    credential: Credential | None = None  # memory only: never written, never answered

    def save(self) -> None:
        state = {
            "room": self.name,
            "remote": self.remote,
            "branch": self.branch,
            "ref": self.ref,
            "base": self.base,
            "last_seq": self.last_seq,
            "skipped": self.skipped,
            "seqs": self.seqs,
            "inherited": self.inherited,
        }
        path = os.path.join(self.repo.path, STATE_FILE)
        with open(path + ".tmp", "w") as handle:
            json.dump(state, handle)
        os.replace(path + ".tmp", path)

    def load(self) -> bool:
        try:
            with open(os.path.join(self.repo.path, STATE_FILE)) as handle:
                state = json.load(handle)
        except FileNotFoundError:
            return False
        for key in ("remote", "branch", "ref", "base", "last_seq", "skipped", "seqs", "inherited"):
            setattr(self, key, state.get(key, getattr(self, key)))
        return True


@dataclass(slots=True)
class Prepared:
    """A repository cloned into a staging directory, not yet a room's."""

    remote: Remote
    ref: str
    head: str
    staging: str
    text: dict[str, str]
    on_disk: dict[str, tuple[bytes, str]]  # path -> (bytes, kind "binary" | "large")
    skipped: list[dict[str, Any]]


class VcsService:
    def __init__(self, registry: Any, store: Any, settings: VcsSettings) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self.rooms: dict[str, RoomGit] = {}
        self.workspaces: Workspaces | None = None
        self.readers: dict[str, attribution.LogReader] = {}  # each room's log, read so far
        self._blames: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}  # (room, path) -> (seq, answer)
        self._noted: dict[tuple[str, str], dict[str, str]] = {}  # (room, user) -> what meta.git.people holds
        self._noted_as: dict[tuple[str, str], Principal] = {}  # (room, user) -> the principal found noted
        self.leases: GitLeases | None = None  # in a cluster: which node holds which room's repository
        self._made_root = settings.root is None
        root = settings.root
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            self.root = str(root)
        else:
            self.root = tempfile.mkdtemp(prefix="pairroom-git-")
        os.chmod(self.root, 0o700)
        self.home = os.path.join(self.root, ".home")  # git's HOME: empty, the server's
        os.makedirs(self.home, mode=0o700, exist_ok=True)

    def start(self) -> None:
        self.workspaces = Workspaces.attach(self.registry)

    def on_disk(self) -> list[str]:
        """The rooms whose repositories this node's git root holds (from a run before a restart)."""
        found = []
        for entry in os.scandir(self.root):
            if not entry.name.endswith(".git") or not entry.is_dir():
                continue
            try:
                with open(os.path.join(entry.path, STATE_FILE)) as handle:
                    name = json.load(handle).get("room")
            except (OSError, ValueError) as exc:
                log.warning("unreadable repository state", extra={"path": entry.name, "error": str(exc)})
                continue
            if isinstance(name, str) and dir_name(name) + ".git" == entry.name:
                found.append(name)
        return found

    async def here(self, room_name: str) -> bool:
        """Whether this node serves the room's git requests: always outside a cluster; in one, when it
        holds the room's lease, which it takes if its disk has the repository and nobody holds it."""
        leases = self.leases
        if leases is None or leases.holds(room_name):
            return True
        try:
            self.room_git(room_name)
        except GitError:
            return False
        return await leases.hold(room_name)

    async def stop(self) -> None:
        if self.workspaces is not None:
            await self.workspaces.detach()
            self.workspaces = None
        if self._made_root:
            await asyncio.to_thread(shutil.rmtree, self.root, True)

    def git(self, path: str) -> Git:
        return Git(path, self.home, allow_local=self.settings.allow_local, timeout=self.settings.timeout)

    def room_git(self, room_name: str) -> RoomGit:
        found = self.rooms.get(room_name)
        if found is not None:
            return found
        path = os.path.join(self.root, dir_name(room_name) + ".git")
        found = RoomGit(room_name, Repo(self.git(path)))
        if not os.path.isdir(path) or not found.load():
            raise GitError(
                409,
                f"room {room_name!r} has no repository on this server: open one with POST /api/rooms"
                ' {"git": {"url"}}',
            )
        self.rooms[room_name] = found
        return found

    def note_person(self, room: Room, principal: Principal) -> None:
        """Remember how to credit a member (their name and email) when others commit their edits.

        Kept in the document's ``meta.git.people`` (written by the server only), so the node that
        commits knows the people who typed on other nodes; the email is the token's ``email`` claim,
        which the room's members can then read (without the claim: the noreply address). Called on
        each join and each change a member makes: after the first time it is one dict lookup (the
        same ``Principal`` object as last time), in a room without a repository one map read."""
        key = (room.name, principal.user_id)
        if self._noted_as.get(key) is principal:
            return  # the same member typing again: their entry is there already
        git = room.guards.meta.get("git")
        if not isinstance(git, Map):
            return  # a room without a repository (yet): nobody to credit
        person = person_of(principal)
        entry = {"name": person.name, "email": person.email}
        if self._noted.get(key) == entry:
            self._noted_as[key] = principal
            return
        people = git.get("people")
        if isinstance(people, Map) and people.get(principal.user_id) == entry:
            self._noted[key] = entry
            self._noted_as[key] = principal
            return
        # not inside the hook that reported the join or the change: right after it
        asyncio.get_running_loop().call_soon(self._write_person, room, principal.user_id, entry)

    def _write_person(self, room: Room, user_id: str, entry: dict[str, str]) -> None:
        if room.state is not RoomState.ACTIVE:
            return
        with room.local_change(LocalOrigin("git:people")) as doc:
            git = doc.get("meta", type=Map).get("git")
            if not isinstance(git, Map):
                return
            people = git.get("people")
            if not isinstance(people, Map):
                people = git["people"] = Map()
            if people.get(user_id) != entry:
                people[user_id] = entry
        self._noted[(room.name, user_id)] = entry

    def unloaded(self, room_name: str) -> None:
        """The room left this node's memory: forget who was noted in it."""
        for key in [k for k in self._noted if k[0] == room_name]:
            del self._noted[key]
        for key in [k for k in self._noted_as if k[0] == room_name]:
            del self._noted_as[key]

    def reader(self, room_name: str) -> attribution.LogReader:
        found = self.readers.get(room_name)
        if found is None:
            found = self.readers[room_name] = attribution.LogReader(self.store, room_name)
        return found

    def forget(self, room_name: str) -> None:
        """The room was deleted: its repository goes with it."""
        self.rooms.pop(room_name, None)
        self.readers.pop(room_name, None)
        self.unloaded(room_name)
        if self.leases is not None and self.leases.holds(room_name):
            self.leases.spawn(self.leases.release(room_name))
        for key in [k for k in self._blames if k[0] == room_name]:
            del self._blames[key]
        path = os.path.join(self.root, dir_name(room_name) + ".git")
        if os.path.isdir(path):  # off the loop: a repository can be large
            asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, path, True)

    @staticmethod
    def person(room: Room, user_id: str) -> Person:
        git = room.doc.get("meta", type=Map).get("git")
        people = git.get("people") if isinstance(git, Map) else None
        entry = people.get(user_id) if isinstance(people, Map) else None
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("email"), str):
            return Person(entry["name"], entry["email"])
        return Person(user_id, noreply(user_id))

    # -- opening a repository ---------------------------------------------------------------------

    async def prepare(self, spec: object) -> Prepared:
        """Check the URL, clone into a staging directory and read its files; nothing of a room is
        touched, so a failure leaves no room half-made."""
        if not isinstance(spec, dict):
            raise GitError(400, 'git must be an object: {"url", "ref"?}')
        ref = spec.get("ref")
        if ref is not None and (not isinstance(ref, str) or not BRANCH.match(ref)):
            raise GitError(400, "git ref must be a branch or tag name")
        remote = await check_remote(spec.get("url"), allow_local=self.settings.allow_local)
        staging = tempfile.mkdtemp(prefix="staging-", dir=self.root)
        os.rmdir(staging)  # git clone makes it
        try:
            repo = Repo(self.git(staging))
            cloned = await repo.clone(remote.url, ref, self.settings.depth or None)
            head = await repo.rev(HEAD_REF)
            assert head is not None
            tree = await repo.tree(head)
            total = sum(e.size or 0 for e in tree.values())
            if total > self.settings.max_repo_bytes:
                raise GitError(
                    413,
                    f"repository files total {total // MiB} MiB, over the cap of"
                    f" {self.settings.max_repo_bytes // MiB} MiB",
                )
            text, on_disk, skipped = await self._read_files(repo, tree)
            return Prepared(remote, cloned, head, staging, text, on_disk, skipped)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            raise

    async def _read_files(
        self, repo: Repo, tree: dict[str, Entry]
    ) -> tuple[dict[str, str], dict[str, tuple[bytes, str]], list[dict[str, Any]]]:
        text: dict[str, str] = {}
        on_disk: dict[str, tuple[bytes, str]] = {}
        skipped: list[dict[str, Any]] = []
        wanted: list[tuple[str, Entry]] = []
        folded: set[str] = set()
        for path, entry in sorted(tree.items()):
            reason = None
            if not safe_fs.valid_path(path) or any(0xDC80 <= ord(c) <= 0xDCFF for c in path):
                reason = "name"
            elif entry.kind == "commit":
                reason = "submodule"
            elif entry.mode == "120000":
                reason = "symlink"
            elif path.lower() in folded:
                reason = "case collision"
            if reason:
                skipped.append({"path": path, "reason": reason})
                continue
            folded.add(path.lower())
            wanted.append((path, entry))
        data = await repo.blobs(e.sha for _, e in wanted)
        for path, entry in wanted:
            blob = data.get(entry.sha, b"")
            if len(blob) > self.settings.max_file_bytes:
                on_disk[path] = (blob, "large")
                continue
            try:
                content = blob.decode("utf-8")
            except UnicodeDecodeError:
                on_disk[path] = (blob, "binary")
                continue
            if "\0" in content:
                on_disk[path] = (blob, "binary")
                continue
            text[path] = content
        return text, on_disk, skipped

    async def discard(self, prepared: Prepared) -> None:
        await asyncio.to_thread(shutil.rmtree, prepared.staging, True)

    async def install(self, room: Room, prepared: Prepared) -> dict[str, Any]:
        """Make the prepared repository the room's: its text files into ``files`` (one update, stamped
        ``local:git:import``), the rest written to the workspace read-only and listed."""
        path = os.path.join(self.root, dir_name(room.name) + ".git")
        if os.path.isdir(path):  # noqa: ASYNC240 - the server's own folder, a local stat
            await asyncio.to_thread(shutil.rmtree, path, True)
        os.rename(prepared.staging, path)
        state = RoomGit(room.name, Repo(self.git(path)))
        state.remote, state.ref, state.base = prepared.remote.url, prepared.ref, prepared.head
        state.branch = "pairroom/" + (re.sub(r"[^A-Za-z0-9_-]", "-", room.name)[:100] or "room")
        state.skipped = prepared.skipped + [{"path": p, "reason": kind} for p, (_, kind) in prepared.on_disk.items()]
        self.rooms[room.name] = state
        if self.leases is not None and not await self.leases.hold(room.name):
            # A node still holds the lease of a room of this name made before (deleted meanwhile, its
            # lease not yet expired): this repository is the room's now, and the lease follows soon.
            log.warning("git lease of a new room held by another node", extra={"room": room.name})
        with room.local_change(LocalOrigin(f"git:import:{prepared.head[:12]}")) as doc:
            files = doc.get("files", type=Map)
            for file_path, content in prepared.text.items():
                files[file_path] = Text(content)
            listing = doc.get(LISTING_ROOT, type=Map)
            for file_path, (blob, kind) in prepared.on_disk.items():
                listing[file_path] = Map({"size": len(blob), "kind": kind})
        await room.flush()
        state.last_seq = room.stored_seq
        state.seqs[prepared.head] = state.last_seq
        state.save()
        self._mirror(room, state, prepared.head)
        if prepared.on_disk and self.workspaces is not None:
            workspace = self.workspaces.get(room.name)
            await workspace.ensure_dir()
            owner = self.workspaces.owner

            def write() -> None:
                for file_path, (blob, _) in prepared.on_disk.items():
                    safe_fs.write_atomic(str(workspace.path), file_path, blob, owner=owner)

            await self.workspaces.io(write)
        log.info(
            "repository opened",
            extra={"room": room.name, "remote": state.remote, "base": state.base, "files": len(prepared.text)},
        )
        return {
            "remote": state.remote,
            "ref": state.ref,
            "base": state.base,
            "files": len(prepared.text),
            "skipped": state.skipped,
        }

    async def fork(self, source: str, room: Room, point: int) -> dict[str, Any]:
        """Give ``room``, just forked from ``source`` at seq ``point``, a repository of its own: a copy
        of the source's (objects hard-linked, never changed in place), its head the newest commit the
        source made, opened or pulled at or before ``point``, the same remote and its own branch
        ``pairroom/{fork}``. The credential is not copied: an owner of the fork sets their own.
        The fork's files are the source's at ``point``, so its status shows what it holds that the
        commit does not."""
        src = self.room_git(source)
        sha = None
        seq = -1
        for commit, at in src.seqs.items():  # later entries win a tie: they were made later
            if seq <= at <= point:
                sha, seq = commit, at
        if sha is None:
            raise GitError(409, f"room {source!r} had no commit at or before seq {point}: the fork has no repository")
        path = os.path.join(self.root, dir_name(room.name) + ".git")
        async with src.lock:  # no commit writes objects while they are copied
            await asyncio.to_thread(copy_repository, src.repo.path, path, (STATE_FILE,))
        state = RoomGit(room.name, Repo(self.git(path)))
        await state.repo.git.run(["update-ref", HEAD_REF, sha])
        await state.repo.git.run(["update-ref", "-d", FETCHED_REF], check=False)
        state.remote, state.ref, state.base = src.remote, src.ref, sha
        state.branch = "pairroom/" + (re.sub(r"[^A-Za-z0-9_-]", "-", room.name)[:100] or "room")
        state.skipped = list(src.skipped)
        if point > seq:  # the fork's log starts with one update of the server's: who wrote what is here
            state.inherited = (await attribution.touches_since(self.store, source, seq, point)).by_path
        await room.flush()
        state.last_seq = room.stored_seq  # the fork's log starts with one update of the server's
        if point == seq:  # the fork's first state is exactly the commit's files
            state.seqs[sha] = state.last_seq
        state.save()
        self.rooms[room.name] = state
        if self.leases is not None and not await self.leases.hold(room.name):
            log.warning("git lease of a fork held by another node", extra={"room": room.name})
        forked = {"room": source, "seq": point, "commit": sha}
        self._mirror(room, state, sha, forkedFrom=forked)
        with room.local_change(LocalOrigin("git")) as doc:
            git = doc.get("meta", type=Map).get("git")
            if isinstance(git, Map) and "pushed" in git:
                del git["pushed"]  # the source's push, to the source's branch
        log.info("repository forked", extra={"room": room.name, "source": source, "head": sha})
        return {
            "head": sha,
            "seq": seq,
            "branch": state.branch,
            "remote": state.remote,
            "credential": False,
            "note": "the source's credential is not copied: an owner of the fork sets one with PUT"
            f" /api/rooms/{room.name}/git/remote",
        }

    def _mirror(self, room: Room, state: RoomGit, head: str, **extra: Any) -> None:
        """The document's ``meta.git``: what people see of the repository (never the credential)."""
        with room.local_change(LocalOrigin("git")) as doc:
            meta = doc.get("meta", type=Map)
            git = meta.get("git")
            if not isinstance(git, Map):
                git = meta["git"] = Map()
            git["remote"] = state.remote
            git["branch"] = state.branch
            git["ref"] = state.ref
            git["base"] = state.base
            git["head"] = head
            git["skipped"] = list(state.skipped)[:1000]
            for key, value in extra.items():
                git[key] = value

    # -- reading ------------------------------------------------------------------------------------

    @staticmethod
    def doc_files(room: Room) -> dict[str, str]:
        files = room.doc.get("files", type=Map)
        return {p: str(t) for p, t in files.items() if isinstance(t, Text) and safe_fs.valid_path(p)}

    @staticmethod
    def listed(room: Room) -> set[str]:
        return {str(p) for p in room.doc.get(LISTING_ROOT, type=Map).keys()}

    async def _changes(
        self, state: RoomGit, room: Room, head: str, paths: set[str] | None = None, files: dict[str, str] | None = None
    ) -> tuple[dict[str, str], list[str], dict[str, Entry]]:
        """The room's files (or ``files``) that differ from ``head``: (changed or added text, removed
        paths, head tree)."""
        if files is None:
            files = self.doc_files(room)
        tree = await state.repo.tree(head)
        kept = self.listed(room) | {s["path"] for s in state.skipped}
        changed = {
            p: t
            for p, t in files.items()
            if (tree.get(p) is None or tree[p].sha != blob_sha(t.encode())) and (paths is None or p in paths)
        }
        removed = [
            p
            for p, e in tree.items()
            if e.kind == "blob" and p not in files and p not in kept and (paths is None or p in paths)
        ]
        return changed, removed, tree

    async def status(self, room: Room, principal: Principal) -> dict[str, Any]:
        """The files that differ from the room's head, who changed each since the last commit, and
        whom a commit by ``principal`` would credit."""
        state = self.room_git(room.name)
        head = await state.repo.rev(HEAD_REF)
        assert head is not None
        changed, removed, tree = await self._changes(state, room, head)
        await room.flush()
        touches = inherit(await self.reader(room.name).touches(state.last_seq), state.inherited)
        out = []
        for path in sorted([*changed, *removed]):
            kind = "deleted" if path in removed else ("added" if path not in tree else "modified")
            by = touches.by_path.get(path, {})
            out.append(
                {
                    "path": path,
                    "status": kind,
                    "by": [
                        {"id": u, **self._public(room, u), "at": at} for u, at in sorted(by.items(), key=lambda i: i[1])
                    ],
                }
            )
        coauthors = self._credited(room, touches, [*changed, *removed], principal.user_id)
        return {
            "head": head,
            "branch": state.branch,
            "remote": state.remote,
            "changes": out,
            "coauthors": [{"name": p.name, "email": p.email} for p in coauthors],
        }

    def _public(self, room: Room, user_id: str) -> dict[str, str]:
        person = self.person(room, user_id)
        return {"name": person.name, "email": person.email}

    async def diff(self, room: Room, path: str) -> str:
        state = self.room_git(room.name)
        head = await state.repo.rev(HEAD_REF)
        assert head is not None
        tree = await state.repo.tree(head)
        entry = tree.get(path)
        old = (await state.repo.blobs([entry.sha])).get(entry.sha, b"").decode("utf-8", "replace") if entry else ""
        new = self.doc_files(room).get(path)
        lines = difflib.unified_diff(
            old.splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile=f"a/{path}" if entry else "/dev/null",
            tofile=f"b/{path}" if new is not None else "/dev/null",
        )
        return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)

    async def log(self, room: Room, limit: int) -> list[dict[str, Any]]:
        """The commits, each with the room's ``seq`` where the room made or opened it (restore and
        fork take it like any point in time), None for commits that came from elsewhere."""
        state = self.room_git(room.name)
        commits = await state.repo.log(HEAD_REF, limit)
        for commit in commits:
            commit["seq"] = state.seqs.get(str(commit["sha"]))
        return commits

    # -- committing ---------------------------------------------------------------------------------

    def _credited(self, room: Room, touches: attribution.Touches, paths: Iterable[str], author: str) -> list[Person]:
        first: dict[str, int] = {}
        for path in paths:
            for user, at in touches.by_path.get(path, {}).items():
                if user != author:
                    first[user] = min(at, first.get(user, at))
        people = [self.person(room, user) for user, _ in sorted(first.items(), key=lambda i: i[1])]
        return list(dict.fromkeys(people))

    async def commit(
        self, room: Room, principal: Principal, message: str, paths: set[str] | None, series: bool
    ) -> dict[str, Any]:
        state = self.room_git(room.name)
        async with state.lock:
            self.note_person(room, principal)
            head = await state.repo.rev(HEAD_REF)
            assert head is not None
            await room.flush()
            # No await from the flush to here: the document is exactly the log up to stored_seq.
            upto = room.stored_seq
            files = self.doc_files(room)
            changed, removed, _ = await self._changes(state, room, head, paths, files)
            if not changed and not removed:
                raise GitError(409, "nothing to commit: the room's files are as the last commit has them")
            if series:
                touches = await attribution.touches_since(self.store, room.name, state.last_seq, upto)
            else:
                touches = await self.reader(room.name).touches(state.last_seq, upto)
            touches = inherit(touches, state.inherited)
            author = person_of(principal)
            commits: list[dict[str, Any]] = []
            new = head
            if series and touches.runs:
                for run in touches.runs:
                    run_paths = {p for p in run.paths if p in changed or p in removed}
                    if not run_paths:
                        continue
                    run_files = {p: run.files[p] for p in run_paths if p in run.files and p in changed}
                    run_removed = [p for p in run_paths if p not in run.files]
                    who = self.person(room, run.user) if run.user != principal.user_id else author
                    body = f"{message} ({who.name})\n"
                    new = await state.repo.commit(new, run_files, run_removed, body, who, SERVER)
                    commits.append(
                        {"sha": new, "author": {"name": who.name, "email": who.email}, "paths": sorted(run_paths)}
                    )
            coauthors = self._credited(room, touches, [*changed, *removed], principal.user_id)
            if commits:  # the branch ends at the room's files, whatever the runs held
                final = await self._settle(state, new, changed, removed, message, author)
            else:
                trailers = "\n".join(p.trailer() for p in coauthors)
                final = await state.repo.commit(
                    head, changed, removed, message + (f"\n\n{trailers}" if trailers else "") + "\n", author, SERVER
                )
            if final != new:
                commits.append(
                    {
                        "sha": final,
                        "author": {"name": author.name, "email": author.email},
                        "coauthors": [f"{p.name} <{p.email}>" for p in coauthors],
                        "paths": sorted([*changed, *removed]),
                    }
                )
            await state.repo.move_head(final, head)
            state.last_seq = max(upto, state.last_seq)
            state.seqs[final] = upto  # restore or fork at this seq gives the commit's files
            state.inherited = {}
            state.save()
            self.reader(room.name).forget_before(state.last_seq)
            last = {
                "sha": final,
                "at": int(time.time() * 1000),
                "by": principal.user_id,
                "name": author.name,
                "coauthors": commits[-1].get("coauthors", []),
                "count": len(commits),
                "seq": upto,
            }
            self._mirror(room, state, final, lastCommit=last)
            log.info(
                "committed",
                extra={"room": room.name, "head": final, "commits": len(commits), "coauthors": len(coauthors)},
            )
            return {"head": final, "seq": upto, "commits": commits}

    async def _settle(
        self, state: RoomGit, new: str, changed: dict[str, str], removed: list[str], message: str, author: Person
    ) -> str:
        """After series commits: one more commit only if the runs did not already end at the room's files."""
        tree_changed, tree_removed, _ = await self._changes_against(state, new, changed, removed)
        if not tree_changed and not tree_removed:
            return new
        return await state.repo.commit(new, tree_changed, tree_removed, message + "\n", author, SERVER)

    async def _changes_against(
        self, state: RoomGit, rev: str, changed: dict[str, str], removed: list[str]
    ) -> tuple[dict[str, str], list[str], None]:
        tree = await state.repo.tree(rev)
        still = {p: t for p, t in changed.items() if tree.get(p) is None or tree[p].sha != blob_sha(t.encode())}
        gone = [p for p in removed if p in tree]
        return still, gone, None

    # -- the remote ---------------------------------------------------------------------------------

    async def set_remote(self, room: Room, url: object, branch: object, credential: object) -> dict[str, Any]:
        state = self.room_git(room.name)
        if url is not None:
            remote = await check_remote(url, allow_local=self.settings.allow_local)
            state.remote = remote.url
        if branch is not None:
            if not isinstance(branch, str) or not BRANCH.match(branch):
                raise GitError(400, "branch must be a branch name")
            state.branch = branch
        if credential is not None:
            if isinstance(credential, str):
                state.credential = Credential(token=credential) if credential else None
            elif isinstance(credential, dict) and isinstance(credential.get("token"), str):
                user = credential.get("user")
                state.credential = Credential(token=credential["token"], user=user if isinstance(user, str) else None)
            elif isinstance(credential, dict) and isinstance(credential.get("sshKey"), str):
                state.credential = Credential(ssh_key=credential["sshKey"])
            else:
                raise GitError(400, 'credential must be a token string, {"token", "user"?} or {"sshKey"}')
        state.save()
        head = await state.repo.rev(HEAD_REF)
        self._mirror(room, state, head or "")
        return {"remote": state.remote, "branch": state.branch, "credential": state.credential is not None}

    async def push(self, room: Room, force: bool) -> dict[str, Any]:
        state = self.room_git(room.name)
        async with state.lock:
            await check_remote(state.remote, allow_local=self.settings.allow_local)
            await state.repo.push(state.remote, state.branch, state.credential, force)
            head = await state.repo.rev(HEAD_REF)
            self._mirror(room, state, head or "", pushed={"sha": head, "at": int(time.time() * 1000)})
            log.info("pushed", extra={"room": room.name, "head": head, "branch": state.branch, "force": force})
            return {"head": head, "remote": state.remote, "branch": state.branch}

    async def pull(self, room: Room, principal: Principal, ref: object) -> dict[str, Any]:
        """Fetch and merge the remote branch, then bring the result into the document as edits
        merged with what people typed meanwhile (``pull.merge_lines``): the remote's change of lines
        the room also changed is left out, and a review thread on those lines shows both versions."""
        state = self.room_git(room.name)
        if ref is not None and (not isinstance(ref, str) or not BRANCH.match(ref)):
            raise GitError(400, "ref must be a branch name")
        async with state.lock:
            await check_remote(state.remote, allow_local=self.settings.allow_local)
            branch = ref or state.branch
            fetched = await state.repo.fetch(state.remote, branch, state.credential)
            if fetched is None and ref is None and state.ref:
                branch = state.ref
                fetched = await state.repo.fetch(state.remote, branch, state.credential)
            if fetched is None:
                raise GitError(404, f"the remote has no branch {branch!r}")
            head = await state.repo.rev(HEAD_REF)
            assert head is not None
            if await state.repo.is_ancestor(fetched, head):
                return {
                    "head": head,
                    "seq": state.seqs.get(head),
                    "fetched": fetched,
                    "changed": [],
                    "conflicts": [],
                    "upToDate": True,
                }
            if await state.repo.is_ancestor(head, fetched):
                new = fetched
            else:
                tree = await state.repo.merge_tree(head, fetched)
                if tree is None:
                    raise GitError(
                        409,
                        f"the room's commits and {branch!r} change the same lines: the room's"
                        " branch cannot be merged on the server; push to another branch",
                    )
                author = person_of(principal)
                new = await state.repo.merge_commit(
                    tree, [head, fetched], f"Merge {branch} into the room {room.name}", author, SERVER
                )
            changed, conflicts = await self._apply(state, room, head, new, principal)
            await state.repo.move_head(new, head)
            # The pulled edits are stamped local:git:pull and credit nobody; what people typed
            # meanwhile is still theirs at the next commit.
            self._mirror(
                room,
                state,
                new,
                pulled={
                    "sha": new,
                    "at": int(time.time() * 1000),
                    "by": principal.user_id,
                    "conflicts": [c["path"] for c in conflicts],
                },
            )
            # The pulled commit's point in the room's log: the room right after the pull, so restore
            # and fork take it like a commit made here. It holds the commit's files plus what the room
            # had not committed (and its side of a conflict): ``uncommitted`` names those files.
            await room.flush()
            seq, files = room.stored_seq, self.doc_files(room)
            still, gone, _ = await self._changes(state, room, new, files=files)
            state.seqs[new] = seq
            state.save()
            log.info(
                "pulled", extra={"room": room.name, "head": new, "changed": len(changed), "conflicts": len(conflicts)}
            )
            return {
                "head": new,
                "seq": seq,
                "uncommitted": sorted([*still, *gone]),
                "fetched": fetched,
                "changed": changed,
                "conflicts": conflicts,
                "upToDate": False,
            }

    async def _apply(
        self, state: RoomGit, room: Room, old: str, new: str, principal: Principal
    ) -> tuple[list[str], list[dict[str, Any]]]:
        before, after = await state.repo.tree(old), await state.repo.tree(new)
        paths = sorted(
            p
            for p in set(before) | set(after)
            if (before[p].sha if p in before else None) != (after[p].sha if p in after else None)
        )
        blobs = await state.repo.blobs([e.sha for p in paths for e in (before.get(p), after.get(p)) if e is not None])

        def text_of(entry: Entry | None) -> str | None:
            if entry is None:
                return None
            data = blobs.get(entry.sha, b"")
            if len(data) > self.settings.max_file_bytes:
                return None
            try:
                content = data.decode("utf-8")
            except UnicodeDecodeError:
                return None
            return None if "\0" in content else content

        conflicts: list[dict[str, Any]] = []
        changed: list[str] = []
        with room.local_change(LocalOrigin(f"git:pull:{new[:12]}")) as doc:
            files = doc.get("files", type=Map)
            for path in paths:
                if not safe_fs.valid_path(path):
                    continue
                base, theirs = text_of(before.get(path)), text_of(after.get(path))
                current = files.get(path)
                if theirs is None and path in after:
                    continue  # binary or large: written to the workspace below
                if theirs is None:  # deleted upstream: gone here too unless edited meanwhile
                    if isinstance(current, Text) and str(current) == (base or ""):
                        del files[path]
                        changed.append(path)
                    continue
                if not isinstance(current, Text):
                    files[path] = Text(theirs)
                    changed.append(path)
                    continue
                ours = str(current)
                edits, clashes = merge_lines(base or "", ours, theirs)
                merge.apply(current, ours, edits)
                changed.append(path)
                for clash in clashes:
                    conflicts.append({"path": path, "clash": clash})
            for item in conflicts:
                self._open_thread(doc, item, new, principal)
        binary = {
            p: blobs[after[p].sha]
            for p in paths
            if p in after
            and text_of(after[p]) is None
            and after[p].kind == "blob"
            and after[p].mode != "120000"
            and safe_fs.valid_path(p)
        }
        if binary and self.workspaces is not None:
            workspace = self.workspaces.get(room.name)
            await workspace.ensure_dir()
            owner = self.workspaces.owner

            def write() -> None:
                for path, data in binary.items():
                    safe_fs.write_atomic(str(workspace.path), path, data, owner=owner)

            await self.workspaces.io(write)
        return changed, [{"path": c["path"], "ours": c["clash"].ours, "theirs": c["clash"].theirs} for c in conflicts]

    @staticmethod
    def _open_thread(doc: Any, conflict: dict[str, Any], sha: str, principal: Principal) -> None:
        """A review thread (``reviews`` in docs/doc-schema.md) on the room's conflicting lines, holding
        both versions: the clash is settled by people, never by a silent overwrite."""
        text = doc.get("files", type=Map).get(conflict["path"])
        clash: Conflict = conflict["clash"]
        if not isinstance(text, Text):
            return
        content = str(text)
        start = len(content[: clash.start].encode())
        end = len(content[: max(clash.end, clash.start + 1)].encode())
        exact = not (end <= start or start >= len(content.encode()))
        if not exact:  # the thread then sits on the whole file
            start, end = 0, len(content.encode())
        if end == 0:
            return
        now = int(time.time() * 1000)
        body = (
            f"Pulling {sha[:12]} changed lines the room also changed. The room's version is kept here;"
            " Source control shows both side by side, to keep it or take the remote's."
            f"\n\nThe remote's version:\n{clash.theirs[:3500]}\nThe room's version:\n{clash.ours[:3500]}"
        )
        message = {
            "id": secrets.token_urlsafe(9),
            "author": principal.user_id,
            "name": "git pull",
            "at": now,
            "text": body[:8000],
            "run": None,
        }
        thread_id = secrets.token_urlsafe(9)
        doc.get("reviews", type=Map)[thread_id] = Map(
            {
                "path": conflict["path"],
                "start": StickyIndex.new(text, start, Assoc.AFTER).encode(),
                "end": StickyIndex.new(text, end, Assoc.BEFORE).encode(),
                "status": "open",
                "messages": Array([message]),
                "suggestion": None,
                "createdAt": now,
                "by": principal.user_id,
            }
        )
        # The panel's merge view: both versions side by side, settled with ``resolve``.
        git = doc.get("meta", type=Map).get("git")
        if isinstance(git, Map):
            conflicts = git.get("conflicts")
            if not isinstance(conflicts, Map):
                conflicts = git["conflicts"] = Map()
            conflicts[secrets.token_urlsafe(9)] = {
                "path": conflict["path"],
                "thread": thread_id,
                "ours": clash.ours[:MAX_SIDE],
                "theirs": clash.theirs[:MAX_SIDE],
                "sha": sha,
                "at": now,
                "by": principal.user_id,
                # what the thread's anchors hold: the room's lines, the point they were removed at
                # (plus one character), or the whole file (no place for them was found)
                "anchor": ("lines" if clash.ours else "point") if exact else "file",
            }

    async def resolve(self, room: Room, principal: Principal, conflict_id: str, take: str) -> dict[str, Any]:
        """Settle a pull's conflict: ``ours`` keeps the room's lines, ``theirs`` replaces them (where
        the review thread's anchors now are, whatever was typed there since) with the remote's, as
        the smallest edits. The thread is resolved with a message saying which, and the conflict
        leaves ``meta.git.conflicts``. The remote's lines come from git: stamped
        ``local:git:resolve``, they credit nobody, as a pull does."""
        git = room.doc.get("meta", type=Map).get("git")
        conflicts = git.get("conflicts") if isinstance(git, Map) else None
        entry = conflicts.get(conflict_id) if isinstance(conflicts, Map) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise GitError(404, f"no conflict {conflict_id!r} in this room (settled already?)")
        path, thread_id = entry["path"], entry.get("thread")
        reviews = room.doc.get("reviews", type=Map)
        thread = reviews.get(thread_id) if isinstance(thread_id, str) else None
        edits: list[merge.Edit] = []
        text = room.doc.get("files", type=Map).get(path)
        content = str(text) if isinstance(text, Text) else ""
        if take == "theirs":
            span = self._span(thread, text)
            if span is None:
                raise GitError(
                    409, f"the conflicting lines of {path!r} are gone (deleted meanwhile): nothing to replace"
                )
            start, end = span
            anchor = entry.get("anchor")
            if anchor == "point":
                end = start  # the room had removed these lines: the remote's go back in there
            elif anchor != "lines":
                raise GitError(409, f"the conflict in {path!r} has no exact place in the file: edit it by hand")
            edits = [
                merge.Edit(start + e.start, start + e.end, e.insert)
                for e in merge.text_edits(content[start:end], str(entry.get("theirs", "")))
            ]
        now = int(time.time() * 1000)
        with room.local_change(LocalOrigin(f"git:resolve:{str(entry.get('sha', ''))[:12]}")) as doc:
            if edits and isinstance(text, Text):
                merge.apply(text, content, edits)
            if isinstance(thread, Map):
                thread["status"] = "resolved"
                messages = thread.get("messages")
                if isinstance(messages, Array):
                    said = "took the remote's version" if take == "theirs" else "kept the room's version"
                    messages.append(
                        {
                            "id": secrets.token_urlsafe(9),
                            "author": principal.user_id,
                            "name": person_of(principal).name,
                            "at": now,
                            "text": f"Conflict settled: {said}.",
                            "run": None,
                        }
                    )
            git_map = doc.get("meta", type=Map).get("git")
            left = git_map.get("conflicts") if isinstance(git_map, Map) else None
            if isinstance(left, Map) and conflict_id in left:
                del left[conflict_id]
        log.info("conflict settled", extra={"room": room.name, "path": path, "take": take})
        return {"path": path, "take": take, "changed": bool(edits)}

    @staticmethod
    def _span(thread: object, text: object) -> tuple[int, int] | None:
        """The thread's anchored range in ``text`` as character offsets, or None if it is gone."""
        if not isinstance(thread, Map) or not isinstance(text, Text):
            return None
        start_bytes, end_bytes = thread.get("start"), thread.get("end")
        if not isinstance(start_bytes, (bytes, bytearray)) or not isinstance(end_bytes, (bytes, bytearray)):
            return None
        try:
            start = StickyIndex.decode(bytes(start_bytes), text).get_index()
            end = StickyIndex.decode(bytes(end_bytes), text).get_index()
        except (ValueError, RuntimeError):
            return None
        raw = str(text).encode()
        if start is None or end is None or not 0 <= start <= end <= len(raw):
            return None
        return len(raw[:start].decode("utf-8", "ignore")), len(raw[:end].decode("utf-8", "ignore"))

    # -- blame ----------------------------------------------------------------------------------------

    async def blame(self, room: Room, path: str) -> dict[str, Any]:
        await room.flush()
        key = (room.name, path)
        cached = self._blames.get(key)
        if cached is not None and cached[0] == room.stored_seq:
            return cached[1]
        seq = room.stored_seq
        answer = await self._blame(room, path)
        self._blames[key] = (seq, answer)
        if len(self._blames) > 256:  # the newest answers only
            self._blames.pop(next(iter(self._blames)))
        return answer

    async def _blame(self, room: Room, path: str) -> dict[str, Any]:
        found = await attribution.blame(self.store, room.name, path)
        if found is None:
            raise GitError(404, f"no file {path!r} in the room's log")
        text, stamps = found
        lines = []
        for number, (line, stamp) in enumerate(zip(text.split("\n"), stamps, strict=False), start=1):
            entry: dict[str, Any] = {"line": number, "text": line}
            if stamp is None:
                entry.update({"user": None, "name": None, "at": None, "origin": None})
            else:
                person = self.person(room, stamp.user) if stamp.user else None
                entry.update(
                    {
                        "user": stamp.user,
                        "name": person.name if person else None,
                        "at": stamp.at,
                        "origin": stamp.origin.split(":", 1)[0] if stamp.user else stamp.origin,
                    }
                )
            lines.append(entry)
        return {"path": path, "lines": lines}
