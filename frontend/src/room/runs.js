// The shared output panel: the room's `runs` map and `meta.kernel` (docs/doc-schema.md), rendered live
// for every member, plus the run, interrupt and restart controls (docs/kernels.md, HTTP API).
import * as Y from 'yjs'
import { h } from '../shared.js'
import { runnable } from './languages.js'

const SHOWN_RUNS = 30 // the newest runs; older ones stay in the document
const STATUS_LABELS = {
  queued: 'Queued', running: 'Running', ok: 'Done', error: 'Error', interrupted: 'Interrupted', failed: 'Failed',
}
const KERNEL_LABELS = {
  idle: 'Kernel idle', busy: 'Kernel busy', starting: 'Kernel starting…', restarting: 'Kernel restarting…', dead: 'Kernel stopped',
}
const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/gif']
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g

/** nbformat allows multiline strings as arrays of lines. */
const joined = (value) => (Array.isArray(value) ? value.join('') : typeof value === 'string' ? value : '')

function renderBundle(data) {
  if (!data || typeof data !== 'object') return null
  for (const type of IMAGE_TYPES) {
    const b64 = joined(data[type]).replace(/\s/g, '')
    if (b64 && /^[A-Za-z0-9+/=]+$/.test(b64)) {
      return h('img', { class: 'out-image', src: `data:${type};base64,${b64}`, alt: joined(data['text/plain']) || 'image output' })
    }
  }
  if (data['text/html'] !== undefined) {
    // Scripts, forms, navigation and same-origin access are all off in an empty sandbox. Scripts and
    // inline handlers are also taken out first, so the browser has nothing to block (and log).
    const parsed = new DOMParser().parseFromString(joined(data['text/html']), 'text/html')
    let scripts = 0
    for (const el of parsed.querySelectorAll('script')) { el.remove(); scripts++ }
    for (const el of parsed.querySelectorAll('*')) {
      for (const attr of [...el.attributes]) {
        if (/^on/i.test(attr.name) || /^\s*javascript:/i.test(attr.value)) { el.removeAttribute(attr.name); scripts++ }
      }
    }
    const frame = h('iframe', { class: 'out-html', sandbox: '', title: 'HTML output', srcdoc: parsed.documentElement.outerHTML })
    return scripts ? [frame, h('p', { class: 'hint out-html-note' }, 'Scripts in this output were not run.')] : frame
  }
  if (data['text/plain'] !== undefined) return h('pre', { class: 'out-text' }, joined(data['text/plain']))
  const types = Object.keys(data)
  return types.length ? h('p', { class: 'hint' }, `Output of type ${types.join(', ')} (not shown here)`) : null
}

export function renderOutputs(outputs) {
  const nodes = []
  let stream = null // consecutive stream outputs of one stream read as one block
  for (const out of outputs) {
    if (!out || typeof out !== 'object') continue
    if (out.output_type === 'stream') {
      const name = out.name === 'stderr' ? 'stderr' : 'stdout'
      if (stream && stream.dataset.stream === name) {
        stream.textContent += joined(out.text)
      } else {
        stream = h('pre', { class: `out-stream ${name}`, 'data-stream': name }, joined(out.text))
        nodes.push(stream)
      }
      continue
    }
    stream = null
    if (out.output_type === 'execute_result' || out.output_type === 'display_data') {
      const node = renderBundle(out.data)
      if (node) nodes.push(...[node].flat())
    } else if (out.output_type === 'error') {
      const trace = Array.isArray(out.traceback) ? out.traceback.join('\n').replace(ANSI, '') : ''
      nodes.push(h('pre', { class: 'out-error' }, trace || `${out.ename ?? 'Error'}: ${out.evalue ?? ''}`))
    } else if (out.output_type === 'truncated') {
      const limit = Number(out.limit)
      const size = limit >= 1024 * 1024 ? `${Math.round(limit / 1024 / 1024)} MiB` : `${Math.round(limit / 1024)} KiB`
      nodes.push(h('p', { class: 'out-truncated' }, `Output truncated at ${size}; the rest was dropped.`))
    }
  }
  return nodes
}

/** This tab's key for its runs: the server puts their ``input()`` to the page that sent it. It lives in
 * sessionStorage, so a reload of the tab can still answer a prompt that waits. */
function tabKey() {
  let key = sessionStorage.getItem('pairroom:tab')
  if (!key) {
    key = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, '0')).join('')
    sessionStorage.setItem('pairroom:tab', key)
  }
  return key
}

