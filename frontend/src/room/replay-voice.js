// The voice in a replay: the session's recorded call audio (docs/rtc.md, "The voice in the recording"),
// one <audio> per recorded participant, kept at the replay's position. The timeline lists each recording
// as an `audio` mark at its first frame (`at`) with its `session`, `file` and `duration_seconds`; the file
// comes from GET /api/rooms/{room}/recordings/{session}/{file}. Loaded only for sessions that have voice.
import { h } from '../shared.js'

const SYNC_MS = 250
const DRIFT_SECONDS = 0.3 // re-seek an element further than this (times the speed) from the replay

export class ReplayVoice {
  /**
   * @param {HTMLElement} container  where the (control-less) audio elements and their caption go
   * @param {object[]} marks         the timeline's `audio` marks
   * @param {object} options         {room, token, nameOf: mark -> name, position: () => {at, playing, speed} | null}
   */
  constructor(container, marks, { room, token, nameOf, position }) {
    this.container = container
    this.position = position
    const query = token ? `?token=${encodeURIComponent(token)}` : ''
    this.tracks = marks.filter((m) => m.at && m.file && m.session && m.duration_seconds > 0).map((m) => {
      const audio = h('audio', { preload: 'auto', 'data-user': m.user ?? '' })
      audio.src = `/api/rooms/${encodeURIComponent(room)}/recordings/${encodeURIComponent(m.session)}/${encodeURIComponent(m.file)}${query}`
      return { start: Date.parse(m.at), duration: Number(m.duration_seconds), audio, name: nameOf(m) }
    })
    const who = [...new Set(this.tracks.map((t) => t.name))].join(', ')
    this.caption = h('p', { id: 'replay-voice', class: 'hint' }, this.tracks.length ? `With recorded voice: ${who}.` : '')
    container.append(this.caption, ...this.tracks.map((t) => t.audio))
    this.timer = setInterval(() => this.sync(), SYNC_MS)
  }

  /** Play what is audible at the replay's position, at its speed; pause the rest. */
  sync() {
    const pos = this.position()
    for (const track of this.tracks) {
      const { audio } = track
      const offset = pos ? (pos.at - track.start) / 1000 : -1
      if (!pos?.playing || offset < 0 || offset >= track.duration) {
        if (!audio.paused) audio.pause()
        continue
      }
      if (audio.playbackRate !== pos.speed) audio.playbackRate = pos.speed
      if (audio.paused || Math.abs(audio.currentTime - offset) > DRIFT_SECONDS * Math.max(1, pos.speed)) {
        audio.currentTime = offset
      }
      if (audio.paused) audio.play().catch((error) => console.warn('replay voice:', error.name))
    }
  }

  /** For tests: each voice, with where it should be now (`expected`, seconds into the file). */
  snapshot() {
    const pos = this.position()
    return this.tracks.map(({ start, duration, name, audio }) => ({
      start, duration, name, src: audio.currentSrc || audio.src, currentTime: audio.currentTime,
      expected: pos ? (pos.at - start) / 1000 : null,
      paused: audio.paused, playbackRate: audio.playbackRate, readyState: audio.readyState,
    }))
  }

  destroy() {
    clearInterval(this.timer)
    for (const { audio } of this.tracks) {
      audio.pause()
      audio.removeAttribute('src')
      audio.load()
      audio.remove()
    }
    this.caption.remove()
  }
}
