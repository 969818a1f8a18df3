// Review threads in the editor (docs/review.md; `reviews` in docs/doc-schema.md).
//
// A gutter marker sits on the first line of every open or resolved thread of the open file; the
// marker (a button) opens the thread below the thread's last line as a block widget: its messages,
// its suggestion with *Apply*, a reply field and *Resolve*/*Reopen*. *Comment on line* (or Mod-Alt-m)
// opens a draft on the selected lines. Threads are written straight into the document, anchored with
// Yjs relative positions as the schema says; applying a suggestion goes through the HTTP API, which
// replaces the range wherever concurrent edits moved it and resolves the thread in one edit.
//
// This module holds the state and the gutter; the thread and draft views are drawn by
// review-thread.js, loaded the first time one is opened.
import * as Y from 'yjs'
import { RangeSet, StateEffect, StateField } from '@codemirror/state'
import { Decoration, EditorView, GutterMarker, WidgetType, gutter, keymap } from '@codemirror/view'
import { randomId } from '../shared.js'

const setThreads = StateEffect.define() // [{id, from, to, status}], sorted by from
const setOpen = StateEffect.define() // Set of open thread ids
const setDraft = StateEffect.define() // {from, to} or null

const mapRange = (changes, { from, to }) => ({ from: changes.mapPos(from, 1), to: Math.max(changes.mapPos(from, 1), changes.mapPos(to, -1)) })

const field = StateField.define({
  create: () => ({ threads: [], open: new Set(), draft: null }),
  update(value, tr) {
    let { threads, open, draft } = value
    if (tr.docChanged) {
      threads = threads.map((t) => ({ ...t, ...mapRange(tr.changes, t) }))
      if (draft) draft = mapRange(tr.changes, draft)
    }
    for (const effect of tr.effects) {
      if (effect.is(setThreads)) threads = effect.value
      else if (effect.is(setOpen)) open = effect.value
      else if (effect.is(setDraft)) draft = effect.value
    }
    return threads === value.threads && open === value.open && draft === value.draft ? value : { threads, open, draft }
  },
})

const rangeMark = Decoration.mark({ class: 'cm-review-range' }) // the code an open thread is about

/** The line a range's widget goes under: the line of its last character. */
const lastLine = (doc, { from, to }) => doc.lineAt(Math.max(from, to - 1))

class ThreadMarker extends GutterMarker {
  constructor(reviews, line, threads, open) {
    super()
    this.reviews = reviews
    this.line = line
    this.ids = threads.map((t) => t.id)
    this.resolved = threads.every((t) => t.status === 'resolved')
    this.open = open
    this.key = `${line}|${threads.map((t) => `${t.id}:${t.status}`).join(',')}|${open}`
  }

  eq(other) {
    return other.key === this.key
  }

  toDOM() {
    const count = this.ids.length
    const what = `${count} ${this.resolved ? 'resolved ' : ''}review thread${count > 1 ? 's' : ''} on line ${this.line}`
    const button = document.createElement('button')
    button.type = 'button'
    button.className = 'review-marker' + (this.resolved ? ' resolved' : '')
    button.dataset.line = String(this.line)
    button.setAttribute('aria-label', `${this.open ? 'Hide' : 'Show'} ${what}`)
    button.setAttribute('aria-expanded', String(this.open))
    button.title = what
    button.textContent = this.resolved ? '✓' : String(count)
    button.addEventListener('mousedown', (event) => event.preventDefault()) // keep the editor's selection
    button.addEventListener('click', () => this.reviews.toggle(this.ids, !this.open))
    return button
  }
}

class ThreadWidget extends WidgetType {
  constructor(reviews, id) {
    super()
    this.reviews = reviews
    this.id = id
  }

  eq(other) {
    return other.id === this.id
  }

  toDOM() {
    return this.reviews.element(this.id)
  }

  get estimatedHeight() {
    return 120
  }
}

export class Reviews {
  /**
   * ``role`` is the page's role: viewers read threads, every other role comments and resolves, editors
   * and owners also apply suggestions. ``api`` is the room's HTTP API (api.js).
   */
  constructor(doc, { api, role, button, name, colorOf }) {
    this.doc = doc
    this.reviews = doc.getMap('reviews')
    this.api = api
    this.button = button
    this.colorOf = colorOf // ({id, name}) -> that person's colour
    this.setRole(role)
    this.name = name // my display name: the server keeps it in open mode and replaces it with the token's otherwise
    this.view = null
    this.path = null
    this.ytext = null
    this.unobserveText = null
    this.open = new Set() // thread ids open in this browser, across files
    this.elements = new Map() // thread id (or 'draft') -> its widget's element, kept while it lives
    this.statuses = new Map() // thread id -> last seen status: a thread someone resolves closes here too
    this.ui = null // review-thread.js, once loaded
    this.scheduled = false
    this.reviews.observeDeep(() => this.schedule())
    button?.addEventListener('click', () => this.startDraft())
  }

