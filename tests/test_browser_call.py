"""Calls in the room page, end to end: two Chromium contexts join a room's call through pairroom's
``/call/{room}`` signaling and see and hear each other; a recorded call's voice plays in the replay.

Each test runs one scenario of this module inside a fresh loopback-only network namespace
(``unshare -n``, then ``ip link set lo up``), as tests/test_rtc_media.py does: the server (the
``WebServer`` of tests/support/browser.py, with 127.0.0.1 as the recorder's only host candidate) and
Chromium (fake camera and microphone, loopback candidates allowed) both live there, so ICE never
targets this machine's network card. The scenario prints one ``RESULT {json}`` line with what it
measured; the tests assert on it. Pages photograph themselves into tests/artifacts/, and any console
error fails the test. Needs root for the namespace (CI has it).

    unshare -n sh -c 'ip link set lo up && exec python -m tests.test_browser_call SCENARIO TEST WORKDIR CHROMIUM'

Scenarios: ``call`` (two people: video, mute, camera, leave), ``floor`` (``speak: owners`` with
tokens: a viewer listens, then is given the floor), ``record`` (a recorded call, then its voice in
the replay page).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import httpx
import pytest

from pairroom.rtc.settings import RtcSettings
from pairroom.web.auth import mint
from pairroom.config import Settings
from pairroom.web.static import STATIC_DIR
from tests.support.browser import ARTIFACTS, CHROMIUM_FLAGS, WAIT_MS, WebServer, ensure_build, ensure_chromium

ROOT = Path(__file__).resolve().parent.parent
MEDIA_FLAGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
]
ROOM = "pairing"
SECRET = "call-test-secret-0123456789abcdef"
REMOTE_TILE = ".call-tile:not(.self)"

pytestmark = pytest.mark.slow


def scenario(name: str, test: str, workdir: Path) -> dict[str, Any]:
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/apt-install util-linux iproute2")
    ensure_build()  # outside the namespace: npm may need the network
    chromium = ensure_chromium()
    started = time.monotonic()
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -m tests.test_browser_call "$@"',
         sys.executable, name, test, str(workdir), str(chromium)],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            result["wall_seconds"] = round(time.monotonic() - started, 1)
            assert "failed" not in result, f"{result['failed']}\n{proc.stderr[-3000:]}"
            assert not result["console_errors"], result["console_errors"]
            return result
    raise AssertionError(f"scenario {name} gave no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def test_two_browsers_call_each_other_with_video_mute_and_leave(tmp_path: Path) -> None:
    result = scenario("call", "test_two_browsers_call_each_other_with_video_mute_and_leave", tmp_path)
    for who, other in (("ada", "Bob"), ("bob", "Ada")):
        side = result[who]
        [remote] = side["peers"].values()
        assert remote["connectionState"] == "connected", side
        assert remote["framesDecoded"] > 0 and remote["frameWidth"] > 0, side  # frames, not just a socket
        assert remote["audioPackets"] > 0, side
        assert remote["name"] == other and side["tile_names"] == [f"{who.title()} (you)", other], side
        video = side["video"]
        assert video["videoWidth"] > 0 and video["later"] > video["currentTime"], video  # playing, not frozen
    # Ada's toggles, as Bob's tile for her shows them (and her own buttons).
    assert result["toggles"] == {
        "muted": {"ada_pressed": "true", "bob_sees": "true", "badge_visible": True},
        "camera_off": {"ada_pressed": "true", "bob_sees": "false", "avatar_visible": True},
        "unmuted": {"ada_pressed": "false", "bob_sees": "false", "badge_visible": False},
    }
    assert result["keyboard_join"] == {"label": "Leave call", "focused": "call-join"}
    assert result["enlarged"] == {"pressed": "true", "label": "Enlarge Ada’s tile", "wider": True, "full": True}
    # Bob leaves: his tile goes from Ada's page, and his page shows no call.
    assert result["after_leave"] == {"ada_tiles": 1, "ada_peers": 0, "bob_tiles": 0, "bob_state": "idle"}
    assert result["wall_seconds"] < 40, result["wall_seconds"]


def test_recorded_call_voice_plays_in_the_replay_in_step_with_it(tmp_path: Path) -> None:
    result = scenario("record", "test_recorded_call_voice_plays_in_the_replay_in_step_with_it", tmp_path)
    # The server recorded both browsers' voices.
    recordings = result["recordings"]
    assert len(recordings) == 2 and len({r["peer"] for r in recordings}) == 2, recordings
    assert all(r["source"] == "call" and r["frames"] > 50 and r["duration_seconds"] >= 1.5 for r in recordings), recordings
    assert result["audio_file"] == {"status": 200, "type": "audio/ogg", "ogg": True}
    # The replay lists them and plays them where the replay is, at its speed.
    voice = result["playing"]
    assert len(voice) == 2 and all(v["readyState"] >= 1 for v in voice), voice
    audible = [v for v in voice if not v["paused"]]
    assert audible, voice
    for v in audible:
        assert v["currentTime"] > 0.3 and abs(v["currentTime"] - v["expected"]) < 0.5, v
    assert all(v["paused"] for v in result["paused"]), result["paused"]
    assert result["caption"].startswith("With recorded voice: ")
    assert result["status_in_call"] == "This call's audio is recorded."
    assert result["wall_seconds"] < 45, result["wall_seconds"]


def test_owner_gives_a_listening_viewer_the_floor(tmp_path: Path) -> None:
    result = scenario("floor", "test_owner_gives_a_listening_viewer_the_floor", tmp_path)
    # Under `speak: owners` the viewer joins listening: no controls, no media (the server enforces it).
    assert result["listening"] == {
        "bob_speaker": False, "bob_mute_disabled": True, "bob_camera_disabled": True, "bob_floor_buttons": 0,
        "ada_sees_bob": {"muted": "true", "camera": "false", "floor": "false"},
    }
    assert result["bob_status"].startswith("Listening")
    # Given the floor, he sends video (Ada decodes it) and unmutes.
    assert result["speaking"] == {
        "bob_speaker": True, "bob_mute_disabled": False, "bob_camera_disabled": False, "bob_floor_buttons": 0,
        "ada_sees_bob": {"muted": "false", "camera": "true", "floor": "true"},
    }
    assert result["wall_seconds"] < 40, result["wall_seconds"]


# -- the scenarios, run inside the namespace ---------------------------------------------------------


class Scenario:
    def __init__(self, test: str, workdir: Path, chromium: str, sync_api: Any, playwright: Any) -> None:
        self.test = test
        self.workdir = workdir
        self.sync_api = sync_api
        self.browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS + MEDIA_FLAGS)
        self.pages: list[tuple[str, Any]] = []
        self.errors: list[str] = []
        self.server: WebServer | None = None
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def serve(self, rtc: RtcSettings, secret: str | None = None) -> WebServer:
        settings = dataclasses.replace(
            Settings(), port=0, db=f"sqlite:///{self.workdir / 'pairroom.db'}", log_format="text",
            log_level="warning", kernels=False, rtc=rtc, secret=secret,
        )
        # A copy of the build, taken under the build lock: a rebuild by another test run in this tree
        # replaces the hashed assets, and the lazily loaded chunks would vanish mid-test.
        static = self.workdir / "static"
        with open(ROOT / ".cache" / "frontend-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            shutil.copytree(STATIC_DIR, static)  # built by the test, before the namespace
        self.server = WebServer(settings, static)
        self.server.start()
        return self.server

    def open(self, label: str, path: str, name: str) -> Any:
        context = self.browser.new_context(viewport={"width": 1280, "height": 720})
        context.set_default_timeout(WAIT_MS)
        context.add_init_script(f"if (window === window.top) localStorage.setItem('pairroom:name', {name!r})")
        # Chromium reports offline where no interface but loopback has an address, as in this namespace,
        # and the room page then waits for the network before it connects: the server is on loopback.
        context.add_init_script("Object.defineProperty(Navigator.prototype, 'onLine', { get: () => true })")
        page = context.new_page()
        page.on("console", lambda m: self.errors.append(f"{label}: console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"{label}: uncaught: {exc}"))
        assert self.server is not None
        page.goto(self.server.url(path))
        self.pages.append((label, page))
        return page

    def close(self) -> None:
        try:
            for label, page in self.pages:
                if not page.is_closed():
                    page.screenshot(path=str(ARTIFACTS / f"{self.test}-{label}.png"))
        finally:
            self.browser.close()
        if self.server is not None:
            self.server.stop()


def wait_connected(page: Any) -> None:
    page.wait_for_function("() => window.pairroom && window.pairroom.provider.synced")


def join_call(page: Any) -> None:
    page.click("#call-join")
    page.wait_for_function("() => window.pairroom.call && window.pairroom.call.state === 'joined'")


def wait_media(page: Any, *, recorder: bool = False, frames: bool = True) -> dict[str, Any]:
    """Every peer connected; with ``frames``, every person's video decoding frames and their audio
    arriving (the recorder sends nothing)."""
    page.wait_for_function(
        """([recorder, frames]) => {
          const peers = Object.values(window.pairroom.call.view.peers)
          return peers.length > 0 && peers.some((p) => p.recorder) === recorder && peers.every((p) =>
            p.connectionState === 'connected'
            && (p.recorder || !frames || (p.framesDecoded > 0 && p.frameWidth > 0 && p.audioPackets > 0)))
        }""",
        arg=[recorder, frames], polling=250,
    )
    return page.evaluate("() => window.pairroom.call.snapshot()")  # type: ignore[no-any-return]


def call_scenario(s: Scenario) -> dict[str, Any]:
    s.serve(RtcSettings(media_addresses=("127.0.0.1",), recording_dir=str(s.workdir / "recordings")))
    ada = s.open("ada", f"/r/{ROOM}", "Ada")
    bob = s.open("bob", f"/r/{ROOM}", "Bob")
    wait_connected(ada)
    wait_connected(bob)
    out: dict[str, Any] = {}

    # Ada joins from the keyboard; Bob with the mouse.
    ada.focus("#call-join")
    ada.keyboard.press("Enter")
    ada.wait_for_function("() => window.pairroom.call && window.pairroom.call.state === 'joined'")
    out["keyboard_join"] = {
        "label": ada.inner_text("#call-join"),
        "focused": ada.evaluate("() => document.activeElement && document.activeElement.id"),
    }
    join_call(bob)
    for label, page in (("ada", ada), ("bob", bob)):
        snap = wait_media(page)
        video = page.evaluate(
            f"() => {{ const v = document.querySelector('{REMOTE_TILE} video');"
            " return {videoWidth: v.videoWidth, currentTime: v.currentTime} }"
        )
        page.wait_for_timeout(400)  # let the video element's clock move on
        video["later"] = page.evaluate(f"() => document.querySelector('{REMOTE_TILE} video').currentTime")
        tile_names = page.eval_on_selector_all(".call-tile .call-name", "els => els.map((e) => e.textContent)")
        out[label] = {"peers": snap["peers"], "video": video, "tile_names": tile_names}

    # Ada mutes, turns her camera off, unmutes: Bob's tile for her follows.
    toggles: dict[str, Any] = {}
    ada.click("#call-mute")
    bob.wait_for_selector(f"{REMOTE_TILE}[data-muted='true']")
    toggles["muted"] = {
        "ada_pressed": ada.get_attribute("#call-mute", "aria-pressed"),
        "bob_sees": bob.get_attribute(REMOTE_TILE, "data-muted"),
        "badge_visible": bob.is_visible(f"{REMOTE_TILE} .call-muted"),
    }
    ada.click("#call-camera")
    bob.wait_for_selector(f"{REMOTE_TILE}[data-camera='false']")
    toggles["camera_off"] = {
        "ada_pressed": ada.get_attribute("#call-camera", "aria-pressed"),
        "bob_sees": bob.get_attribute(REMOTE_TILE, "data-camera"),
        "avatar_visible": bob.is_visible(f"{REMOTE_TILE} .call-avatar"),
    }
    ada.click("#call-mute")
    bob.wait_for_selector(f"{REMOTE_TILE}[data-muted='false']")
    toggles["unmuted"] = {
        "ada_pressed": ada.get_attribute("#call-mute", "aria-pressed"),
        "bob_sees": bob.get_attribute(REMOTE_TILE, "data-muted"),
        "badge_visible": bob.is_visible(f"{REMOTE_TILE} .call-muted"),
    }
    out["toggles"] = toggles
    # Bob enlarges Ada's tile: it takes the call panel's whole width; pressed again, it shrinks back.
    small = bob.evaluate(f"() => document.querySelector('{REMOTE_TILE}').getBoundingClientRect().width")
    bob.click(f"{REMOTE_TILE} .call-enlarge")
    out["enlarged"] = bob.evaluate(
        f"(small) => {{ const t = document.querySelector('{REMOTE_TILE}'), list = document.querySelector('#call-tiles');"
        " return {pressed: t.querySelector('.call-enlarge').getAttribute('aria-pressed'),"
        " label: t.querySelector('.call-enlarge').getAttribute('aria-label'),"
        " wider: t.getBoundingClientRect().width > small * 1.5,"
        " full: Math.abs(t.getBoundingClientRect().width - list.getBoundingClientRect().width) < 2} }", small)
    bob.screenshot(path=str(ARTIFACTS / f"{s.test}-bob-enlarged.png"))
    bob.click(f"{REMOTE_TILE} .call-enlarge")
    for label, page in (("ada", ada), ("bob", bob)):
        page.screenshot(path=str(ARTIFACTS / f"{s.test}-{label}-in-call.png"))

    # Bob leaves.
    bob.click("#call-join")
    ada.wait_for_selector(REMOTE_TILE, state="detached")
    out["after_leave"] = {
        "ada_tiles": ada.locator(".call-tile").count(),
        "ada_peers": len(ada.evaluate("async () => (await window.pairroom.call.snapshot()).peers")),
        "bob_tiles": bob.locator(".call-tile").count(),
        "bob_state": bob.evaluate("() => window.pairroom.call.state"),
    }
    return out


def record_scenario(s: Scenario) -> dict[str, Any]:
    server = s.serve(RtcSettings(
        media_addresses=("127.0.0.1",), record_rooms=frozenset({ROOM}), recording_dir=str(s.workdir / "recordings"),
    ))
    ada = s.open("ada", f"/r/{ROOM}", "Ada")
    bob = s.open("bob", f"/r/{ROOM}", "Bob")
    wait_connected(ada)
    wait_connected(bob)
    join_call(ada)
    join_call(bob)
    wait_media(ada, recorder=True)
    wait_media(bob, recorder=True)
    out: dict[str, Any] = {"status_in_call": ada.inner_text("#call-status")}
    ada.screenshot(path=str(ARTIFACTS / f"{s.test}-ada-in-call.png"))
    # Ada types while they talk (about 2.5 s of voice), so the replay has code to go with the voice.
    ada.fill("#new-file-path", "main.py")
    ada.press("#new-file-path", "Enter")
    ada.wait_for_function("() => window.pairroom.currentPath === 'main.py'")
    ada.keyboard.type("print('talking while typing')", delay=90)
    ada.click("#call-join")
    bob.click("#call-join")
    with httpx.Client(base_url=server.http, timeout=5) as http:
        deadline = time.monotonic() + 15
        while True:  # sidecars once the recorder has seen each peer leave; timeline marks once flushed
            recordings = http.get(f"/api/rooms/{ROOM}/recordings").json()["recordings"]
            sessions = http.get(f"/api/rooms/{ROOM}/sessions").json()["sessions"]
            marks = [
                m for session in sessions
                for m in http.get(f"/api/rooms/{ROOM}/timeline", params={"session": session["id"]}).json()["marks"]
                if m["kind"] == "audio"
            ]
            if len(recordings) >= 2 and len(marks) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out["recordings"] = recordings
        first = recordings[0]
        audio = http.get(f"/api/rooms/{ROOM}/recordings/{first['session']}/{first['file']}")
        out["audio_file"] = {
            "status": audio.status_code, "type": audio.headers.get("content-type"), "ogg": audio.content[:4] == b"OggS",
        }

    replay = s.open("replay", f"/r/{ROOM}/replay", "Carol")
    replay.wait_for_function(
        "() => { const r = window.pairroom.replay; return r.status && r.voice && r.voice.length === 2"
        " && r.voice.every((v) => v.readyState >= 1) }"
    )
    # Seek to half a second into the first voice, then play.
    start = replay.evaluate("() => Math.min(...window.pairroom.replay.voice.map((v) => v.start))")
    # The scrubber's value is the position's distance from the session's start.
    t0 = replay.evaluate(
        "() => Date.parse(window.pairroom.replay.status.at) - Number(document.getElementById('replay-scrubber').value)"
    )
    replay.eval_on_selector(
        "#replay-scrubber",
        "(el, value) => { el.value = String(value); el.dispatchEvent(new Event('change')) }",
        start + 500 - t0,
    )
    replay.wait_for_function("(at) => Date.parse(window.pairroom.replay.status.at) >= at", arg=start + 400)
    replay.click("#replay-play")
    replay.wait_for_function(
        "() => window.pairroom.replay.voice.some((v) => !v.paused && v.currentTime > 1.0)", polling=100
    )
    out["playing"] = replay.evaluate("() => window.pairroom.replay.voice")
    out["caption"] = replay.inner_text("#replay-voice")
    replay.screenshot(path=str(ARTIFACTS / f"{s.test}-replay-playing.png"))
    replay.click("#replay-play")  # pause
    replay.wait_for_function("() => window.pairroom.replay.voice.every((v) => v.paused)")
    out["paused"] = replay.evaluate("() => window.pairroom.replay.voice")
    return out


def floor_scenario(s: Scenario) -> dict[str, Any]:
    """``speak: owners`` with tokens: the owner speaks, a viewer listens until given the floor."""
    s.serve(RtcSettings(media_addresses=("127.0.0.1",), owners_speak_rooms=frozenset({ROOM})), secret=SECRET)
    ada = s.open("ada", f"/r/{ROOM}?token={mint(SECRET, ROOM, 'owner', 'Ada')}", "Ada")
    bob = s.open("bob", f"/r/{ROOM}?token={mint(SECRET, ROOM, 'viewer', 'Bob')}", "Bob")
    wait_connected(ada)
    wait_connected(bob)
    join_call(ada)
    join_call(bob)
    wait_media(bob)  # Ada's camera and voice reach the listener
    wait_media(ada, frames=False)  # nothing comes from a listener
    [bob_id] = ada.evaluate("() => Object.keys(window.pairroom.call.view.peers)")

    def sides() -> dict[str, Any]:
        return {
            "bob_speaker": bob.evaluate("() => window.pairroom.call.view.speaker"),
            "bob_mute_disabled": bob.is_disabled("#call-mute"),
            "bob_camera_disabled": bob.is_disabled("#call-camera"),
            "bob_floor_buttons": bob.locator(".call-floor").count(),
            "ada_sees_bob": ada.evaluate(
                "(id) => { const t = document.querySelector(`.call-tile[data-peer='${id}']`);"
                " return {muted: t.dataset.muted, camera: t.dataset.camera, floor: t.querySelector('.call-floor').getAttribute('aria-pressed')} }",
                bob_id,
            ),
        }

    out: dict[str, Any] = {"listening": sides(), "bob_status": bob.inner_text("#call-status")}
    ada.click(f".call-tile[data-peer='{bob_id}'] .call-floor")  # Ada gives Bob the floor
    bob.wait_for_function("() => window.pairroom.call.view.speaker")
    ada.wait_for_function(  # Bob's camera now reaches Ada
        "(id) => (window.pairroom.call.view.peers[id] || {}).framesDecoded > 0", arg=bob_id, polling=250
    )
    bob.click("#call-mute")  # and he unmutes
    ada.wait_for_selector(f".call-tile[data-peer='{bob_id}'][data-muted='false']")
    out["speaking"] = sides()
    for label, page in (("ada", ada), ("bob", bob)):
        page.screenshot(path=str(ARTIFACTS / f"{s.test}-{label}-in-call.png"))
    return out


SCENARIOS = {"call": call_scenario, "record": record_scenario, "floor": floor_scenario}


def main(name: str, test: str, workdir: Path, chromium: str) -> dict[str, Any]:
    from playwright import sync_api

    from tests.rtc.scenario import namespace_interfaces

    interfaces = namespace_interfaces()
    if interfaces != ["lo"]:
        raise SystemExit(f"refusing to run: interfaces {interfaces}; run inside `unshare -n`")
    with sync_api.sync_playwright() as playwright:
        s = Scenario(test, workdir, chromium, sync_api, playwright)
        try:
            result = SCENARIOS[name](s)
        except Exception as exc:  # reported to the test, which fails with it
            result = {"failed": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"}
        finally:
            s.close()
        result["console_errors"] = s.errors
        return result


if __name__ == "__main__":
    out = main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4])
    print("RESULT " + json.dumps(out), flush=True)
