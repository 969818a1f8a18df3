// Debugging together (docs/debugger.md; `debug` in docs/doc-schema.md).
//
// Breakpoints live in the document (the root map `breakpoints`, "path:line" -> {author, condition?,
// ...}: a root is never created by anyone, so two people's first breakpoints of a file both hold): a click in the breakpoint gutter adds or removes one,
// right-click edits its condition, hovering shows its author. The server stamps the author, anchors it to its line (and moves it when lines are
// inserted above) and sends the merged set to the kernel's debugger.
//
// The session's state is also in the document, written by the server once per stop: the stopped
// line (highlighted in the editor), the call stack and the top frame's variables. Nobody's view is
// moved by someone else's stop: the panel shows "Stopped at main.py:12 (Ada's breakpoint)" with
// *Jump*, and *Follow the debugger* (per person, off by default) jumps at each stop. Driving (start,
// step, evaluate) goes through the HTTP API, which checks the live role; the buttons follow it.
//
// The panel takes one line while nobody debugs (its title, the state, "Debug main.py" and the follow
// toggle) and opens when a session starts, so the editor keeps its height beside the output and the
// terminal; the fold button opens or closes it by hand.
import * as Y from 'yjs'
import { RangeSet, StateEffect, StateField } from '@codemirror/state'
import { Decoration, EditorView, GutterMarker, gutter } from '@codemirror/view'
import { h } from '../shared.js'

const refresh = StateEffect.define() // {lines: Map(line -> entry), stopLine: number|null}

const field = StateField.define({
  create: () => ({ lines: new Map(), stopLine: null }),
  update(value, tr) {
    for (const effect of tr.effects) if (effect.is(refresh)) return effect.value
    return value
  },
})

const stopLineDecoration = Decoration.line({ class: 'cm-debug-stopped' })

class BreakpointMarker extends GutterMarker {
  constructor(line, entry, check) {
    super()
    this.line = line
    this.entry = entry
    this.check = check
    this.key = JSON.stringify([line, entry, check])
  }

  eq(other) { return other.key === this.key }

  toDOM() {
    const by = this.entry.authorName || this.entry.author || 'someone'
    const parts = [this.entry.logMessage ? `Logpoint by ${by}: logs "${this.entry.logMessage}"` : `Breakpoint by ${by}`]
    if (this.entry.condition) parts.push(`when ${this.entry.condition}`)
    if (this.check && this.check.verified === false) parts.push(`unverified: ${this.check.message ?? 'not accepted'}`)
    const dot = h('span', {
      class: 'debug-breakpoint' + (this.check?.verified === false ? ' unverified' : '') + (this.entry.condition ? ' conditional' : '') + (this.entry.logMessage ? ' logpoint' : ''),
      title: parts.join(' · '),
      'data-line': String(this.line),
      'aria-label': parts.join(', '),
      style: this.entry.logMessage && this.check?.verified !== false ? { color: '#2563eb' } : null,
    }, this.entry.logMessage ? '◆' : '●') // a logpoint: a diamond, as in other debuggers
    return dot
  }
}

const plain = (value) => (value instanceof Y.Map ? value.toJSON() : value)

export class Debugger {
  /**
   * ``api`` is the room's HTTP API (api.js); ``hooks`` open a file and tell the open one; ``name()``
   * is my display name (the server replaces it with the token's).
   */
  constructor(doc, api, { role, awareness, hooks, name, myId }) {
    this.doc = doc
    this.debug = doc.getMap('debug')
    this.meta = doc.getMap('meta')
    this.api = api
    this.awareness = awareness
    this.hooks = hooks
    this.name = name
    this.myId = myId // the token's user id (null in open mode, where the server decides alone)
    this.view = null
    this.path = null
    this.follow = false
    this.lastStopKey = null
    this.selectedFrame = null
    this.panel = this.buildPanel()
    this.setRole(role)
    awareness.setLocalStateField('debugFollow', false)
    this.debug.observeDeep(() => this.render())
    this.breakpoints().observe(() => this.refreshEditor())
    this.meta.observeDeep(() => this.renderControls())
    this.render()
  }

  // -- roles ----------------------------------------------------------------------------------

  setRole(role) {
    this.role = role
    this.canEdit = role !== 'viewer'
    this.renderControls()
    this.refreshEditor()
  }

  mayDrive() {
    const policy = this.meta.get('policy')
    const run = policy instanceof Y.Map ? policy.get('run') : undefined
    if (run === 'owners') return this.role === 'owner'
    return this.role === 'owner' || this.role === 'editor'
  }

  // -- the editor -----------------------------------------------------------------------------