  /** The page's live role changed (an owner's change in ``meta.roles``): redraw what it allows. */
  setRole(role) {
    this.canComment = role !== 'viewer'
    this.canApply = role === 'owner' || role === 'editor'
    if (this.button) this.button.hidden = !this.canComment
    if (this.view) this.renderAll(this.view.state)
  }

  /** The editor extensions for ``path``, bound to its ``ytext``: call when a file is opened. */
  extension(view, path, ytext) {
    this.view = view
    this.path = path
    this.unobserveText?.()
    this.ytext = ytext
    const observer = () => { if (this.view?.state.field(field, false)?.threads.length) this.schedule() }
    ytext.observe(observer)
    this.unobserveText = () => ytext.unobserve(observer)
    const initial = { threads: this.resolveThreads(), open: this.open, draft: null }
    const markers = new WeakMap() // field value -> RangeSet, so the gutter does not rebuild on every update
    return [
      field.init(() => initial),
      EditorView.decorations.compute([field], (state) => this.decorations(state)),
      gutter({
        class: 'cm-review-gutter',
        markers: (v) => {
          const value = v.state.field(field)
          if (!markers.has(value)) markers.set(value, this.markers(v.state, value))
          return markers.get(value)
        },
      }),
      keymap.of([{ key: 'Mod-Alt-m', run: () => this.startDraft() }]),
      EditorView.updateListener.of((update) => {
        if (update.state.field(field) !== update.startState.field(field)) this.renderAll(update.state)
      }),
    ]
  }

  /** No file open: nothing to anchor to. */
  detach() {
    this.unobserveText?.()
    this.unobserveText = null
    this.path = null
    this.ytext = null
  }

  markers(state, { threads, open }) {
    const byLine = new Map()
    for (const thread of threads) {
      const line = state.doc.lineAt(thread.from)
      if (!byLine.has(line.number)) byLine.set(line.number, { at: line.from, threads: [] })
      byLine.get(line.number).threads.push(thread)
    }
    return RangeSet.of([...byLine].map(([number, { at, threads: here }]) =>
      new ThreadMarker(this, number, here, here.every((t) => open.has(t.id))).range(at)))
  }

  decorations(state) {
    const { threads, open, draft } = state.field(field)
    const widgets = []
    for (const thread of threads) {
      if (open.has(thread.id)) widgets.push([lastLine(state.doc, thread).to, thread.id])
    }
    if (draft && this.canComment) widgets.push([lastLine(state.doc, draft).to, 'draft'])
    const marks = threads.filter((t) => open.has(t.id) && t.to > t.from).map((t) => rangeMark.range(t.from, t.to))
    return Decoration.set([
      ...marks,
      ...widgets.map(([at, id]) => Decoration.widget({ widget: new ThreadWidget(this, id), block: true, side: 1 }).range(at)),
    ], true)
  }

  // -- threads ------------------------------------------------------------------------------------

  /** Where a thread's anchor points in the open file now (a UTF-16 index, as CodeMirror counts), or null. */
  position(bytes) {
    if (!(bytes instanceof Uint8Array)) return null
    try {
      const abs = Y.createAbsolutePositionFromRelativePosition(Y.decodeRelativePosition(bytes), this.doc)
      return abs && abs.type === this.ytext ? abs.index : null
    } catch {
      return null // not a relative position
    }
  }

  resolveThreads() {
    const out = []
    if (!this.ytext) return out
    this.reviews.forEach((thread, id) => {
      if (!(thread instanceof Y.Map) || thread.get('path') !== this.path) return
      const status = thread.get('status')
      if (status !== 'open' && status !== 'resolved') return // outdated: its code is gone
      const from = this.position(thread.get('start'))
      const to = this.position(thread.get('end'))
      if (from == null || to == null || to <= from) return
      out.push({ id, from, to, status })
    })
    return out.sort((a, b) => a.from - b.from || (a.id < b.id ? -1 : 1))
  }

  /** Re-read the threads from the document once the current Yjs transaction is over. */
  schedule() {
    if (this.scheduled) return
    this.scheduled = true
    setTimeout(() => {
      this.scheduled = false
      this.refresh()
    }, 0)
  }

  refresh() {
    // A thread resolved anywhere closes here too; a thread reopened or new stays as it is.
    this.reviews.forEach((thread, id) => {
      const status = thread instanceof Y.Map ? thread.get('status') : null
      if (this.statuses.get(id) === 'open' && status !== 'open' && this.open.has(id)) {
        this.open = new Set(this.open)
        this.open.delete(id)
      }
      this.statuses.set(id, status)
    })
    const view = this.view
    if (!view || !this.ytext || !view.state.field(field, false)) return
    // Local keys reach the Y.Text after CodeMirror's update: wait until both hold the same text.
    if (this.ytext.length !== view.state.doc.length) return this.schedule()
    view.dispatch({ effects: [setThreads.of(this.resolveThreads()), setOpen.of(this.open)] })
  }

  toggle(ids, open) {
    this.open = new Set(this.open)
    for (const id of ids) open ? this.open.add(id) : this.open.delete(id)
    this.view?.dispatch({ effects: setOpen.of(this.open) })
    if (open) this.loadUi()
  }

