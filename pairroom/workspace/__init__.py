"""The room's workspace on disk (core: imports only the core; kernels and terminals import it)."""

from .workspace import LISTING_ROOT, Workspace, Workspaces, WorkspaceSettings

__all__ = ["LISTING_ROOT", "Workspace", "Workspaces", "WorkspaceSettings"]
