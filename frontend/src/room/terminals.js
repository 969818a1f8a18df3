// The terminal panel: the room's shared terminals as tabs, one open at a time, drawn by xterm.js.
// The server owns the shells and decides who types (docs/terminals.md): this page only shows it.
// xterm.js is a chunk of its own, loaded when the first terminal opens.

const $ = (id) => document.getElementById(id)

export class TerminalPanel {
  /** `new TerminalPanel({room, token, role, api})`: fills the #terminals section. */
  constructor({ room, token, role, api, ready }) {
    this.room = room
    this.token = token
    this.api = api
    this.mayStart = role === 'owner' || role === 'editor'
    this.terminals = []
    this.current = null // {id, ws, term, fit, setup}
    this.root = $('terminals')
    this.root.hidden = false
    $('term-new').hidden = !this.mayStart
    $('term-new').addEventListener('click', () => this.create())
    $('term-restart').addEventListener('click', () => this.restart())
    $('term-propose').addEventListener('submit', (event) => {
      event.preventDefault()
      const input = $('term-propose-line')
      if (input.value.trim()) this.send(['propose', input.value])
      input.value = ''
    })
    /** The test hook, as `window.pairroom.terminals`. */
    this.hook = {
      lines: () => this.lines(),
      canWrite: () => Boolean(this.current?.setup?.can_write),
      id: () => this.current?.id ?? null,
    }
    // Asked once the server has let this page in (``ready``): a refused link shows its refusal page
    // without a failed request behind it.
    ;(ready ?? Promise.resolve()).then(() => {
      this.refresh()
      this.timer = setInterval(() => { if (!document.hidden) this.refresh() }, 5000)
    })
    window.addEventListener('resize', () => this.fit())
  }

  async refresh() {
    try {
      const { terminals, available } = await this.api('GET', 'terminals')
      if (available === false) { this.root.hidden = true; clearInterval(this.timer); return }
      this.terminals = terminals
      this.error('')
    } catch (error) {
      if (error.status === 503) { this.root.hidden = true; clearInterval(this.timer); return }
      this.error(`Terminals: ${error.message}`)
    }
    this.renderTabs()
    if (!this.current && !this.opening && this.terminals.length) this.open(this.terminals[0].id)
  }

  renderTabs() {
    const tabs = $('term-tabs')
    tabs.replaceChildren(...this.terminals.map((t) => {
      const tab = document.createElement('button')
      tab.type = 'button'
      tab.setAttribute('role', 'tab')
      tab.className = 'term-tab small'
      tab.dataset.id = t.id
      tab.setAttribute('aria-selected', String(this.current?.id === t.id))
      tab.textContent = t.status === 'running' ? t.name : `${t.name} (${t.status === 'ended' ? 'ended' : 'exited'})`
      tab.addEventListener('click', () => this.open(t.id))
      return tab
    }))
    $('term-empty').hidden = this.terminals.length > 0
  }

  async create() {
    try {
      const terminal = await this.api('POST', 'terminals', {})
      this.terminals.push(terminal)
      await this.open(terminal.id)
    } catch (error) {
      this.error(error.message)
    }
  }

  async restart() {
    const current = this.current
    if (!current) return
    try {
      await this.api('POST', `terminals/${encodeURIComponent(current.id)}/restart`)
      $('term-restart').hidden = true
      if (current.lost && this.current === current) {
        // it ended with its server and was started again elsewhere: watch the new shell
        this.close()
        await this.open(current.id)
        this.notice('The shell was started again on a running server.')
        await this.refresh()
      }
    } catch (error) {
      this.error(error.message)
    }
  }

  async open(id) {
    if (this.current?.id === id) return
    this.close()
    // the modules load asynchronously: a later open() (a click, the periodic refresh) wins
    const opening = (this.opening = {})
    const [{ Terminal }, { FitAddon }] = await Promise.all([import('@xterm/xterm'), import('@xterm/addon-fit')])
    await import('@xterm/xterm/css/xterm.css')
    if (this.opening !== opening) return
    this.opening = null
    const term = new Terminal({ convertEol: false, scrollback: 2000, disableStdin: true, fontSize: 13 })
    const fit = new FitAddon()
    term.loadAddon(fit)
    const screen = $('term-screen')
    screen.replaceChildren()
    term.open(screen)
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
    const query = this.token ? `?token=${encodeURIComponent(this.token)}` : ''
    const ws = new WebSocket(`${scheme}://${location.host}/terminal/${encodeURIComponent(this.room)}/${encodeURIComponent(id)}${query}`)
    const current = { id, ws, term, fit, setup: null, proposals: new Map() }
    this.current = current
    term.onData((data) => { if (current.setup?.can_write) this.send(['stdin', data]) })
    ws.addEventListener('message', (event) => this.receive(current, JSON.parse(event.data)))
    ws.addEventListener('close', (event) => {
      if (this.current !== current) return
      // a terminal whose server stopped stays selected, so that it can be restarted
      if (event.code === 4404 && this.terminals.find((t) => t.id === id)?.status === 'ended') current.lost = true
      if (current.lost) {
        if (event.code === 4404) this.notice('This terminal ended with its server.')
        $('term-restart').hidden = !this.mayStart
        this.refresh()
        return
      }
      this.notice(event.code === 1000 ? 'This terminal ended.' : `Disconnected: ${event.reason || event.code}`)
      if (event.code === 1000) { this.current = null; this.refresh() }
    })
    $('term-commands').replaceChildren()
    $('term-proposals').replaceChildren()
    $('term-people').replaceChildren()
    $('term-people').hidden = true
    this.renderTabs()
  }