/** A run waiting in ``input()``: a field for the page that ran it, a note for everyone else. */
function inputView(id, ask, mine, answer) {
  const prompt = String(ask.prompt ?? '')
  if (!mine) return h('p', { class: 'run-input waiting', role: 'status' }, `Waiting for input from the person who ran it${prompt ? `: ${prompt.trim()}` : ''}`)
  const field = h('input', {
    class: 'run-input-field', type: ask.password ? 'password' : 'text', autocomplete: 'off',
    'aria-label': prompt.trim() ? `Answer: ${prompt.trim()}` : 'Answer the input() of this run',
  })
  const error = h('span', { class: 'error run-input-error', role: 'alert' })
  const form = h('form', { class: 'run-input row', 'data-ask': JSON.stringify(ask) },
    h('span', { class: 'run-input-prompt' }, prompt || 'input()'), field,
    h('button', { type: 'submit', class: 'small primary' }, 'Send'), error)
  form.addEventListener('submit', async (event) => {
    event.preventDefault()
    form.querySelector('button').disabled = true
    try {
      await answer(id, field.value)
    } catch (e) {
      error.textContent = e.message
      form.querySelector('button').disabled = false
    }
  })
  requestAnimationFrame(() => field.isConnected && field.focus())
  return form
}

function runView(id, run, tab, answer) {
  const status = String(run.get('status') ?? 'queued')
  const path = run.get('path')
  const code = String(run.get('code') ?? '')
  const outputs = run.get('outputs')
  const list = outputs instanceof Y.Array ? outputs.toArray() : []
  const firstLine = code.split('\n').find((line) => line.trim()) ?? ''
  const title = path ? `Run of ${path}` : `Selection: ${firstLine.trim().slice(0, 60) || '(empty)'}`
  const ask = run.get('input')
  return h('li', { class: 'run', 'data-run': id, 'data-status': status },
    h('div', { class: 'run-head' },
      h('span', { class: 'run-order hint' }, `#${run.get('order') ?? '?'}`),
      h('span', { class: 'run-title' }, title),
      h('span', { class: `run-status status-${status}` }, STATUS_LABELS[status] ?? status)),
    h('details', { class: 'run-code' }, h('summary', {}, 'Code'), h('pre', {}, code)),
    h('div', { class: 'run-outputs' }, renderOutputs(list)),
    ask && typeof ask === 'object' && ['running', 'queued'].includes(status) ? inputView(id, ask, run.get('client') === tab, answer) : null)
}

/**
 * The output panel. ``canRun`` is false for viewers and reviewers, and for everyone but owners when the
 * room's policy says so; they still see every run. ``current()`` gives {path, selection} of the editor.
 */
export class RunPanel {
  constructor(doc, api, { role, current }) {
    this.doc = doc
    this.api = api
    this.role = role
    this.current = current
    this.runs = doc.getMap('runs')
    this.meta = doc.getMap('meta')
    this.off = null // the server's reason when it runs no kernels
    this.busy = false
    this.$ = (id) => document.getElementById(id)
    this.scheduled = false
    this.tab = tabKey()
    this.answer = (id, value) => this.api('POST', `runs/${encodeURIComponent(id)}/input`, { value, client: this.tab })

    this.$('run-file').addEventListener('click', () => this.run('file'))
    this.$('run-selection').addEventListener('click', () => this.run('selection'))
    this.$('kernel-interrupt').addEventListener('click', () => this.control('interrupt'))
    this.$('kernel-restart').addEventListener('click', () => this.control('restart'))
    this.views = new Map() // run id -> its <li>, rebuilt only when that run changes
    this.dirty = new Set()
    this.runs.observeDeep((events) => {
      for (const event of events) {
        if (event.target === this.runs) for (const key of event.changes.keys.keys()) this.dirty.add(key)
        else if (event.path.length) this.dirty.add(String(event.path[0]))
      }
      this.schedule()
    })
    this.meta.observeDeep(() => this.schedule())
    this.render()
  }

  /** The page's live role changed (an owner's change in ``meta.roles``). */
  setRole(role) {
    this.role = role
    this.render()
  }

  get mayRun() {
    const policy = this.meta.get('policy')
    const runPolicy = policy instanceof Y.Map ? policy.get('run') : undefined
    if (runPolicy === 'owners') return this.role === 'owner'
    return this.role === 'owner' || this.role === 'editor'
  }

  whyNot() {
    if (this.role === 'viewer' || this.role === 'reviewer') return `A ${this.role} sees the runs but cannot run code.`
    if (!this.mayRun) return 'Only owners may run code in this room.'
    if (this.off) return `Running code is off: ${this.off}`
    return ''
  }

  schedule() {
    if (this.scheduled) return
    this.scheduled = true
    requestAnimationFrame(() => {
      this.scheduled = false
      this.render()
    })
  }

  /** The editor's selection changed: enable "Run selection" only when something is selected. */
  selectionChanged() {
    this.renderControls()
  }

