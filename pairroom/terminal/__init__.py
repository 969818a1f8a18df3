"""Shared terminals: server-owned shells in the room's sandbox, with roles where the bytes enter."""
