"""A pulled file merged into the document line by line, with conflicts kept out rather than mixed in.

base = the file at the room's last commit, ours = the document now (people may be typing), theirs =
the file in the pulled commit. The remote's changed blocks of lines that touch no line the room
changed are applied to ``ours`` as the smallest edits (``workspace.merge.text_edits`` inside each
block), so cursors and concurrent keystrokes elsewhere survive. A block that overlaps the room's
changes is a conflict: the room's text stays, and the caller shows both versions in a review thread
on those lines. Unlike the workspace's disk merge, a pull never interleaves two versions of a line.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pairroom.workspace.merge import Edit, text_edits


@dataclass(frozen=True, slots=True)
class Conflict:
    start: int  # the room's conflicting text, as character offsets into the merged result
    end: int
    ours: str
    theirs: str


def _blocks(old: str, new: str) -> list[tuple[int, int, str]]:
    """Changed line blocks of ``old`` as (start, end, replacement), character offsets."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    a_at = [0]
    for line in a:
        a_at.append(a_at[-1] + len(line))
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out.append((a_at[i1], a_at[i2], "".join(b[j1:j2])))
    return out


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    """Two changed blocks of the same base touch (an insertion touching a block counts, as in git)."""
    if a0 == a1 or b0 == b1:
        return a0 <= b1 and b0 <= a1
    return a0 < b1 and b0 < a1


def merge_lines(base: str, ours: str, theirs: str) -> tuple[list[Edit], list[Conflict]]:
    """Edits of ``ours`` that bring in the remote's changes, and the blocks that conflicted."""
    mine = _blocks(base, ours)
    shift = 0
    placed = []
    for start, end, insert in mine:
        placed.append((start + shift, start + shift + len(insert)))
        shift += len(insert) - (end - start)
    edits: list[Edit] = []
    pending: list[tuple[int, int, str, str]] = []  # conflicts in ours' offsets
    for start, end, insert in _blocks(base, theirs):
        clash = [k for k, (s, e, _) in enumerate(mine) if _overlap(s, e, start, end)]
        if clash:
            first, last = clash[0], clash[-1]
            o_start, o_end = placed[first][0], placed[last][1]
            pending.append((o_start, o_end, ours[o_start:o_end], insert))
            continue
        before = sum(len(m[2]) - (m[1] - m[0]) for m in mine if m[1] <= start)
        old_block = base[start:end]
        at = start + before
        for edit in text_edits(old_block, insert):
            edits.append(Edit(at + edit.start, at + edit.end, edit.insert))
    conflicts = []
    for o_start, o_end, ours_text, theirs_text in pending:
        moved = sum(len(e.insert) - (e.end - e.start) for e in edits if e.end <= o_start)
        conflicts.append(Conflict(o_start + moved, o_end + moved, ours_text, theirs_text))
    return edits, conflicts
