"""Debugging together: one debug session per room on the room's kernel, breakpoints in the document,
each stop fetched once and published for everyone (docs/debugger.md)."""