  /** The editor extensions for ``path``: the breakpoint gutter and the stopped line. */
  extension(view, path) {
    this.view = view
    this.path = path
    this.renderControls() // the start button names the open file
    const self = this
    return [
      field.init(() => this.fieldValue()),
      gutter({
        class: 'cm-debug-gutter',
        markers: (v) => {
          const { lines } = v.state.field(field)
          const checks = self.checksFor(self.path)
          const ranges = []
          for (const line of [...lines.keys()].sort((a, b) => a - b)) {
            if (line > v.state.doc.lines) continue
            ranges.push(new BreakpointMarker(line, lines.get(line), checks[String(line)]).range(v.state.doc.line(line).from))
          }
          return RangeSet.of(ranges)
        },
        initialSpacer: () => new BreakpointMarker(0, {}, null),
        renderEmptyElements: true, // every line's gutter cell takes the click that adds a breakpoint
        domEventHandlers: {
          mousedown(v, block, event) {
            if (event.button !== 0) return false
            self.toggle(v.state.doc.lineAt(block.from).number)
            return true
          },
          contextmenu(v, block, event) {
            event.preventDefault()
            self.editCondition(v.state.doc.lineAt(block.from).number)
            return true
          },
        },
      }),
      EditorView.decorations.compute([field], (state) => {
        const { stopLine } = state.field(field)
        if (!stopLine || stopLine > state.doc.lines) return Decoration.none
        return Decoration.set([stopLineDecoration.range(state.doc.line(stopLine).from)])
      }),
    ]
  }

  detach() {
    this.path = null
  }

  linesOf(path) {
    const all = this.breakpoints()
    const out = new Map()
    const prefix = `${path}:`
    for (const [key, value] of all) {
      const line = key.startsWith(prefix) ? key.slice(prefix.length) : ''
      if (/^\d+$/.test(line) && value && typeof value === 'object') out.set(Number(line), plain(value))
    }
    return out
  }

  checksFor(path) {
    const checks = plain(this.debug.get('checks')) || {}
    return checks[path] || {}
  }

  fieldValue() {
    const stopped = this.state() === 'stopped' ? plain(this.debug.get('stopped')) : null
    const stopLine = stopped && stopped.path === this.path ? Number(stopped.line) : null
    return { lines: this.path ? this.linesOf(this.path) : new Map(), stopLine }
  }

  refreshEditor() {
    if (!this.view || !this.path || !this.view.state.field(field, false)) return
    this.view.dispatch({ effects: refresh.of(this.fieldValue()) })
  }

  /** The room's breakpoints: a root map, "path:line" -> entry. */
  breakpoints() {
    return this.doc.getMap('breakpoints')
  }

  /** Add or remove my breakpoint on ``line`` of the open file (written straight into the document). */
  toggle(line) {
    if (!this.canEdit || !this.path) return
    const all = this.breakpoints()
    const key = `${this.path}:${line}`
    if (all.has(key)) all.delete(key)
    else all.set(key, { author: this.name() })
  }

  editCondition(line) {
    if (!this.canEdit || !this.path) return
    const all = this.breakpoints()
    const key = `${this.path}:${line}`
    const entry = plain(all.get(key))
    const current = entry?.logMessage ? `log: ${entry.logMessage}` : (entry?.condition ?? '')
    const answer = window.prompt(
      `Condition for the breakpoint on line ${line} (empty: always stop).\n` +
        'Or "log: x is {x}" to print that line, with {expressions} filled in, into the output for everyone, without stopping.',
      current,
    )
    if (answer === null) return
    const next = { author: this.name() }
    const text = answer.trim()
    const log = /^log:\s*(.*)$/s.exec(text)
    if (log) {
      if (!log[1].trim()) return
      next.logMessage = log[1].trim()
      if (entry?.condition) next.condition = entry.condition
    } else if (text) next.condition = text
    all.set(key, next)
  }

  // -- the panel ------------------------------------------------------------------------------

  state() {
    return String(this.debug.get('state') ?? 'off')
  }