  /** What the open file runs with, asking the server once which interpreters it has (node?). */
  kind(path) {
    const kind = runnable(path, this.runners)
    if (kind.unknown && !this.asking) {
      this.asking = this.api('GET', 'runners')
        .then((answer) => { this.runners = answer })
        .catch(() => { this.runners = null })
        .finally(() => this.renderControls())
    }
    return kind
  }

  /** May this page run the open file's code now? (The keys ask too; the server decides.) */
  get canRunHere() {
    return !this.whyNot() && this.kind(this.current().path).ok
  }

  async run(kind) {
    const { path, selection } = this.current()
    if (kind === 'selection') return this.runCode(selection)
    if (!path || !this.kind(path).ok) return
    await this.request(() => this.api('POST', 'runs', { path, client: this.tab }))
  }

  /** Run ``code`` (a selection, or the statement Shift+Enter picked) of the open file, in its language. */
  async runCode(code) {
    const kind = this.kind(this.current().path)
    if (!code || !kind.ok) return
    await this.request(() => this.api('POST', 'runs', { code, client: this.tab, language: kind.lang }))
  }

  async control(what) {
    await this.request(() => this.api('POST', `kernel/${what}`, {}))
  }

  async request(call) {
    this.$('run-error').textContent = ''
    this.busy = true
    this.renderControls()
    try {
      await call()
    } catch (error) {
      if (error.status === 503 && !this.meta.get('kernel')) this.off = error.message
      else this.$('run-error').textContent = error.message
    } finally {
      this.busy = false
      this.render()
    }
  }

  renderControls() {
    const why = this.whyNot()
    const { path, selection } = this.current()
    const kernel = this.meta.get('kernel')
    const status = kernel instanceof Y.Map ? kernel.get('status') : null
    const active = [...this.runs.values()].some((r) => r instanceof Y.Map && ['queued', 'running'].includes(r.get('status')))
    this.$('run-controls').hidden = this.role === 'viewer' || this.role === 'reviewer' || !this.mayRun
    const kind = this.kind(path)
    const note = why || kind.why
    this.$('run-note').textContent = note
    this.$('run-note').hidden = !note
    const disabled = Boolean(this.off) || this.busy || (Boolean(path) && !kind.ok)
    this.$('run-file').title = kind.ok && kind.lang === 'javascript' ? `Runs with node ${this.runners.javascript} (Ctrl+Enter)` : note || 'Ctrl+Enter (with nothing selected)' 
    this.$('run-file').disabled = disabled || !path
    this.$('run-selection').disabled = disabled || !selection
    this.$('run-selection').title = selection ? 'Ctrl+Enter' : 'Select code in the editor first (Shift+Enter runs the current line or statement)'
    this.$('kernel-interrupt').disabled = disabled || !(active || status === 'busy')
    this.$('kernel-restart').disabled = disabled || !status || status === 'dead'
    this.$('kernel-status').textContent = status ? KERNEL_LABELS[status] ?? `Kernel ${status}` : 'No kernel yet: it starts on the first run'
    this.$('kernel-status').dataset.status = status ?? 'none'
  }

  render() {
    this.renderControls()
    const entries = [...this.runs.entries()]
      .filter(([, run]) => run instanceof Y.Map)
      .sort(([, a], [, b]) => (Number(a.get('order')) || 0) - (Number(b.get('order')) || 0))
    const list = this.$('run-list')
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40
    const typing = document.activeElement?.closest?.('form.run-input') ? document.activeElement : null
    const hidden = Math.max(0, entries.length - SHOWN_RUNS)
    list.replaceChildren(
      ...(hidden ? [h('li', { class: 'hint' }, `${hidden} earlier run${hidden === 1 ? '' : 's'} not shown`)] : []),
      ...entries.slice(hidden).map(([id, run]) => {
        const old = this.views.get(id)
        if (old && !this.dirty.has(id)) return old
        const view = runView(id, run, this.tab, this.answer)
        if (old?.querySelector('details')?.open) view.querySelector('details').open = true
        // the same input() still waits: keep the field the person may be typing in, not a fresh one
        const asked = old?.querySelector('form.run-input')
        const asking = view.querySelector('form.run-input')
        if (asked && asking && asked.dataset.ask === asking.dataset.ask) asking.replaceWith(asked)
        this.views.set(id, view)
        return view
      }),
    )
    this.dirty.clear()
    if (typing?.isConnected && document.activeElement !== typing) typing.focus()
    for (const id of this.views.keys()) if (!this.runs.has(id)) this.views.delete(id)
    this.$('runs-empty').hidden = entries.length > 0
    if (nearBottom) list.scrollTop = list.scrollHeight
  }
}
