// The replay page, /r/{room}/replay: pick a recorded session and play it back read-only. The server's
// replay socket speaks the y-websocket protocol (docs/recording.md), so an ordinary WebsocketProvider
// plays it; pause, play, speed and seek go to the server as JSON text frames, and the server publishes
// where it is in its own awareness state (client id 1).
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { yCollab } from 'y-codemirror.next'
import { basicSetup } from 'codemirror'
import { EditorView } from '@codemirror/view'
import { Compartment, EditorState } from '@codemirror/state'
import { h } from '../shared.js'
import { roomApi } from './api.js'
import { languageFor, languageName } from './languages.js'
import { remoteCarets } from './remote-carets.js'
import { swatch } from './colors.js'
import { replaySide } from './replay-side.js'
import { replayDebug } from './debug.js'

const TICK_MS = 200 // the clock and scrubber move this often while playing, between the server's statuses
const REPLAY_CLIENT_ID = 1
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
const dateFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' })

function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000))
  return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${Math.floor(s / 3600)} h ${Math.floor(s / 60) % 60} min`
}

export function startReplay(room, token) {
  const $ = (id) => document.getElementById(id)
  const api = roomApi(room, token)
  const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/replay`
  const language = new Compartment()
  const view = new EditorView({ parent: $('replay-editor') })
  const state = {
    sessions: [], session: null, timeline: null, t0: 0, t1: 0,
    doc: null, provider: null, status: null, path: null, bound: null,
    playing: false, scrubbing: false,
    statusAt: 0, voice: null, // when the status arrived; the session's recorded voice (replay-voice.js)
    casts: [], terminals: null, seekAt: null, // the session's terminals (replay-terminal.js); the last seek's time
  }

  const fail = (message) => { $('replay-error').textContent = message }

  function send(message) {
    const ws = state.provider?.ws
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message))
  }

  // -- sessions and the timeline --------------------------------------------------------------------

  async function loadSessions() {
    let sessions
    try {
      sessions = (await api('GET', 'sessions')).sessions
    } catch (error) {
      showEmpty(error.status === 404 ? 'Nothing has been recorded in this room yet.' : `No replay: ${error.message}`)
      return
    }
    state.sessions = sessions.slice().sort((a, b) => String(b.start).localeCompare(String(a.start)))
    if (!state.sessions.length) {
      showEmpty('No sessions recorded in this room yet.')
      return
    }
    $('replay-session').replaceChildren(...state.sessions.map((s) => {
      const names = s.participants.map((p) => p.name || p.id).join(', ')
      const length = s.end ? duration(Date.parse(s.end) - Date.parse(s.start)) : 'ongoing'
      return h('option', { value: s.id }, `${dateFormat.format(new Date(s.start))} · ${length} · ${names}`)
    }))
    await pickSession(state.sessions[0].id)
  }

  function showEmpty(text) {
    $('replay-empty').hidden = false
    $('replay-empty').textContent = text
    $('replay-session').disabled = true
    $('replay-speed').disabled = true
  }

  async function pickSession(id) {
    state.session = state.sessions.find((s) => s.id === id) ?? null
    if (!state.session) return
    fail('')
    const [timeline, casts] = await Promise.allSettled([
      api('GET', `timeline?session=${encodeURIComponent(id)}`),
      api('GET', `casts?session=${encodeURIComponent(id)}`),
    ])
    if (timeline.status === 'fulfilled') state.timeline = timeline.value
    else {
      fail(`No timeline: ${timeline.reason.message}`)
      state.timeline = { marks: [] }
    }
    state.casts = casts.status === 'fulfilled' ? casts.value.casts : []
    state.t0 = Date.parse(state.timeline.start ?? state.session.start)
    const ends = [state.timeline.end ?? state.session.end, ...state.timeline.marks.map((m) => m.at)].filter(Boolean).map(Date.parse)
    // A recorded voice is marked where it starts: the scrubber reaches to where it ends.
    const voiceEnds = state.timeline.marks.filter((m) => m.kind === 'audio' && m.at).map((m) => Date.parse(m.at) + 1000 * (Number(m.duration_seconds) || 0))
    // A terminal may print on after the last edit: the scrubber reaches to its last output too.
    const castEnds = state.casts.map((c) => c.end * 1000).filter((end) => end >= state.t0)
    state.t1 = Math.max(state.t0 + 1, ...ends, ...voiceEnds, ...castEnds)
    loadVoice(id).catch((error) => fail(`No recorded voice: ${error.message}`))
    loadTerminals(id).catch((error) => fail(`No recorded terminal: ${error.message}`))
    const scrubber = $('replay-scrubber')
    scrubber.max = String(state.t1 - state.t0)
    scrubber.value = '0'
    renderMarks()
    state.playing = false
    connect(null)
  }

  function renderMarks() {
    const span = state.t1 - state.t0
    $('replay-marks').replaceChildren(...state.timeline.marks.filter((m) => m.at).map((m) => {
      const left = Math.min(100, Math.max(0, ((Date.parse(m.at) - state.t0) / span) * 100))
      const who = m.name || m.user || ''
      return h('span', {
        class: `replay-mark mark-${m.kind}`, style: { left: `${left}%` },
        title: `${markLabel(m, who)} at ${timeFormat.format(new Date(m.at))}`,
      })
    }))
  }

  /** What a mark says on hover: a terminal's marks say who ran what ("Ada ran `ls`"). */
  function markLabel(m, who) {
    if (m.kind === 'terminal' && m.event === 'command') return `${who || 'someone'} ran \`${m.line}\` in ${m.terminalName}`
    if (m.kind === 'terminal') return `${m.terminalName}: ${m.event}${who ? ' by ' + who : ''}`
    return `${m.kind}${who ? ': ' + who : ''}`
  }

  // -- the replay connection ------------------------------------------------------------------------

  /** A fresh document and socket, from ``from`` (a seq; null: the session's start), its clock at ``at``. */
  function connect(from, at = null) {
    state.provider?.destroy()
    state.doc?.destroy()
    state.status = null
    state.bound = null
    const doc = state.doc = new Y.Doc()
    const params = { session: state.session.id, speed: $('replay-speed').value }
    if (from != null) params.from = String(from)
    if (at) params.at = at
    if (token) params.token = token
    const provider = state.provider = new WebsocketProvider(wsBase, encodeURIComponent(room), doc, { params })
    provider.awareness.setLocalState(null) // a replay publishes nothing (the server would drop it anyway)
    provider.on('status', ({ status }) => {
      // The server starts playing at once; hold it at the start until Play.
      if (status === 'connected' && !state.playing) send({ type: 'pause' })
      render()
    })
    provider.on('closed', ({ code, reason }) => {
      const seek = code === 4410 && /seek from=(\d+)/.exec(reason)
      if (seek) {
        // Reconnected from the seq, its clock at the moment asked for: editor, clock and terminals
        // stand at that instant from the first status on.
        connect(Number(seek[1]), state.seekAt)
      }
      else fail(`The replay stopped: ${reason || `closed (${code})`}`)
    })
    provider.awareness.on('change', () => {
      const replay = provider.awareness.getStates().get(REPLAY_CLIENT_ID)?.pairroom?.replay
      if (replay && replay !== state.status) {
        state.status = replay
        state.statusAt = performance.now()
      }
      render()
      renderPeople()
    })
    doc.getMap('files').observe(() => renderFiles())
    replaySide(doc, provider.awareness) // the chat and the runs as they were (replay-side.js)
    state.debugView?.()
    state.debugView = replayDebug(doc, $('replay-people-empty').parentNode) // where execution stopped then
    renderFiles()
    render()
  }

  // -- the recorded voice -------------------------------------------------------------------------------

  /**
   * Where the replay stands now: the server's last status, run forward at its speed while playing. A
   * replay ends at the last recorded change; a voice that goes on past it plays to its end (state.t1).
   */
  function position() {
    const status = state.status
    if (!status?.at) return null
    const moving = state.playing && !status.paused && Boolean(state.provider?.wsconnected)
    const at = Date.parse(status.at) + (moving ? (performance.now() - state.statusAt) * status.speed : 0)
    return { at, playing: moving && (!status.ended || at < state.t1), speed: status.speed }
  }

  async function loadVoice(id) {
    state.voice?.destroy()
    state.voice = null
    const marks = state.timeline.marks.filter((m) => m.kind === 'audio')
    if (!marks.length) return
    // Names: the recordings' own (their sidecars), else the session's participants.
    const [{ ReplayVoice }, recorded] = await Promise.all([
      import('./replay-voice.js'),
      api('GET', 'recordings').then((r) => r.recordings, () => []),
    ])
    if (state.session?.id !== id || state.voice) return // another session was picked meanwhile
    const names = new Map(state.session.participants.map((p) => [p.id, p.name]))
    for (const r of recorded) names.set(`${r.session}/${r.file}`, r.user?.name)
    const nameOf = (m) => names.get(`${m.session}/${m.file}`) || names.get(m.user) || 'someone'
    state.voice = new ReplayVoice($('replay-voice-slot'), marks, { room, token, nameOf, position })
  }

  // -- the recorded terminals ------------------------------------------------------------------------------

  async function loadTerminals(id) {
    state.terminals?.destroy()
    state.terminals = null
    if (!state.casts.length) return
    const { ReplayTerminals } = await import('./replay-terminal.js')
    if (state.session?.id !== id || state.terminals) return // another session was picked meanwhile
    const query = new URLSearchParams({ session: id })
    const fetchCast = async (terminal) => {
      const response = await fetch(`/api/rooms/${encodeURIComponent(room)}/casts/${encodeURIComponent(terminal)}?${query}`,
        { headers: token ? { authorization: `Bearer ${token}` } : {} })
      if (!response.ok) throw new Error((await response.json().catch(() => null))?.error || `HTTP ${response.status}`)
      return response.text()
    }
    state.terminals = new ReplayTerminals($('replay-terminals'), state.casts, { fetchCast, position })
  }

  // -- controls --------------------------------------------------------------------------------------

  $('replay-session').addEventListener('change', (event) => pickSession(event.target.value))
  $('replay-play').addEventListener('click', () => {
    if (state.status?.ended) {
      state.playing = true
      connect(null) // from the start again
      return
    }
    state.playing = !state.playing
    send({ type: state.playing ? 'play' : 'pause' })
    render()
  })
  $('replay-speed').addEventListener('change', (event) => send({ type: 'speed', value: Number(event.target.value) }))
  const scrubber = $('replay-scrubber')
  scrubber.addEventListener('input', () => {
    state.scrubbing = true
    $('replay-position').textContent = `Go to ${timeFormat.format(new Date(state.t0 + Number(scrubber.value)))}`
  })
  scrubber.addEventListener('change', () => {
    state.scrubbing = false
    const at = new Date(state.t0 + Number(scrubber.value)).toISOString()
    state.seekAt = at
    // Forward: the server skips ahead. Backward: it closes with 4410 and we reconnect from there.
    send({ type: 'seek', at })
  })

  // The server sends its position when something happens; in between, the clock runs on at its speed.
  setInterval(() => { if (position()?.playing) render() }, TICK_MS)

  function render() {
    const status = state.status
    const connected = Boolean(state.provider?.wsconnected)
    $('replay-play').disabled = !connected || !status
    $('replay-play').textContent = status?.ended ? 'Play again' : state.playing ? 'Pause' : 'Play'
    scrubber.disabled = !connected || !status
    if (!status) {
      $('replay-position').textContent = connected ? 'Loading the session…' : 'Connecting…'
      return
    }
    const now = position()
    const at = now ? Math.min(now.at, state.t1) : state.t0
    if (!state.scrubbing) scrubber.value = String(Math.max(0, at - state.t0))
    const where = status.ended ? 'Ended' : state.playing && !status.paused ? `Playing at ${status.speed}×` : 'Paused'
    $('replay-position').textContent =
      `${timeFormat.format(new Date(at))} (${duration(at - state.t0)} of ${duration(state.t1 - state.t0)}) · ${where}`
    $('replay').dataset.ended = String(Boolean(status.ended))
  }

  // -- who was there, with the names and colours they had then ---------------------------------------

  function renderPeople() {
    const states = state.provider ? [...state.provider.awareness.getStates()] : []
    const people = states.filter(([id, s]) => id !== REPLAY_CLIENT_ID && s?.user)
      .sort(([, a], [, b]) => String(a.user.name).localeCompare(String(b.user.name)))
    $('replay-people').replaceChildren(...people.map(([id, s]) =>
      h('li', { 'data-client': id },
        swatch(typeof s.user.color === 'string' ? s.user.color : '#888'),
        h('span', { class: 'person-name' }, String(s.user.name ?? 'Someone')),
        typeof s.file === 'string' ? h('span', { class: 'person-file hint' }, s.file) : null)))
    $('replay-people-empty').hidden = people.length > 0
  }

  // -- files and the read-only editor ---------------------------------------------------------------

  function renderFiles() {
    const files = state.doc.getMap('files')
    const paths = [...files.keys()].sort()
    if (!state.path || !files.has(state.path)) state.path = paths[0] ?? null
    $('replay-file-list').replaceChildren(...paths.map((path) =>
      h('li', { class: `file${path === state.path ? ' active' : ''}`, 'data-path': path },
        h('button', { type: 'button', class: 'open', 'aria-current': path === state.path ? 'true' : null, onclick: () => { state.path = path; renderFiles() } }, path))))
    const ytext = state.path ? files.get(state.path) : null
    if (ytext === state.bound) return
    state.bound = ytext instanceof Y.Text ? ytext : null
    const path = state.path
    $('replay-current').textContent = path ?? 'No file yet'
    view.setState(EditorState.create({
      doc: state.bound ? state.bound.toString() : '',
      extensions: state.bound ? [
        basicSetup,
        language.of([]),
        EditorState.readOnly.of(true),
        EditorView.editable.of(false),
        EditorView.contentAttributes.of({ 'aria-label': `${path} (${languageName(path)}), read-only replay` }),
        yCollab(state.bound, null, { undoManager: false }),
        remoteCarets(state.bound, state.provider.awareness), // the recorded carets, with the names they had
      ] : [EditorState.readOnly.of(true), EditorView.editable.of(false)],
    }))
    if (path) {
      languageFor(path).then((ext) => {
        if (state.path === path) view.dispatch({ effects: language.reconfigure(ext) })
      }, (error) => console.warn(`no highlighting for ${path}:`, error))
    }
  }

  loadSessions()

  // For tests and debugging from the console.
  window.pairroom = {
    view,
    get replay() {
      return {
        doc: state.doc, provider: state.provider, status: state.status, path: state.path, session: state.session,
        voice: state.voice?.snapshot() ?? null, terminal: state.terminals?.snapshot() ?? null, position: position(),
      }
    },
  }
}
