"""The room's sandbox: bubblewrap, resource limits (rlimits and cgroups) and their settings.

Shared infrastructure, like the workspace: kernels, terminals and the debugger run room code inside
it, so it belongs to none of them (features never import each other)."""