  buildPanel() {
    const button = (id, label, onclick) => h('button', { type: 'button', id, class: 'small', onclick }, label)
    const els = {}
    els.start = button('debug-start', 'Debug file', () => this.start())
    els.fold = h('button', {
      type: 'button', id: 'debug-fold', class: 'fold-toggle', 'aria-controls': 'debug', 'aria-expanded': 'false',
      title: 'Show or hide the debugger', onclick: () => this.setFolded(!this.folded()),
    }, '▸ Debug') // as the output's and the terminal's toggles (fold.js), which fold by hand only
    els.cont = button('debug-continue', 'Continue', () => this.drive('continue'))
    els.next = button('debug-next', 'Step over', () => this.drive('next'))
    els.stepIn = button('debug-step-in', 'Step into', () => this.drive('stepIn'))
    els.stepOut = button('debug-step-out', 'Step out', () => this.drive('stepOut'))
    els.pause = button('debug-pause', 'Pause', () => this.call('POST', 'debug/pause', {}))
    els.stop = button('debug-stop', 'Stop', () => this.call('POST', 'debug/stop', {}))
    els.status = h('span', { id: 'debug-status', class: 'hint', role: 'status', 'aria-live': 'polite' })
    els.banner = h('p', { id: 'debug-banner', class: 'debug-banner', hidden: true })
    els.jump = button('debug-jump', 'Jump', () => this.jump())
    els.followBox = h('input', { type: 'checkbox', id: 'debug-follow', onchange: (e) => this.setFollow(e.target.checked) })
    els.follow = h('label', { class: 'debug-follow' }, els.followBox, ' Follow the debugger')
    els.error = h('p', { id: 'debug-error', class: 'error', role: 'alert' })
    els.notice = h('p', { id: 'debug-notice', class: 'hint', hidden: true })
    els.stack = h('ol', { id: 'debug-stack', class: 'debug-stack', 'aria-label': 'Call stack' })
    els.vars = h('ul', { id: 'debug-variables', class: 'debug-variables', 'aria-label': 'Variables' })
    els.evalInput = h('input', { id: 'debug-eval-input', placeholder: 'Evaluate in the selected frame', 'aria-label': 'Expression' })
    els.evalOut = h('pre', { id: 'debug-eval-result', class: 'debug-eval-result' })
    els.evalForm = h('form', {
      id: 'debug-eval', class: 'debug-eval',
      onsubmit: (e) => { e.preventDefault(); this.evaluate() },
    }, els.evalInput, h('button', { type: 'submit' }, 'Evaluate'))
    els.controls = h('div', { class: 'debug-controls', role: 'group', 'aria-label': 'Debugger controls' },
      els.start, els.cont, els.next, els.stepIn, els.stepOut, els.pause, els.stop)
    els.bannerRow = h('div', { class: 'debug-banner-row' }, els.banner, els.jump)
    els.body = h('div', { class: 'debug-body' },
      h('div', {}, h('h3', {}, 'Call stack'), els.stack),
      h('div', {}, h('h3', {}, 'Variables'), els.vars))
    // the title the size of the other panels' (the debug panel's own rule makes it larger)
    els.head = h('div', { class: 'debug-head' }, h('h2', { id: 'debug-title', style: { fontSize: '0.8rem' } }, els.fold),
      els.status, els.controls, els.follow)
    const section = h('section', { id: 'debug', class: 'debug', 'aria-labelledby': 'debug-title' },
      els.head,
      els.bannerRow, els.notice, els.error, els.body, els.evalForm, els.evalOut,
    )
    this.els = els
    this.userFolded = null // null: folded exactly when no session runs; true/false: the person's choice
    const runs = document.getElementById('runs')
    if (runs) runs.after(section)
    else document.body.append(section)
    return section
  }

  active() {
    const state = this.state()
    return state === 'queued' || state === 'running' || state === 'stopped'
  }

  folded() {
    return this.userFolded ?? !this.active()
  }

  setFolded(folded) {
    this.userFolded = folded === !this.active() ? null : folded
    this.render()
  }

  /** One line (fold button, title, state, start, follow) or the whole panel. Styled here, inline,
   * so the panel's height is this module's business: folded, it gives the editor its room back. */
  renderFold() {
    const folded = this.folded()
    const els = this.els
    this.panel.dataset.folded = String(folded)
    els.fold.textContent = `${folded ? '▸' : '▾'} Debug`
    els.fold.title = folded ? 'Show the debug panel' : 'Fold the debug panel'
    els.fold.setAttribute('aria-expanded', String(!folded))
    for (const el of [els.body, els.evalOut]) el.hidden = folded
    // the follow toggle: on the one line when folded, beside the banner when open (the controls' line is full)
    const home = folded ? els.head : els.bannerRow
    if (els.follow.parentNode !== home) home.append(els.follow)
    els.bannerRow.hidden = folded
    els.notice.hidden = folded || els.notice.hidden
    els.error.hidden = !els.error.textContent
    Object.assign(this.panel.style, folded
      ? { maxHeight: 'none', overflow: 'visible', padding: '0.2rem 0.75rem', gap: '0.2rem' }
      : { maxHeight: '', overflow: '', padding: '', gap: '' })
  }

