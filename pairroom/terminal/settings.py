"""Terminal settings: one frozen dataclass (the sandbox and its limits are the kernels' settings)."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class TerminalSettings:
    max_per_room: int = 3  # POST past it answers 409
    rows: int = 24  # a new terminal's size, until a writer's client sends its own
    cols: int = 80
    idle_seconds: float = 1800.0  # a terminal nobody watches and that printed nothing for this long ends
    output_bytes_per_second: int = 1 * MiB  # rate cap per terminal; past it the program waits
    viewer_queue_bytes: int = 1 * MiB  # a viewer further behind gets a fresh snapshot instead
    recording_bytes: int = 16 * MiB  # asciicast kept per terminal; then a marker and no more
    max_frame_bytes: int = 64 * KiB  # one client frame; larger closes with 1009
    frames_per_second: float = 200.0  # client frames; faster closes with 4429
