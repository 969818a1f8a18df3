// The review threads of the whole room in one list, so none is lost from view: open ones first, then
// resolved, then outdated (their code was deleted or replaced, so the editor has nowhere to show
// them), each with its file and line, who started it, how many messages, and the code it is on. For an
// outdated thread that is the code it was on when this browser last saw it: the document keeps no copy
// (the deleted text is gone), so the page remembers each live thread's code per room in localStorage.
// Picking a thread opens its file and the thread.
import * as Y from 'yjs'
import { h } from '../shared.js'
import { swatch } from './colors.js'

const ORDER = { open: 0, resolved: 1, outdated: 2 }
const REMEMBERED = 300 // threads whose code a room's list remembers
const CODE_CHARS = 400
const LABEL = { open: 'Open', resolved: 'Resolved', outdated: 'Outdated' }

export class ThreadsPanel {
  /** ``show(path, id, line)`` opens the file and the thread; ``colorOf({id, name})`` a person's colour. */
  constructor(doc, { room, list, count, empty, show, colorOf }) {
    Object.assign(this, { doc, list, count, empty, show, colorOf })
    this.codeKey = `pairroom:thread-code:${room}`
    this.code = this.loadCode() // thread id -> the code it was last seen on
    this.reviews = doc.getMap('reviews')
    this.files = doc.getMap('files')
    this.scheduled = false
    const later = () => this.schedule()
    this.reviews.observeDeep(later)
    this.files.observeDeep(later) // lines move and code changes as people type
    this.render()
  }

  loadCode() {
    try {
      const saved = JSON.parse(localStorage.getItem(this.codeKey) || '{}')
      return new Map(Object.entries(saved && typeof saved === 'object' ? saved : {}).filter(([, v]) => typeof v === 'string'))
    } catch {
      return new Map()
    }
  }

  remember(id, code) {
    const kept = code.slice(0, CODE_CHARS)
    if (this.code.get(id) === kept) return
    this.code.delete(id)
    this.code.set(id, kept)
    while (this.code.size > REMEMBERED) this.code.delete(this.code.keys().next().value)
    try { localStorage.setItem(this.codeKey, JSON.stringify(Object.fromEntries(this.code))) } catch { /* storage off */ }
  }

  schedule() {
    if (this.scheduled) return
    this.scheduled = true
    setTimeout(() => { this.scheduled = false; this.render() }, 150)
  }

  /** {line, code} of a thread's range in its file now, or null when it points nowhere. */
  where(thread) {
    const text = this.files.get(thread.get('path'))
    if (!(text instanceof Y.Text)) return null
    const at = (bytes) => {
      try {
        const abs = Y.createAbsolutePositionFromRelativePosition(Y.decodeRelativePosition(bytes), this.doc)
        return abs && abs.type === text ? abs.index : null
      } catch {
        return null
      }
    }
    const from = at(thread.get('start'))
    const to = at(thread.get('end'))
    if (from == null || to == null || to <= from) return null
    const content = text.toString()
    return { line: content.slice(0, from).split('\n').length, code: content.slice(from, to) }
  }

  render() {
    const threads = []
    this.reviews.forEach((thread, id) => {
      if (!(thread instanceof Y.Map)) return
      const status = ORDER[thread.get('status')] === undefined ? 'open' : thread.get('status')
      const messages = thread.get('messages') instanceof Y.Array ? thread.get('messages').toArray() : []
      const place = status === 'outdated' ? null : this.where(thread)
      if (place) this.remember(id, place.code)
      threads.push({ id, thread, status, messages, place, path: String(thread.get('path') ?? '') })
    })
    threads.sort((a, b) => ORDER[a.status] - ORDER[b.status] || a.path.localeCompare(b.path) ||
      (a.place?.line ?? 0) - (b.place?.line ?? 0) || (Number(a.thread.get('createdAt')) || 0) - (Number(b.thread.get('createdAt')) || 0))
    const open = threads.filter((t) => t.status === 'open').length
    this.count.textContent = threads.length ? `(${open} open of ${threads.length})` : ''
    this.empty.hidden = threads.length > 0
    this.list.replaceChildren(...threads.map((t) => this.item(t)))
  }

  item({ id, status, messages, place, path }) {
    const first = messages.find((m) => m && typeof m.text === 'string')
    const where = place ? `${path}:${place.line}` : path
    const raw = place?.code ?? this.code.get(id) ?? null
    const code = raw?.trim() ? raw : null // a thread on a blank line shows no empty code box
    const replies = Math.max(0, messages.length - 1)
    const head = status === 'outdated'
      ? h('span', { class: 'thread-where' }, where)
      : h('button', { type: 'button', class: 'thread-where link', onclick: () => this.show(path, id, place?.line ?? 1), 'aria-label': `Show the thread on ${where}` }, where)
    return h('li', { class: `thread-item status-${status}`, 'data-thread': id, 'data-status': status },
      h('div', { class: 'thread-head' }, head, h('span', { class: `badge small thread-status status-${status}` }, LABEL[status])),
      first ? h('p', { class: 'thread-first' },
        swatch(this.colorOf({ id: first.author, name: first.name })),
        h('span', { class: 'chat-name' }, String(first.name ?? 'Someone')), first.text) : null,
      code ? h('pre', { class: 'thread-code' }, code.length > CODE_CHARS ? code.slice(0, CODE_CHARS) + '…' : code) : null,
      status === 'outdated'
        ? h('p', { class: 'hint' }, code ? 'This code was deleted or replaced since.' : 'Its code was deleted or replaced.')
        : null,
      replies ? h('p', { class: 'hint' }, replies === 1 ? '1 reply' : `${replies} replies`) : null)
  }
}