  renderControls() {
    if (!this.els) return
    const state = this.state()
    const drive = this.mayDrive()
    const active = this.active()
    const path = this.hooks.currentPath?.() ?? this.path
    const python = Boolean(path?.endsWith('.py'))
    this.els.start.hidden = !drive || active
    this.els.start.disabled = active || !python
    this.els.start.textContent = path ? `Debug ${path.split('/').pop()}` : 'Debug file'
    this.els.start.title = python ? `Run ${path} under the debugger, for everyone here` : "Open a Python file to debug it"
    for (const el of [this.els.cont, this.els.next, this.els.stepIn, this.els.stepOut]) {
      el.hidden = !drive
      el.disabled = state !== 'stopped'
    }
    this.els.pause.hidden = !drive
    this.els.pause.disabled = state !== 'running'
    const session = plain(this.debug.get('session')) || {}
    // The starter or an owner may stop; without a token the page cannot tell, and the server answers.
    this.els.stop.hidden = !(this.role === 'owner' || (drive && (!this.myId || !session.by || session.by === this.myId)))
    this.els.stop.disabled = !(state === 'running' || state === 'stopped')
    const folded = this.folded()
    if (folded) {
      // folded: only the start button, on the one line
      for (const el of [this.els.cont, this.els.next, this.els.stepIn, this.els.stepOut, this.els.pause, this.els.stop]) el.hidden = true
    }
    this.els.evalForm.hidden = folded || !drive
  }

  render() {
    const state = this.state()
    const wasActive = ['queued', 'running', 'stopped'].includes(this.lastState)
    if (this.lastState !== undefined && this.active() !== wasActive) {
      this.userFolded = null // a session starting opens the panel for everyone; its end folds it again
    }
    this.lastState = state
    const session = plain(this.debug.get('session')) || {}
    const stopped = state === 'stopped' ? plain(this.debug.get('stopped')) : null
    const labels = { off: 'Not debugging', queued: 'Debug run queued…', running: 'Running under the debugger', stopped: 'Paused', ended: 'Debug session ended' }
    this.els.status.textContent = labels[state] ?? state
    this.panel.dataset.state = state
    if (stopped) {
      const whose = stopped.breakpointBy ? ` (${stopped.breakpointBy}'s breakpoint)` : stopped.reason ? ` (${stopped.reason})` : ''
      const where = stopped.path ? `${stopped.path}:${stopped.line}` : 'a line outside the room\'s files'
      this.els.banner.textContent = `Stopped at ${where}${whose}`
    }
    this.els.banner.hidden = !stopped
    this.els.jump.hidden = !stopped?.path
    this.els.notice.hidden = !(state === 'ended' && session.notice)
    this.els.notice.textContent = session.notice ?? ''
    this.els.status.title = state === 'ended' && session.notice ? session.notice : ''
    this.renderStack(state === 'stopped' ? plain(this.debug.get('frames')) || [] : [])
    if (state !== 'stopped') this.selectedFrame = null
    if (state === 'stopped' && this.selectedFrame === null) this.renderScopes(plain(this.debug.get('scopes')) || [])
    if (state !== 'stopped') this.els.vars.replaceChildren()
    this.renderControls()
    this.renderFold()
    this.refreshEditor()
    const key = stopped ? `${session.stopId}` : null
    if (stopped && key !== this.lastStopKey && this.follow) this.jump()
    this.lastStopKey = key
  }

  renderStack(frames) {
    this.els.stack.replaceChildren(...frames.map((frame, i) => h('li', {},
      h('button', {
        type: 'button', class: 'debug-frame' + ((this.selectedFrame ?? frames[0]?.id) === frame.id ? ' selected' : ''),
        onclick: () => this.selectFrame(frame, i === 0),
      }, `${frame.name} — ${frame.path ?? frame.external}:${frame.line}`))))
  }

  renderScopes(scopes) {
    const items = []
    for (const scope of scopes) {
      const list = h('ul', {})
      if (Array.isArray(scope.variables)) list.append(...scope.variables.map((v) => this.variableItem(v)))
      else if (scope.ref) list.append(this.lazyItem(scope.ref))
      items.push(h('li', { class: 'debug-scope' }, h('strong', {}, scope.name), list))
    }
    this.els.vars.replaceChildren(...items)
  }

