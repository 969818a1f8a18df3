"""Turning a file changed on disk into edits of its ``Y.Text``, merged with edits made meanwhile in the editor.

Replacing a ``Y.Text`` wholesale would erase every concurrent keystroke and every cursor anchored in
it (jupyter-collaboration#571, #621). So a disk change becomes the smallest edits: a line diff, then a
character diff inside each changed block (difflib, as the recorder's restores do).

Three texts take part: ``base`` (what the document and the disk last agreed on), ``ours`` (the
document now) and ``theirs`` (the disk now). The disk's edits of ``base`` are moved onto ``ours``:
an edit that touches only text the editor left alone is applied where that text now is; one that
overlaps what the editor changed is a conflict, and then nothing the editor wrote is deleted: the
disk's new text is inserted after the editor's. Neither side is ever lost.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

from pycrdt import Text


class Edit(NamedTuple):
    """Replace ``[start, end)`` (character offsets) by ``insert``."""

    start: int
    end: int
    insert: str


def _offsets(lines: list[str]) -> list[int]:
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    return offsets


def text_edits(old: str, new: str) -> list[Edit]:
    """The edits that make ``old`` into ``new``, in ``old``'s offsets, ascending, non-overlapping."""
    if old == new:
        return []
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    a_at, b_at = _offsets(a), _offsets(b)
    edits: list[Edit] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        old_block, new_block = old[a_at[i1]:a_at[i2]], new[b_at[j1]:b_at[j2]]
        base = a_at[i1]
        if old_block and new_block and len(old_block) * len(new_block) <= 4_000_000:
            chars = difflib.SequenceMatcher(None, old_block, new_block, autojunk=False)
            for ctag, c1, c2, d1, d2 in chars.get_opcodes():
                if ctag != "equal":
                    edits.append(Edit(base + c1, base + c2, new_block[d1:d2]))
        else:
            edits.append(Edit(base, a_at[i2], new_block))
    return edits


def rebase(base: str, ours: str, theirs: str) -> tuple[list[Edit], int]:
    """The disk's edits (``base`` -> ``theirs``) as edits of ``ours``, and how many conflicted."""
    if ours == theirs:
        return [], 0
    disk = text_edits(base, theirs)
    if not disk:
        return [], 0
    mine = text_edits(base, ours)
    if not mine:
        return disk, 0
    out: list[Edit] = []
    conflicts = 0
    shift = 0  # how much the editor's edits before the current point moved offsets
    k = 0
    for edit in disk:
        # the editor's edits wholly before this one move it
        while k < len(mine) and mine[k].end <= edit.start and not (mine[k].start == mine[k].end == edit.start):
            shift += len(mine[k].insert) - (mine[k].end - mine[k].start)
            k += 1
        overlapping = []
        j = k
        while j < len(mine) and (mine[j].start < edit.end or mine[j].start == edit.start):
            overlapping.append(mine[j])
            j += 1
        if not overlapping:
            out.append(Edit(edit.start + shift, edit.end + shift, edit.insert))
            continue
        conflicts += 1
        # keep what the editor wrote; put the disk's text right after the editor's last change
        last = overlapping[-1]
        moved = shift + sum(len(m.insert) - (m.end - m.start) for m in overlapping)
        at = max(last.end, edit.end) + moved
        if edit.insert:
            out.append(Edit(at, at, edit.insert))
    out.sort(key=lambda e: (e.start, e.end))
    return out, conflicts


def apply(text: Text, current: str, edits: list[Edit]) -> None:
    """Apply ``edits`` (character offsets into ``current``, the text's content) to a ``Y.Text``,
    last first, in the caller's transaction. pycrdt indexes ``Y.Text`` by UTF-8 bytes."""
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        start = len(current[: edit.start].encode())
        end = start + len(current[edit.start:edit.end].encode())
        if end > start:
            del text[start:end]
        if edit.insert:
            text.insert(start, edit.insert)
