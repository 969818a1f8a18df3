// The Extensions panel and the host of extensions' browser panels (docs/extensions.md, "Browser-side panels").
//
// The list comes from GET /api/rooms/{room}/extensions: what the node runs, what the catalog offers,
// what each asks for and whether the catalog pins it. Owners switch per-room extensions on and off
// (PUT, checked by the server); everyone else sees the same list read-only. Which extensions are on is
// `meta.extensions` in the room's document (written only by the server), so a switch shows in every
// page at once, with no polling.
//
// An extension that is on and ships a browser module gets a panel: a sandboxed frame (`allow-scripts`
// only: an opaque origin, so it cannot read this page, its storage or its token) whose module is loaded
// with the Subresource Integrity hash the server listed: a module whose bytes differ is not executed,
// and its panel shows why. The frame talks to the page through postMessage only (the `pairroom` API
// below); a module that throws shows its error in its own panel and the room carries on.
import * as Y from 'yjs'
import { RangeSet, StateEffect, StateField } from '@codemirror/state'
import { GutterMarker, gutter } from '@codemirror/view'
import { h } from '../shared.js'
import { collapsible } from './side-sections.js'
import './extensions.css'

const CAPABILITY_NAMES = {
  'doc.read': 'read the document',
  'doc.write': 'change the document',
  awareness: 'see presence',
  routes: 'add server routes',
  frontend: 'show a panel in your page',
  kernel: 'run code in the kernel',
  network: 'reach the network',
}

const MAX_MARKS = 500 // per extension and file
const REQUEST_PATH = /^[A-Za-z0-9._~-][A-Za-z0-9._~/-]*(\?[A-Za-z0-9._~%&=+-]*)?$/ // relative, no scheme, no //
const SEVERITIES = ['info', 'warning', 'error']

// Gutter marks extensions set on a file: {line, message, severity, extension}, one list per open file.
const setMarks = StateEffect.define()
const marksField = StateField.define({
  create: () => [],
  update: (marks, tr) => tr.effects.reduce((current, effect) => (effect.is(setMarks) ? effect.value : current), marks),
})

class ExtensionMark extends GutterMarker {
  constructor(marks) {
    super()
    this.marks = marks
    this.severity = SEVERITIES.findLast((s) => marks.some((m) => m.severity === s)) ?? 'info'
    this.key = marks.map((m) => `${m.extension}:${m.severity}:${m.message}`).join('|')
  }

  eq(other) { return other.key === this.key }

  toDOM() {
    return h('span', {
      class: `ext-mark ${this.severity}`, 'data-severity': this.severity,
      title: this.marks.map((m) => `${m.extension}: ${m.message}`).join('\n'),
      'aria-label': this.marks.map((m) => m.message).join('; '),
    }, this.severity === 'error' ? '●' : this.severity === 'warning' ? '▲' : '■')
  }
}

function gutterMarkers(state, marks) {
  const byLine = new Map()
  for (const mark of marks) {
    if (mark.line > state.doc.lines) continue
    if (!byLine.has(mark.line)) byLine.set(mark.line, [])
    byLine.get(mark.line).push(mark)
  }
  return RangeSet.of([...byLine].sort(([a], [b]) => a - b).map(([line, here]) => new ExtensionMark(here).range(state.doc.line(line).from)))
}

/** A panel's marks, checked: whatever a frame sends is untrusted input. */
function cleanMarks(raw, extension) {
  if (!Array.isArray(raw)) return []
  return raw.slice(0, MAX_MARKS).flatMap((m) =>
    m && Number.isInteger(m.line) && m.line >= 1 && typeof m.message === 'string'
      ? [{ line: m.line, message: m.message.slice(0, 300), severity: SEVERITIES.includes(m.severity) ? m.severity : 'info', extension }]
      : [])
}