  variableItem(v) {
    const label = h('span', { class: 'debug-var' }, h('span', { class: 'debug-var-name' }, v.name), ' = ',
      h('span', { class: 'debug-var-value' }, v.value), v.type ? h('span', { class: 'hint' }, ` ${v.type}`) : null)
    if (!v.ref) return h('li', {}, label)
    const details = h('details', {}, h('summary', {}, label))
    details.addEventListener('toggle', async () => {
      if (!details.open || details.dataset.loaded) return
      details.dataset.loaded = '1'
      try {
        const { variables } = await this.api('POST', 'debug/variables', { ref: v.ref })
        details.append(h('ul', {}, variables.map((child) => this.variableItem(child))))
      } catch (error) {
        details.append(h('p', { class: 'error' }, error.message))
      }
    })
    return h('li', {}, details)
  }

  lazyItem(ref) {
    return this.variableItem({ name: '…', value: 'expand', ref })
  }

  async selectFrame(frame, top) {
    this.selectedFrame = top ? null : frame.id
    this.renderStack(plain(this.debug.get('frames')) || [])
    if (frame.path) this.hooks.openFile(frame.path, frame.line)
    if (top) { this.renderScopes(plain(this.debug.get('scopes')) || []); return }
    try {
      const { scopes } = await this.api('POST', 'debug/scopes', { frameId: frame.id })
      if (this.selectedFrame === frame.id) this.renderScopes(scopes)
    } catch (error) {
      this.showError(error.message)
    }
  }

  setFollow(on) {
    this.follow = on
    this.els.followBox.checked = on
    this.awareness.setLocalStateField('debugFollow', on)
    if (on && this.state() === 'stopped') this.jump()
  }

  jump() {
    const stopped = plain(this.debug.get('stopped'))
    if (stopped?.path) this.hooks.openFile(stopped.path, Number(stopped.line))
  }

  // -- the API --------------------------------------------------------------------------------

  async call(method, path, body) {
    this.showError('')
    try {
      return await this.api(method, path, body)
    } catch (error) {
      this.showError(error.message)
      return null
    }
  }

  showError(message) {
    this.els.error.textContent = message
    this.els.error.hidden = !message
  }

  start() {
    const path = this.hooks.currentPath()
    if (!path) { this.showError('Open a Python file to debug it.'); return }
    return this.call('POST', 'debug/start', { path })
  }

  drive(command) {
    const session = plain(this.debug.get('session')) || {}
    return this.call('POST', `debug/${command}`, { stopId: session.stopId })
  }

  async evaluate() {
    const expression = this.els.evalInput.value.trim()
    if (!expression) return
    const body = { expression }
    if (this.selectedFrame !== null) body.frameId = this.selectedFrame
    const result = await this.call('POST', 'debug/evaluate', body)
    if (result) this.els.evalOut.textContent = `${expression} = ${result.result}`
  }
}

/**
 * The replay page's view of the debugger: where execution stood at this moment of the recording and
 * the top frame's variables, read from the replayed document (the server wrote them there at each
 * stop). Appended to ``parent``; returns a function that removes it.
 */
export function replayDebug(doc, parent) {
  const debug = doc.getMap('debug')
  const where = h('p', { id: 'replay-debug-where', class: 'debug-banner' })
  const vars = h('ul', { id: 'replay-debug-variables', class: 'debug-variables', 'aria-label': 'Variables at the stop' })
  const section = h('section', { id: 'replay-debug', 'aria-labelledby': 'replay-debug-title', hidden: true },
    h('h2', { id: 'replay-debug-title' }, 'Debugger then'), where, vars)
  parent.append(section)
  const render = () => {
    const state = String(debug.get('state') ?? 'off')
    const stopped = state === 'stopped' ? plain(debug.get('stopped')) : null
    section.hidden = state === 'off'
    if (!stopped) {
      where.textContent = { queued: 'Debug run queued', running: 'Running under the debugger', ended: 'Debug session ended' }[state] ?? ''
      vars.replaceChildren()
      return
    }
    const whose = stopped.breakpointBy ? ` (${stopped.breakpointBy}'s breakpoint)` : stopped.reason ? ` (${stopped.reason})` : ''
    where.textContent = `Stopped at ${stopped.path ? `${stopped.path}:${stopped.line}` : 'a line outside the room\'s files'}${whose}`
    const scopes = plain(debug.get('scopes')) || []
    vars.replaceChildren(...scopes.map((scope) => h('li', { class: 'debug-scope' }, h('strong', {}, scope.name),
      h('ul', {}, (scope.variables || []).map((v) => h('li', {}, h('span', { class: 'debug-var' },
        h('span', { class: 'debug-var-name' }, v.name), ' = ', h('span', { class: 'debug-var-value' }, v.value))))))))
  }
  debug.observeDeep(render)
  render()
  return () => { debug.unobserveDeep(render); section.remove() }
}
