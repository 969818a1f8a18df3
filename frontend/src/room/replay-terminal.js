// The terminals in a replay: each terminal recorded in the session (GET /api/rooms/{room}/casts, an
// asciicast v2 file each; docs/terminals.md, "Recording"), drawn by xterm.js at the replay's position.
// An event happened at (header.timestamp + t) on the room's clock, the clock the editor replays by, so
// the screen shows everything printed up to the replay's moment: moving forward writes what came
// since; moving back resets the terminal and writes from the start again (what a seek back does to the
// document too). One terminal is shown at a time, with tabs when the session had several.
import { h } from '../shared.js'

const SYNC_MS = 100

/** The events of an asciicast v2 file with their time on the room's clock (ms). */
export function parseCast(text) {
  const [head, ...lines] = text.split('\n').filter((line) => line.trim())
  const header = JSON.parse(head)
  const events = lines.map((line) => {
    const [t, code, data] = JSON.parse(line)
    return { at: (header.timestamp + t) * 1000, code, data }
  })
  return { header, events }
}

export class ReplayTerminals {
  /**
   * @param {HTMLElement} container  the section the tabs, the screen and the caption go in
   * @param {object[]} casts         the session's terminals (GET casts?session=): {terminal, name, start, end, ...}
   * @param {object} options         {fetchCast: id -> Promise<string>, position: () => {at, playing, speed} | null}
   */
  constructor(container, casts, { fetchCast, position }) {
    this.container = container
    this.position = position
    this.casts = casts.map((c) => ({ ...c, events: null, error: null }))
    this.current = null // {cast, term, next, shownAt, writing}
    this.tabs = h('div', { class: 'term-tabs', role: 'tablist', 'aria-label': 'Terminals then' })
    this.screen = h('div', { class: 'term-screen replay-term-screen', id: 'replay-term-screen' })
    this.caption = h('p', { class: 'hint', id: 'replay-term-caption', 'aria-live': 'polite' })
    container.replaceChildren(h('h2', { class: 'replay-term-title', id: 'replay-term-title' }, 'Terminal'), this.tabs, this.screen, this.caption)
    container.hidden = this.casts.length === 0
    this.loading = Promise.all(this.casts.map(async (cast) => {
      try {
        cast.events = parseCast(await fetchCast(cast.terminal))
      } catch (error) {
        cast.error = error.message
      }
    }))
    this.renderTabs()
    if (this.casts.length) this.show(this.casts[0].terminal)
    this.timer = setInterval(() => this.sync(), SYNC_MS)
  }

  renderTabs() {
    this.tabs.hidden = this.casts.length < 2
    this.tabs.replaceChildren(...this.casts.map((cast) => h('button', {
      type: 'button', role: 'tab', class: 'term-tab',
      'aria-selected': String(this.current?.cast === cast),
      onclick: () => this.show(cast.terminal),
    }, cast.name)))
  }

  async show(id) {
    const cast = this.casts.find((c) => c.terminal === id)
    if (!cast || this.current?.cast === cast) return
    this.current?.term.dispose()
    this.current = null
    const [{ Terminal }] = await Promise.all([import('@xterm/xterm'), import('@xterm/xterm/css/xterm.css'), this.loading])
    if (cast.error) {
      this.caption.textContent = `This terminal's recording could not be loaded: ${cast.error}`
      return
    }
    const { header } = cast.events
    const term = new Terminal({ cols: header.width, rows: header.height, scrollback: 2000, disableStdin: true, fontSize: 13 })
    this.screen.replaceChildren()
    term.open(this.screen)
    this.current = { cast, term, next: 0, shownAt: -Infinity, writing: 0 }
    this.renderTabs()
    this.sync()
  }

  /** Bring the shown terminal to the replay's position: forward by writing, backward by starting over. */
  sync() {
    const current = this.current
    const pos = this.position()
    if (!current || !pos) return
    const { term, cast } = current
    const { header, events } = cast.events
    if (pos.at < current.shownAt) {
      term.reset()
      term.resize(header.width, header.height)
      current.next = 0
      this.caption.textContent = ''
    }
    current.shownAt = pos.at
    let output = ''
    const flush = () => {
      if (!output) return
      current.writing += 1
      term.write(output, () => { current.writing -= 1 })
      output = ''
    }
    while (current.next < events.length && events[current.next].at <= pos.at) {
      const { code, data } = events[current.next]
      current.next += 1
      if (code === 'o') output += data
      else if (code === 'r') {
        flush()
        const [cols, rows] = data.split('x').map(Number)
        if (cols > 0 && rows > 0) term.resize(cols, rows)
      } else if (code === 'm') this.caption.textContent = data
    }
    flush()
  }

  /** For tests: the shown terminal's screen as text lines, and whether xterm has parsed it all. */
  snapshot() {
    const current = this.current
    if (!current) return { terminal: null, lines: [], settled: true }
    const buffer = current.term.buffer.active
    const lines = []
    for (let y = 0; y < buffer.length; y++) lines.push(buffer.getLine(y)?.translateToString(true) ?? '')
    return { terminal: current.cast.terminal, lines, settled: current.writing === 0, caption: this.caption.textContent }
  }

  destroy() {
    clearInterval(this.timer)
    this.current?.term.dispose()
    this.current = null
    this.container.replaceChildren()
    this.container.hidden = true
  }
}
