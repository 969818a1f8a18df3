"""A review pass as one Markdown document: what changed, the threads, their messages and evidence.

Pure formatting over the views ``review`` and ``review_passes`` produce, so it can be tested and
reused (a pull-request comment, an e-mail) without a server.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from pairroom.review.passes import FileChange

LANGUAGES = {
    ".py": "python",
    ".js": "javascript",
    ".ts": "typescript",
    ".md": "markdown",
    ".json": "json",
    ".html": "html",
    ".css": "css",
    ".sh": "sh",
    ".rs": "rust",
    ".go": "go",
    ".c": "c",
    ".java": "java",
}


def when(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def fence(body: str, language: str = "") -> str:
    """A fenced block whose fence is longer than any backtick run inside ``body``."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{body.rstrip(chr(10))}\n{ticks}\n"


def pass_markdown(
    room: str, record: dict[str, Any], changes: list[FileChange], threads: list[dict[str, Any]], counts: dict[str, int]
) -> str:
    title = record.get("title") or f"Review {record['id']}"
    out = [f"# {title}\n\n"]
    status = record.get("status", "active")
    out.append(
        f"Room `{room}` · started {when(record.get('startedAt'))} by {record.get('name') or record.get('by')}"
        + (f" · finished {when(record.get('finishedAt'))}" if record.get("finishedAt") else " · in progress")
        + f" · version {record.get('seq')} (previous review: {record.get('since')})\n\n"
    )
    out.append(
        f"**{status}**: {counts.get('open', 0)} open, {counts.get('resolved', 0)} resolved, "
        f"{counts.get('outdated', 0)} outdated thread(s).\n\n"
    )
    out.append("## Changes since the previous review\n\n")
    if not changes:
        out.append("No file changed.\n\n")
    for change in changes:
        out.append(f"### `{change.path}` ({change.kind})\n\n")
        out.append(fence(change.diff, "diff") + "\n")
    out.append("## Threads\n\n")
    if not threads:
        out.append("No threads.\n\n")
    for thread in threads:
        out.append(thread_markdown(thread))
    return "".join(out)


def thread_markdown(thread: dict[str, Any]) -> str:
    path = thread.get("path") or "?"
    where = thread.get("range")
    lines = f"lines {where['line']}-{where['endLine']}" if where else "code deleted"
    out = [f"### `{path}` {lines} · {thread.get('status')}\n\n"]
    language = LANGUAGES.get(PurePosixPath(path).suffix, "")
    if where:
        out.append(fence(where["code"], language) + "\n")
    for message in thread.get("messages", []):
        out.append(f"- **{message.get('name') or message.get('author')}** ({when(message.get('at'))}): ")
        out.append(message.get("text", "").replace("\n", "\n  ") + "\n")
        evidence = message.get("evidence")
        if evidence:
            if evidence.get("missing"):
                out.append(f"  Evidence: run `{evidence['id']}` (no longer in the room)\n")
            else:
                out.append(f"\n  Evidence: run `{evidence['id']}` ({evidence.get('status')})\n\n")
                body = fence(evidence.get("output") or "(no output)", "text")
                out.append("".join("  " + line for line in body.splitlines(keepends=True)))
    if thread.get("suggestion") is not None:
        out.append("\nSuggested change:\n\n" + fence(thread["suggestion"], language))
    out.append("\n")
    return "".join(out)