  /** A draft thread on the selected lines (the cursor's line when nothing is selected). */
  startDraft() {
    const view = this.view
    if (!this.canComment || !view || !this.ytext) return false
    const { doc, selection } = view.state
    const range = selection.main
    const first = doc.lineAt(range.from)
    let last = doc.lineAt(range.to)
    if (last.number > first.number && range.to === last.from) last = doc.line(last.number - 1)
    let from = first.from
    let to = last.to
    if (from === to) { // an empty line: the range takes its line break, so it is not empty
      if (to < doc.length) to += 1
      else if (from > 0) from -= 1
      else return true // an empty file: nothing to comment on
    }
    this.loadUi()
    view.dispatch({ effects: setDraft.of({ from, to }) })
    return true
  }

  cancelDraft() {
    this.view?.dispatch({ effects: setDraft.of(null) })
    this.elements.delete('draft')
    this.view?.focus()
  }

  /** Write a new thread into the document: the server stamps ``by``, ``createdAt`` and the message's author. */
  createThread({ text, suggestion }) {
    const draft = this.view?.state.field(field).draft
    if (!draft || !this.ytext) return
    const ytext = this.ytext
    const rel = (index, assoc) => Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(ytext, index, assoc))
    const id = randomId(12)
    const messages = new Y.Array()
    messages.push([this.message(text)])
    this.doc.transact(() => {
      this.reviews.set(id, new Y.Map([
        ['path', this.path], ['start', rel(draft.from, 0)], ['end', rel(draft.to, -1)], ['status', 'open'],
        ['messages', messages], ['suggestion', suggestion ?? null], ['createdAt', Date.now()], ['by', ''],
      ]))
    })
    this.open = new Set(this.open).add(id)
    this.statuses.set(id, 'open')
    this.elements.delete('draft')
    this.view.dispatch({ effects: [setDraft.of(null), setThreads.of(this.resolveThreads()), setOpen.of(this.open)] })
  }

  reply(id, text) {
    const thread = this.reviews.get(id)
    if (!(thread instanceof Y.Map)) return
    const entry = this.message(text)
    this.doc.transact(() => {
      const messages = thread.get('messages')
      if (messages instanceof Y.Array) messages.push([entry])
      else thread.set('messages', Y.Array.from([entry]))
    })
  }

  message(text) {
    return { id: randomId(12), text, name: this.name?.() ?? null, run: null, at: Date.now() }
  }

  setStatus(id, status) {
    const thread = this.reviews.get(id)
    if (thread instanceof Y.Map) thread.set('status', status)
  }

  /** The server applies it: the range as it is now, one ordinary edit, and the thread resolved. */
  async apply(id) {
    await this.api('POST', `reviews/${encodeURIComponent(id)}/apply`, { name: this.name?.() ?? null })
  }

  // -- views --------------------------------------------------------------------------------------

  loadUi() {
    if (!this.uiLoading) {
      this.uiLoading = import('./review-thread.js').then((ui) => {
        this.ui = ui
        if (this.view) this.renderAll(this.view.state)
      }, (error) => console.warn('the review thread view did not load:', error))
    }
    return this.uiLoading
  }

  element(id) {
    let el = this.elements.get(id)
    if (!el) {
      el = document.createElement('div')
      el.className = id === 'draft' ? 'review-thread review-draft' : 'review-thread'
      el.dataset.thread = id
      this.elements.set(id, el)
      if (this.view) this.render(id, el, this.view.state)
    }
    return el
  }

  renderAll(state) {
    for (const [id, el] of this.elements) this.render(id, el, state)
  }

  render(id, el, state) {
    const ui = this.ui
    if (!ui) {
      this.loadUi()
      return
    }
    const { threads, draft } = state.field(field, false) ?? {}
    const lines = (range) => {
      const a = state.doc.lineAt(range.from).number
      const b = lastLine(state.doc, range).number
      return a === b ? `line ${a}` : `lines ${a}–${b}`
    }
    if (id === 'draft') {
      if (!draft) return
      ui.renderDraft(el, {
        lines: lines(draft),
        original: state.sliceDoc(draft.from, draft.to),
        onSubmit: (fields) => this.createThread(fields),
        onCancel: () => this.cancelDraft(),
      })
      return
    }
    const thread = this.reviews.get(id)
    const where = threads?.find((t) => t.id === id)
    if (!(thread instanceof Y.Map) || !where) return
    ui.renderThread(el, {
      id,
      lines: lines(where),
      status: thread.get('status'),
      messages: thread.get('messages') instanceof Y.Array ? thread.get('messages').toArray() : [],
      suggestion: typeof thread.get('suggestion') === 'string' ? thread.get('suggestion') : null,
      colorOf: this.colorOf,
      canComment: this.canComment,
      canApply: this.canApply,
      onReply: (text) => this.reply(id, text),
      onResolve: () => this.setStatus(id, 'resolved'),
      onReopen: () => this.setStatus(id, 'open'),
      onApply: () => this.apply(id),
      onClose: () => { this.toggle([id], false); this.view?.focus() },
    })
  }
}