export function mountExtensions({ room, token, doc, role, name, view, currentPath, ready }) {
  const side = document.getElementById('side')
  const panels = h('div', { id: 'extension-panels', class: 'extension-panels' })
  const list = h('ul', { id: 'extension-list', class: 'extension-list' })
  const catalogList = h('ul', { id: 'catalog-list', class: 'extension-list' })
  const error = h('p', { id: 'extensions-error', class: 'error', role: 'alert' })
  const catalogNote = h('p', { id: 'catalog-source', class: 'hint' })
  const section = h('section', { id: 'extensions', class: 'panel extensions', 'aria-labelledby': 'extensions-title' },
    h('details', { id: 'extensions-details' },
      h('summary', {}, h('h2', { id: 'extensions-title' }, 'Extensions')),
      h('p', { class: 'hint trust' }, 'Extensions run inside the server, with its rights: what each asks for limits the room it is handed, not its code. The operator installs them; owners switch them on for a room.'),
      error, list,
      h('h3', {}, 'In the catalog'), catalogNote, catalogList))
  side.append(panels, section)

  const meta = doc.getMap('meta')
  const headers = token ? { authorization: `Bearer ${token}` } : {}
  const base = `/api/rooms/${encodeURIComponent(room)}/extensions`
  let listing = null // the server's answer
  const mounted = new Map() // extension name -> {section, frame, integrity}
  const marks = new Map() // extension name -> Map(path -> marks)

  const marksFor = (path) => [...marks.values()].flatMap((byPath) => byPath.get(path) ?? [])
  function showMarks() {
    const path = currentPath()
    if (path !== null && view.state.field(marksField, false) !== undefined) view.dispatch({ effects: setMarks.of(marksFor(path)) })
  }

  const switchedOn = () => {
    const on = meta.get('extensions')
    return new Set(on instanceof Y.Map ? [...on.entries()].filter(([, v]) => v === true).map(([k]) => k) : [])
  }
  const isOn = (ext, on) => (ext.per_room ? on.has(ext.name) : true)

  async function load() {
    try {
      const response = await fetch(base, { headers })
      const body = await response.json().catch(() => null)
      if (!response.ok) throw new Error(body?.error || `HTTP ${response.status}`)
      listing = body
      error.textContent = ''
    } catch (failure) {
      error.textContent = `Extensions unavailable: ${failure.message}`
      return
    }
    render()
  }

  async function setSwitch(extName, wanted, input) {
    input.disabled = true
    error.textContent = ''
    try {
      const response = await fetch(base, {
        method: 'PUT', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify({ [extName]: wanted }),
      })
      const body = await response.json().catch(() => null)
      if (!response.ok) throw new Error(body?.error || `HTTP ${response.status}`)
    } catch (failure) {
      input.checked = !wanted
      error.textContent = `${extName}: ${failure.message}`
    } finally {
      input.disabled = role() !== 'owner'
    }
  }

  function badge(ext) {
    if (ext.builtin) return h('span', { class: 'badge small ext-builtin' }, 'built-in')
    if (ext.catalog === 'pinned') {
      return h('span', { class: 'badge small ext-verified', title: `The operator's catalog (${ext.verified_by}) pins this version and its SHA-256` }, `✓ verified · ${ext.verified_by}`)
    }
    return h('span', { class: 'badge small ext-unverified', title: ext.catalog }, `unverified · ${ext.catalog}`)
  }

  const capabilities = (names) =>
    h('ul', { class: 'capabilities', 'aria-label': 'Asks to' }, names.map((c) => h('li', { title: c }, CAPABILITY_NAMES[c] ?? c)))

  function render() {
    if (!listing) return
    const on = switchedOn()
    const owner = role() === 'owner'
    const shown = listing.extensions.filter((e) => !e.builtin)
    list.replaceChildren(...shown.map((ext) => {
      const state = isOn(ext, on)
      const toggle = ext.per_room
        ? h('label', { class: 'switch' },
            h('input', {
              type: 'checkbox', role: 'switch', 'data-extension': ext.name, checked: state, disabled: !owner,
              'aria-label': `${ext.name} on in this room`,
              onchange: (event) => setSwitch(ext.name, event.target.checked, event.target),
            }),
            h('span', {}, state ? 'on' : 'off'))
        : h('span', { class: 'hint' }, 'on in every room')
      return h('li', { class: 'extension', 'data-extension': ext.name, 'data-on': String(state) },
        h('div', { class: 'extension-head' }, h('strong', {}, ext.name), h('span', { class: 'hint' }, ext.version), badge(ext), toggle),
        ext.summary ? h('p', { class: 'hint' }, ext.summary) : null,
        ext.capabilities.length ? capabilities(ext.capabilities) : h('p', { class: 'hint' }, 'Asks for nothing.'),
        h('p', { class: 'hint ext-enforced', 'data-restricted': String(Boolean(ext.restricted)) }, ext.restricted
          ? 'Held to these: the room it is handed refuses anything else. Its Python still runs inside the server.'
          : 'Handed the room itself: it can do anything the server can.'),
        Object.keys(ext.errors ?? {}).length
          ? h('p', { class: 'error ext-failures' }, `Failed on this server: ${Object.entries(ext.errors).map(([hook, n]) => `${hook} ×${n}`).join(', ')}`)
          : null,
        ext.last_error
          ? h('p', { class: 'error ext-last-error', title: new Date(ext.last_error.at).toLocaleString() }, `Last error (${ext.last_error.hook}): ${ext.last_error.error}`)
          : null)
    }))
    if (!shown.length) list.replaceChildren(h('li', { class: 'hint' }, 'This server runs no third-party extension.'))
    else if (!owner && shown.some((e) => e.per_room)) list.prepend(h('li', { class: 'hint ext-read-only' }, 'Only an owner of this room can switch these.'))
    const catalog = listing.catalog
    catalogNote.textContent = catalog.source
      ? `${catalog.source} (${catalog.verified_by ?? 'not loaded'})${catalog.errors.length ? ` · ${catalog.errors.join('; ')}` : ''}`
      : 'No catalog configured.'
    catalogList.replaceChildren(...catalog.entries.map((entry) =>
      h('li', { class: 'extension', 'data-catalog': entry.name },
        h('div', { class: 'extension-head' }, h('strong', {}, entry.name), h('span', { class: 'hint' }, entry.version),
          h('span', { class: 'hint' }, entry.enabled ? 'enabled on this server' : 'not installed here: the operator installs it')),
        h('p', { class: 'hint' }, entry.summary), capabilities(entry.capabilities))))
    syncPanels(on)
  }

  function syncPanels(on) {
    const wanted = new Map(listing.extensions.filter((e) => e.frontend && isOn(e, on)).map((e) => [e.name, e]))
    for (const [extName, panel] of mounted) {
      if (!wanted.has(extName) || wanted.get(extName).frontend.integrity !== panel.integrity) {
        panel.section.remove()
        mounted.delete(extName)
        if (marks.delete(extName)) showMarks()
      }
    }
    for (const [extName, ext] of wanted) if (!mounted.has(extName)) mounted.set(extName, mountPanel(ext))
  }

  function mountPanel(ext) {
    const commands = h('span', { class: 'ext-commands' })
    const problem = h('p', { class: 'error ext-error', role: 'alert' })
    const frame = h('iframe', {
      class: 'ext-frame', sandbox: 'allow-scripts', title: `${ext.frontend.title} (extension ${ext.name})`,
      srcdoc: panelDocument(ext, location.origin),
    })
    const title = h('h2', {}, ext.frontend.title)
    const head = h('div', { class: 'ext-panel-head' }, title, commands)
    const section = h('section', { class: 'panel ext-panel', 'data-extension': ext.name, 'aria-label': ext.frontend.title },
      head, problem, frame)
    panels.append(section)
    collapsible(`ext:${ext.name}`, section, head, title, { label: `the ${ext.frontend.title} panel` })
    const panel = { section, frame, integrity: ext.frontend.integrity }
    // the extension's own root of the document (`ext.NAME`, written by its server side): sent whole
    // to the frame when the frame starts and after every change
    const state = doc.getMap(`ext.${ext.name}`)
    const sendState = () => frame.contentWindow?.postMessage({ type: 'state', state: state.toJSON() }, '*')
    let stateQueued = false
    const stateChanged = () => {
      if (!section.isConnected) { state.unobserveDeep(stateChanged); return }
      if (stateQueued) return
      stateQueued = true
      queueMicrotask(() => { stateQueued = false; sendState() })
    }
    frame.addEventListener('load', () => {
      frame.contentWindow?.postMessage({ type: 'init', room, role: role(), name: name(), extension: ext.name }, '*')
      sendState()
    })
    state.observeDeep(stateChanged)
    addEventListener('message', function relay(event) {
      if (!section.isConnected) { removeEventListener('message', relay); return }
      if (event.source !== frame.contentWindow) return // only this panel's own frame speaks for it
      const message = event.data ?? {}
      if (message.type === 'error') {
        problem.textContent = `${ext.name}: ${String(message.message).slice(0, 300)}`
      } else if (message.type === 'marks' && typeof message.path === 'string') {
        if (!marks.has(ext.name)) marks.set(ext.name, new Map())
        marks.get(ext.name).set(message.path.slice(0, 255), cleanMarks(message.marks, ext.name))
        showMarks()
      } else if (message.type === 'height' && Number.isFinite(message.px)) {
        frame.style.height = `${Math.round(Math.min(Math.max(message.px, 48), 320))}px`
      } else if (message.type === 'request' && Number.isInteger(message.id)) {
        relayRequest(ext, message).then((answer) => frame.contentWindow?.postMessage({ type: 'response', id: message.id, ...answer }, '*'))
      } else if (message.type === 'command' && Number.isInteger(message.id)) {
        commands.append(h('button', {
          type: 'button', class: 'small', 'data-command': String(message.id),
          onclick: () => frame.contentWindow?.postMessage({ type: 'run-command', id: message.id }, '*'),
        }, String(message.label).slice(0, 60)))
      }
    })
    return panel
  }

  /** A frame's request, made for it on its extension's own routes (`/ext/NAME/...`) with this page's
   * token: the frame never sees the token, and cannot reach any other route. */
  async function relayRequest(ext, message) {
    const path = String(message.path ?? '')
    const method = String(message.method ?? 'GET').toUpperCase()
    if (!REQUEST_PATH.test(path) || path.includes('..') || path.includes('//') || !['GET', 'POST', 'PUT', 'DELETE'].includes(method)) {
      return { status: 0, body: { error: `refused: ${method} ${path.slice(0, 80)} (a path under the extension's own routes)` } }
    }
    const body = message.body === undefined ? undefined : JSON.stringify(message.body)
    if (body !== undefined && body.length > 64 * 1024) return { status: 0, body: { error: 'refused: body over 64 KiB' } }
    try {
      const response = await fetch(`/ext/${encodeURIComponent(ext.name)}/${path}`, {
        method, body, headers: { ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      })
      return { status: response.status, body: await response.json().catch(() => null) }
    } catch (failure) {
      return { status: 0, body: { error: String(failure.message ?? failure) } }
    }
  }

  meta.observeDeep(() => render())
  // Asked once the server has let this page in (``ready``): a refused token gets the refusal page,
  // not a failed request as well.
  ;(ready ?? Promise.resolve()).then(load)
  return {
    reload: load,
    get listing() { return listing },
    /** The editor extensions for the file at ``path``: extensions' gutter marks. */
    editorExtension(path) {
      const markers = new WeakMap() // field value -> RangeSet, rebuilt only when the marks change
      return [
        marksField.init(() => marksFor(path)),
        gutter({
          class: 'ext-gutter',
          markers: (v) => {
            const value = v.state.field(marksField)
            if (!markers.has(value)) markers.set(value, gutterMarkers(v.state, value))
            return markers.get(value)
          },
        }),
      ]
    },
  }
}

/** The frame's page: the `pairroom` browser API, then the extension's module with its SRI hash. */
function panelDocument(ext, origin) {
  const url = new URL(ext.frontend.url, origin).href
  const attr = (value) => String(value).replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;')
  return `<!doctype html><html><head><meta charset="utf-8">
<style>body{font:13px/1.4 system-ui,sans-serif;margin:6px;color:#1d2433}.pairroom-error{color:#b3261e}</style>
<script>
(() => {
  const parentOrigin = ${JSON.stringify(origin)}
  const ready = []
  const commands = new Map()
  let nextCommand = 1
  const stateListeners = []
  let lastState
  const pending = new Map()
  let nextRequest = 1
  const call = (fn, value) => { try { fn(value) } catch (error) { fail(String(error)) } }
  const send = (message) => parent.postMessage(message, parentOrigin)
  const fail = (why) => {
    const p = document.createElement('p')
    p.className = 'pairroom-error'
    p.textContent = why
    document.body.append(p)
    send({ type: 'error', message: why })
  }
  window.pairroom = {
    room: null, role: null, name: null, extension: ${JSON.stringify(ext.name)},
    get root() { return document.getElementById('root') },
    onReady(fn) { if (this.room !== null) fn(this); else ready.push(fn) },
    addCommand(label, run) { const id = nextCommand++; commands.set(id, run); send({ type: 'command', id, label: String(label) }); return id },
    setMarks(path, marks) { send({ type: 'marks', path: String(path), marks: JSON.parse(JSON.stringify(marks ?? [])) }) },
    reportError(message) { fail(String(message)) },
    setHeight(px) { send({ type: 'height', px: Number(px) + 2 }) },
    onState(fn) { stateListeners.push(fn); if (lastState !== undefined) call(fn, lastState) },
    request(path, { method = 'GET', body } = {}) {
      const id = nextRequest++
      return new Promise((resolve) => { pending.set(id, resolve); send({ type: 'request', id, path: String(path), method, body }) })
    },
  }
  addEventListener('message', (event) => {
    if (event.source !== parent) return
    const message = event.data || {}
    if (message.type === 'init') {
      Object.assign(window.pairroom, { room: message.room, role: message.role, name: message.name })
      ready.splice(0).forEach((fn) => { try { fn(window.pairroom) } catch (error) { fail(String(error)) } })
    } else if (message.type === 'state') {
      lastState = message.state
      stateListeners.forEach((fn) => call(fn, lastState))
    } else if (message.type === 'response') {
      pending.get(message.id)?.({ status: message.status, body: message.body })
      pending.delete(message.id)
    } else if (message.type === 'run-command') {
      try { commands.get(message.id)?.() } catch (error) { fail(String(error)) }
    }
  })
  addEventListener('error', (event) => fail(String(event.message || 'the module failed')))
  window.__pairroomModuleFailed = () => fail('the module was not run: it failed to load or its integrity hash did not match')
})()
</script>
<script type="module" src="${attr(url)}" integrity="${attr(ext.frontend.integrity)}" crossorigin="anonymous" onerror="__pairroomModuleFailed()"></script>
</head><body><div id="root"></div></body></html>`
}