  close() {
    const current = this.current
    this.current = null
    if (!current) return
    current.ws.close()
    current.term.dispose()
  }

  send(frame) {
    const ws = this.current?.ws
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame))
  }

  receive(current, [kind, ...args]) {
    if (this.current !== current) return
    const { term } = current
    if (kind === 'setup') {
      const setup = args[0]
      const wasWriter = current.setup?.can_write
      current.setup = setup
      term.options.disableStdin = !setup.can_write
      $('term-readonly').hidden = setup.can_write
      $('term-readonly').textContent = `Read-only · ${setup.role}`
      $('term-propose').hidden = setup.can_write
      $('term-writers').textContent = setup.writers.length ? `Typing: ${setup.writers.map((w) => w.name).join(', ')}` : ''
      $('term-restart').hidden = !(setup.status === 'exited' && this.mayStart)
      const smallest = setup.size_policy === 'smallest'
      if (smallest || (setup.can_write && !wasWriter)) this.fit()
      if (!setup.can_write || smallest) term.resize(setup.cols, setup.rows)
      if (!current.commandsShown) { setup.commands.forEach((c) => this.command(c)); current.commandsShown = true }
      setup.proposals.forEach((p) => this.proposal(current, p))
      this.people(setup)
    } else if (kind === 'snapshot') {
      term.reset()
      term.write(args[0])
    } else if (kind === 'stdout') {
      term.write(args[0])
    } else if (kind === 'resize') {
      // writers keep their own size (it is the PTY's); under "smallest" everyone shows the PTY's
      if (!current.setup?.can_write || current.setup?.size_policy === 'smallest') term.resize(args[1], args[0])
    } else if (kind === 'notice') {
      this.notice(args[0])
    } else if (kind === 'command') {
      this.command(args[0])
    } else if (kind === 'proposal') {
      this.proposal(current, args[0])
    } else if (kind === 'exit') {
      // null: the server running the terminal stopped, so no exit code was seen
      if (args[0] === null) current.lost = true
      this.notice(args[0] === null ? 'The terminal ended with its server.' : `The shell exited with code ${args[0]}.`)
      $('term-restart').hidden = !this.mayStart
    }
  }

  fit() {
    const current = this.current
    const smallest = current?.setup?.size_policy === 'smallest'
    if (!current?.setup?.can_write && !smallest) return
    const dims = current.fit.proposeDimensions() // what fits this panel
    if (!dims || !dims.rows || !dims.cols) return // not laid out yet
    if (!smallest) current.term.resize(dims.cols, dims.rows)
    this.send(['resize', dims.rows, dims.cols]) // the writers' size is the PTY's; or the smallest one
  }

  command(entry) {
    const item = document.createElement('li')
    const approved = entry.approvedByName ? `, approved by ${entry.approvedByName}` : ''
    item.append(`${entry.name} ran `)
    const code = document.createElement('code')
    code.textContent = entry.line
    item.append(code, approved)
    const list = $('term-commands')
    list.append(item)
    while (list.children.length > 20) list.firstChild.remove()
  }

  proposal(current, p) {
    const list = $('term-proposals')
    list.querySelector(`[data-id="${CSS.escape(p.id)}"]`)?.remove()
    if (p.status !== 'open') return
    const item = document.createElement('li')
    item.dataset.id = p.id
    item.append(`${p.name} proposes `)
    const code = document.createElement('code')
    code.textContent = p.line
    item.append(code)
    if (current.setup?.can_write) {
      for (const [label, frame] of [['Run', 'accept'], ['Dismiss', 'dismiss']]) {
        const button = document.createElement('button')
        button.type = 'button'
        button.className = 'small'
        button.textContent = label
        button.addEventListener('click', () => this.send([frame, p.id]))
        item.append(' ', button)
      }
    }
    list.append(item)
  }

  /** Owners: who is at this terminal, and a button to let each type or stop them (live). */
  people(setup) {
    const list = $('term-people')
    const watchers = setup.role === 'owner' ? (setup.watchers ?? []) : []
    list.hidden = watchers.length === 0
    list.replaceChildren(...watchers.map((w) => {
      const item = document.createElement('li')
      item.dataset.user = w.id
      item.append(`${w.name} · ${w.can_write ? 'may type' : 'watching'} `)
      const button = document.createElement('button')
      button.type = 'button'
      button.className = 'small'
      button.textContent = w.can_write ? 'Stop typing' : 'Let type'
      button.setAttribute('aria-label', w.can_write ? `Stop ${w.name} typing` : `Let ${w.name} type`)
      button.addEventListener('click', () => this.grant(w.id, !w.can_write))
      item.append(button)
      return item
    }))
  }

  async grant(user, write) {
    const current = this.current
    if (!current) return
    try {
      await this.api('POST', `terminals/${encodeURIComponent(current.id)}/writers`, { user, write })
    } catch (error) {
      this.error(`Typing rights: ${error.message}`)
    }
  }

  lines() {
    const buffer = this.current?.term?.buffer?.active
    if (!buffer) return []
    const out = []
    for (let y = 0; y < buffer.length; y++) out.push(buffer.getLine(y)?.translateToString(true) ?? '')
    return out
  }

  notice(text) { $('term-notice').textContent = text }

  error(text) { $('term-error').textContent = text }
}
