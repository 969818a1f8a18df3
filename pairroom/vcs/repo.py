"""A room's bare repository on the server: clone, read trees and blobs, write commits, fetch, push.

No work tree, ever: commits are built from the document's text with a temporary index
(``read-tree`` of the parent, ``update-index --index-info`` with blobs written from stdin,
``write-tree``, ``commit-tree``), and the room's line of commits is the ref ``refs/pairroom/head``,
moved with compare-and-set (``update-ref NEW OLD``). Fetched commits land in ``refs/pairroom/fetched``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .gitcli import Credential, Git, GitError

HEAD_REF = "refs/pairroom/head"
FETCHED_REF = "refs/pairroom/fetched"
ZERO = "0" * 40


@dataclass(frozen=True, slots=True)
class Entry:
    mode: str
    kind: str  # blob | commit (a submodule) | tree
    sha: str
    size: int | None


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    email: str

    def trailer(self) -> str:
        return f"Co-authored-by: {self.name} <{self.email}>"


def blob_sha(data: bytes) -> str:
    """The object id git gives ``data`` as a blob (to find changed files without asking git)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, git: Git) -> None:
        self.git = git
        self._trees: dict[str, dict[str, Entry]] = {}  # commit id -> its tree (a commit never changes)

    @property
    def path(self) -> str:
        return self.git.repo

    async def clone(self, url: str, ref: str | None, depth: int | None, credential: Credential | None = None) -> str:
        """Clone ``url`` bare (no checkout, no hooks) and point ``refs/pairroom/head`` at its tip;
        returns the branch or tag cloned."""
        args = ["clone", "--bare", "--no-tags", "--single-branch", "--no-recurse-submodules"]
        if depth:
            args += ["--depth", str(depth)]
        if ref:
            args += ["--branch", ref]
        result = await self.git.run([*args, "--", url, self.path], credential=credential, in_repo=False, check=False)
        if result.code != 0:
            message = result.err.strip().splitlines()
            raise GitError(422, "could not clone: " + (message[-1] if message else f"git exit {result.code}"))
        head = (await self.git.text("rev-parse", "--verify", "HEAD^{commit}")).strip()
        branch = (await self.git.run(["symbolic-ref", "--short", "HEAD"], check=False)).out.decode().strip()
        await self.git.run(["update-ref", HEAD_REF, head])
        return ref or branch

    async def rev(self, ref: str) -> str | None:
        result = await self.git.run(["rev-parse", "--verify", "--quiet", ref + "^{commit}"], check=False)
        return result.out.decode().strip() or None

    async def tree(self, rev: str) -> dict[str, Entry]:
        """Every entry of the commit's tree; remembered for commit ids (status asks on every change)."""
        known = self._trees.get(rev)
        if known is not None:
            return known
        out = (await self.git.run(["ls-tree", "-r", "-z", "-l", "--full-tree", rev])).out
        entries: dict[str, Entry] = {}
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, sha, size = meta.decode().split()
            entries[raw_path.decode("utf-8", "surrogateescape")] = Entry(
                mode, kind, sha, None if size == "-" else int(size)
            )
        if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev):
            if len(self._trees) >= 8:
                self._trees.pop(next(iter(self._trees)))
            self._trees[rev] = entries
        return entries

    async def blobs(self, shas: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(shas))
        if not wanted:
            return {}
        out = (await self.git.run(["cat-file", "--batch"], stdin="".join(s + "\n" for s in wanted).encode())).out
        found: dict[str, bytes] = {}
        at = 0
        for sha in wanted:
            end = out.index(b"\n", at)
            header = out[at:end].decode().split()
            at = end + 1
            if len(header) < 3:
                continue
            size = int(header[2])
            found[sha] = out[at : at + size]
            at += size + 1
        return found

    async def write_blob(self, data: bytes) -> str:
        return (await self.git.text("hash-object", "-w", "--stdin", stdin=data)).strip()

    async def commit(
        self,
        parent: str,
        files: Mapping[str, str],
        removed: Iterable[str],
        message: str,
        author: Person,
        committer: Person,
        parents: Iterable[str] = (),
    ) -> str:
        """A commit over ``parent`` whose ``files`` have the given text and ``removed`` are gone."""
        base = await self.tree(parent)
        lines = []
        for path, content in files.items():
            data = content.encode()
            sha = blob_sha(data)
            entry = base.get(path)
            if entry is not None and entry.sha == sha:
                continue
            written = await self.write_blob(data)
            assert written == sha, (written, sha)
            mode = entry.mode if entry is not None and entry.mode in ("100644", "100755") else "100644"
            lines.append(f"{mode} {sha}\t{path}")
        for path in removed:
            if path in base:
                lines.append(f"0 {ZERO}\t{path}")
        with tempfile.TemporaryDirectory(dir=self.git.home) as scratch:
            index = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
            await self.git.run(["read-tree", parent], env=index)
            if lines:
                await self.git.run(
                    ["update-index", "--index-info"], stdin="".join(x + "\n" for x in lines).encode(), env=index
                )
            tree = (await self.git.text("write-tree", env=index)).strip()
        people = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": committer.name,
            "GIT_COMMITTER_EMAIL": committer.email,
        }
        args = ["commit-tree", tree, "-p", parent]
        for other in parents:
            args += ["-p", other]
        return (await self.git.text(*args, "-F", "-", stdin=message.encode(), env=people)).strip()

    async def tree_of(self, rev: str) -> str:
        return (await self.git.text("rev-parse", rev + "^{tree}")).strip()

    async def merge_commit(self, tree: str, parents: list[str], message: str, author: Person, committer: Person) -> str:
        people = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": committer.name,
            "GIT_COMMITTER_EMAIL": committer.email,
        }
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return (await self.git.text(*args, "-F", "-", stdin=message.encode(), env=people)).strip()

    async def move_head(self, new: str, old: str) -> None:
        """Compare-and-set: fails (409) if someone moved the room's head meanwhile."""
        result = await self.git.run(["update-ref", HEAD_REF, new, old], check=False)
        if result.code != 0:
            raise GitError(409, "the room's branch moved meanwhile: try again")

    async def is_ancestor(self, older: str, newer: str) -> bool:
        return (await self.git.run(["merge-base", "--is-ancestor", older, newer], check=False)).code == 0

    async def merge_tree(self, ours: str, theirs: str) -> str | None:
        """The merged tree of two commits, or None when they conflict."""
        result = await self.git.run(["merge-tree", "--write-tree", "--no-messages", ours, theirs], check=False)
        if result.code == 0:
            return result.out.decode().split()[0]
        if result.code == 1:
            return None
        raise GitError(500, f"git merge-tree failed: {result.err.strip()[-500:]}")

    async def fetch(self, url: str, branch: str, credential: Credential | None) -> str | None:
        """Fetch ``branch`` of ``url`` into ``refs/pairroom/fetched``; None when it does not exist."""
        listed = await self.git.run(
            ["ls-remote", "--heads", "--", url, f"refs/heads/{branch}"], credential=credential, check=False
        )
        if listed.code != 0:
            raise GitError(502, "the remote did not answer: " + (listed.err.strip().splitlines() or ["?"])[-1])
        if not listed.out.strip():
            return None
        result = await self.git.run(
            ["fetch", "--no-tags", "--no-recurse-submodules", "--", url, f"+refs/heads/{branch}:{FETCHED_REF}"],
            credential=credential,
            check=False,
        )
        if result.code != 0:
            raise GitError(502, "fetch failed: " + (result.err.strip().splitlines() or ["?"])[-1])
        return await self.rev(FETCHED_REF)

    async def push(self, url: str, branch: str, credential: Credential | None, force: bool) -> str:
        spec = f"{'+' if force else ''}{HEAD_REF}:refs/heads/{branch}"
        result = await self.git.run(
            ["push", "--porcelain", "--no-verify", "--", url, spec], credential=credential, check=False
        )
        if result.code != 0:
            text = (result.out.decode("utf-8", "replace") + "\n" + result.err).strip()
            if "rejected" in text or "non-fast-forward" in text or "fetch first" in text:
                raise GitError(409, f"the remote refused the push: {last_lines(text)}; pull first, then push")
            raise GitError(502, f"push failed: {last_lines(text)}")
        return result.out.decode("utf-8", "replace")

    async def log(self, rev: str, limit: int) -> list[dict[str, object]]:
        fmt = "%H%x1f%an%x1f%ae%x1f%at%x1f%s%x1f%(trailers:key=Co-authored-by,valueonly,separator=%x1d)%x1e"
        out = await self.git.text("log", f"--format={fmt}", f"-n{limit}", rev)
        entries = []
        for record in out.split("\x1e"):
            record = record.strip("\n")
            if not record:
                continue
            sha, name, email, at, subject, coauthors = record.split("\x1f")
            entries.append(
                {
                    "sha": sha,
                    "author": {"name": name, "email": email},
                    "at": int(at) * 1000,
                    "subject": subject,
                    "coauthors": [c.strip() for c in coauthors.split("\x1d") if c.strip()],
                }
            )
        return entries


def copy_repository(source: str, dest: str, leave_out: tuple[str, ...] = ()) -> None:
    """Copy a bare repository: its objects hard-linked (git writes an object or a pack once and
    never changes it; a link the filesystem refuses is a copy), the rest copied. ``dest`` is
    replaced if it exists (a deleted room's leftover)."""
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    objects = os.path.join(source, "objects")

    def link_or_copy(src: str, dst: str) -> object:
        if os.path.commonpath([src, objects]) == objects:
            try:
                os.link(src, dst)
                return dst
            except OSError:
                pass
        return shutil.copy2(src, dst)

    shutil.copytree(
        source,
        dest,
        symlinks=True,
        ignore=lambda folder, names: [n for n in names if folder == source and n in leave_out],
        copy_function=link_or_copy,
    )


def last_lines(text: str, n: int = 3) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines()[-n:] if line.strip())
