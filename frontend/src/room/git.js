// The source-control panel: what changed since the last commit and who changed it, the co-authors a
// commit will credit, a message box, Commit, Pull and Push (docs/git.md). The server decides who may
// do what (the live role, `meta.policy.git`) and answers `canCommit`; this page only shows it.
// Shown only in rooms opened from a git repository (the document's `meta.git`). The log restores or
// forks the room at a commit (the recording's routes, at the commit's seq); a pull's conflicts
// (`meta.git.conflicts`) are shown side by side, each settled with Keep room's / Take remote's.
import './git.css'
import { StateEffect, StateField } from '@codemirror/state'
import { EditorView, GutterMarker, gutter } from '@codemirror/view'

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props)
  node.append(...children.filter((c) => c !== null && c !== undefined))
  return node
}
const STATUS_LETTER = { modified: 'M', added: 'A', deleted: 'D' }

// The blame gutter: who last changed each line (from the room's stamped edits, uncommitted ones too).
const setBlame = StateEffect.define()
const blameField = StateField.define({
  create: () => [],
  update: (lines, tr) => tr.effects.reduce((value, e) => (e.is(setBlame) ? e.value : value), lines),
})
class BlameMarker extends GutterMarker {
  constructor(entry, colors) { super(); this.entry = entry; this.colors = colors }
  eq(other) { return other.entry === this.entry }
  toDOM() {
    const span = document.createElement('span')
    const { name, user, origin, at } = this.entry
    span.className = 'git-blame-mark'
    span.textContent = name ?? (origin?.startsWith('local:git:') ? 'git' : '')
    if (user) span.style.borderLeftColor = colorOf(user, this.colors)
    span.title = [name ?? origin ?? 'before the log', at ? new Date(at).toLocaleString() : ''].filter(Boolean).join(' · ')
    return span
  }
}
// A present member's own colour (the server stamps it on their presence), else one made from their id.
const colorOf = (id, colors) => colors?.get(id) ?? `hsl(${[...id].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7)} 65% 45%)`
const setColors = StateEffect.define()
const colorsField = StateField.define({
  create: () => new Map(),
  update: (colors, tr) => tr.effects.reduce((value, e) => (e.is(setColors) ? e.value : value), colors),
})
const blameGutter = [
  blameField,
  colorsField,
  gutter({
    class: 'git-blame-gutter',
    lineMarker(view, line) {
      const entry = view.state.field(blameField)[view.state.doc.lineAt(line.from).number - 1]
      return entry ? new BlameMarker(entry, view.state.field(colorsField)) : null
    },
    lineMarkerChange: (update) => update.transactions.some((tr) => tr.effects.some((e) => e.is(setBlame))),
  }),
  EditorView.theme({ '.git-blame-gutter .cm-gutterElement': { minWidth: '6.5rem' } }),
]

export class GitPanel {
  /** `new GitPanel({doc, api, before, view, current, awareness})`: a section of its own, put before
   * `before` in the page; `view`, `current()` (the open file's path) and `awareness` (people's
   * colours) are for the blame gutter. */
  constructor({ doc, api, before, view, current, awareness }) {
    this.awareness = awareness
    this.doc = doc
    this.api = api
    this.view = view
    this.current = current
    this.blaming = false
    this.meta = doc.getMap('meta')
    this.status = null
    this.busy = false
    this.timer = null
    this.build(before)
    this.meta.observeDeep(() => { this.metaChanged(); this.renderConflicts() })
    doc.getMap('files').observeDeep(() => this.soon())
    this.metaChanged()
    /** The test hook, as `window.pairroom.git`. */
    this.hook = {
      status: () => this.status,
      refresh: () => this.refresh(),
      message: () => this.els.message.value,
      blame: () => (this.view?.state.field(blameField, false) ?? null),
      conflicts: () => this.conflicts().map(([id]) => id),
    }
    this.renderConflicts()
  }

  build(before) {
    const els = (this.els = {})
    els.branch = el('span', { className: 'git-branch hint' })
    els.refresh = el('button', { type: 'button', className: 'small', textContent: 'Refresh' })
    els.blame = el('button', { type: 'button', className: 'small', id: 'git-blame', textContent: 'Blame' })
    els.blame.setAttribute('aria-pressed', 'false')
    els.diff = el('pre', { className: 'git-diff', id: 'git-diff', hidden: true })
    els.changes = el('ul', { className: 'git-changes', id: 'git-changes' })
    els.empty = el('p', { className: 'hint', textContent: 'No changes since the last commit.', hidden: true })
    els.coauthors = el('p', { className: 'git-coauthors hint', id: 'git-coauthors' })
    els.message = el('textarea', { id: 'git-message', rows: 2, maxLength: 4000, placeholder: 'Commit message' })
    els.commit = el('button', { type: 'submit', id: 'git-commit', textContent: 'Commit' })
    els.pull = el('button', { type: 'button', id: 'git-pull', className: 'small', textContent: 'Pull' })
    els.push = el('button', { type: 'button', id: 'git-push', className: 'small', textContent: 'Push' })
    els.note = el('p', { className: 'hint', id: 'git-note', role: 'status' })
    els.error = el('p', { className: 'error', id: 'git-error', role: 'alert' })
    els.log = el('ol', { className: 'git-log', id: 'git-log', ariaLabel: 'Commits, newest first' })
    // The merge view: each conflict a pull left (meta.git.conflicts), both versions side by side.
    els.conflicts = el('div', { className: 'git-conflicts', id: 'git-conflicts', hidden: true })
    const label = el('label', { htmlFor: 'git-message', className: 'visually-hidden', textContent: 'Commit message' })
    els.form = el('form', { className: 'git-form' }, label, els.message,
      el('div', { className: 'git-actions' }, els.commit, els.pull, els.push))
    this.root = el('section', { id: 'source-control', className: 'git-panel', hidden: true },
      el('div', { className: 'git-head' }, el('h2', { id: 'git-title', textContent: 'Source control' }), els.blame, els.refresh),
      els.branch, els.conflicts, els.changes, els.diff, els.empty, els.coauthors, els.form, els.note, els.error, els.log)
    this.root.setAttribute('aria-labelledby', 'git-title')
    before.parentNode.insertBefore(this.root, before)
    els.refresh.addEventListener('click', () => this.refresh())
    els.blame.addEventListener('click', () => this.toggleBlame())
    els.changes.addEventListener('click', (event) => {
      const item = event.target.closest('.git-path') && event.target.closest('[data-path]')
      if (item) this.showDiff(item.dataset.path)
    })
    els.form.addEventListener('submit', (event) => { event.preventDefault(); this.commit() })
    els.pull.addEventListener('click', () => this.act('pull', 'Pulled'))
    els.push.addEventListener('click', () => this.act('push', 'Pushed'))
  }

  metaChanged() {
    const git = this.meta.get('git')
    const open = Boolean(git && typeof git.get === 'function' && git.get('head'))
    if (open && this.root.hidden) {
      this.root.hidden = false
      this.refresh()
    } else if (open) {
      this.soon()
    }
  }

  /** A status refresh a moment after the last change (typing does not flood the server). */
  soon() {
    if (this.root.hidden) return
    clearTimeout(this.timer)
    this.timer = setTimeout(() => this.refresh(), 800)
  }

  async refresh() {
    try {
      const [status, log] = await Promise.all([this.api('GET', 'git/status'), this.api('GET', 'git/log?limit=8')])
      this.status = status
      this.render(status, log.commits)
      this.renderConflicts()
      this.els.error.textContent = ''
    } catch (error) {
      if (error.status === 503 || error.status === 409) { this.root.hidden = true; return }
      this.els.error.textContent = `Source control: ${error.message}`
    }
  }

  render(status, commits) {
    const { els } = this
    els.branch.textContent = `on ${status.branch}`
    els.branch.title = status.remote
    els.changes.replaceChildren(...status.changes.map((change) => el('li', { className: `git-change ${change.status}` },
      el('span', { className: 'git-letter', title: change.status, textContent: STATUS_LETTER[change.status] ?? '?' }),
      el('button', { type: 'button', className: 'git-path link', textContent: change.path, title: 'Show the diff', ariaExpanded: String(this.diffPath === change.path) }),
      el('span', { className: 'git-by hint', textContent: change.by.map((b) => b.name).join(', ') }),
    )))
    for (const [i, change] of status.changes.entries()) els.changes.children[i].dataset.path = change.path
    if (this.diffPath && !status.changes.some((c) => c.path === this.diffPath)) this.hideDiff()
    if (this.blaming && Date.now() - (this.blamedAt ?? 0) > 3000) this.loadBlame() // not on every keystroke
    els.empty.hidden = status.changes.length > 0
    els.coauthors.textContent = status.coauthors.length
      ? `Co-authored-by: ${status.coauthors.map((p) => `${p.name} <${p.email}>`).join(', ')}`
      : ''
    for (const button of [els.commit, els.pull, els.push]) button.disabled = !status.canCommit || this.busy
    els.message.disabled = !status.canCommit
    els.commit.disabled ||= status.changes.length === 0
    els.log.replaceChildren(...commits.map((c) => el('li', {},
      el('code', { textContent: c.sha.slice(0, 7) }), ' ', c.subject, ' ',
      el('span', { className: 'hint', textContent: [c.author.name, ...c.coauthors.map((x) => x.replace(/ <.*$/, ''))].join(', ') }),
      // the room's files as this commit has them: a restore at the commit's point of the log
      c.seq != null && status.canCommit
        ? el('span', { className: 'git-at' },
          el('button', { type: 'button', className: 'small git-restore', textContent: 'Restore', title: `Make the room's files this commit's again (a new change everyone sees)`, onclick: () => this.restore(c) }),
          el('button', { type: 'button', className: 'small git-fork', textContent: 'Fork', title: 'A new room whose files are this commit\'s', onclick: () => this.askFork(c) }))
        : null,
    )))
    for (const [i, c] of commits.entries()) els.log.children[i].dataset.sha = c.sha
    if (this.forking) this.showFork(this.forking)
  }

  async showDiff(path) {
    if (this.diffPath === path) { this.hideDiff(); return }
    try {
      const { diff } = await this.api('GET', `git/diff?path=${encodeURIComponent(path)}&format=json`)
      this.els.diff.textContent = diff
      this.els.diff.hidden = false
      this.diffPath = path
    } catch (error) {
      this.els.error.textContent = `Diff: ${error.message}`
    }
  }

  hideDiff() {
    this.els.diff.hidden = true
    this.diffPath = null
  }

  toggleBlame() {
    this.blaming = !this.blaming
    this.els.blame.setAttribute('aria-pressed', String(this.blaming))
    clearInterval(this.blameTimer)
    if (this.blaming) {
      this.loadBlame()
      // Opening another file gives the editor a new state without the gutter: put it back.
      this.blameTimer = setInterval(() => {
        if (this.view.state.field(blameField, false) === undefined || this.blamedPath !== this.current()) this.loadBlame()
      }, 500)
    } else {
      this.view.dispatch({ effects: setBlame.of([]) })
    }
  }

  async loadBlame() {
    const path = this.current()
    this.blamedPath = path
    this.blamedAt = Date.now()
    if (!path || !this.view) return
    if (this.view.state.field(blameField, false) === undefined) {
      this.view.dispatch({ effects: StateEffect.appendConfig.of(blameGutter) })
    }
    try {
      const { lines } = await this.api('GET', `files/${path.split('/').map(encodeURIComponent).join('/')}/blame`)
      const colors = new Map()
      for (const state of this.awareness?.getStates().values() ?? []) {
        if (state?.user?.id && state.user.color) colors.set(state.user.id, state.user.color)
      }
      if (this.blaming && this.current() === path) this.view.dispatch({ effects: [setColors.of(colors), setBlame.of(lines)] })
    } catch (error) {
      if (error.status !== 404) this.els.error.textContent = `Blame: ${error.message}`
    }
  }

  async restore(commit) {
    if (!confirm(`Make the room's files those of ${commit.sha.slice(0, 7)} "${commit.subject}" again?`)) return
    try {
      await this.api('POST', 'restore', { at: commit.seq })
      this.els.note.textContent = `Restored ${commit.sha.slice(0, 7)}.`
    } catch (error) {
      this.els.error.textContent = `Restore failed: ${error.message}`
    }
  }

  /** The inline form under a commit of the log: the new room's name, then Fork. */
  askFork(commit) {
    this.forking = this.forking?.sha === commit.sha ? null : commit
    this.els.log.querySelector('.git-fork-form')?.remove()
    if (this.forking) this.showFork(commit)
  }

  showFork(commit) {
    const item = this.els.log.querySelector(`[data-sha="${commit.sha}"]`)
    if (!item || item.querySelector('.git-fork-form')) return
    const room = decodeURIComponent(location.pathname.split('/')[2] ?? 'room')
    const name = el('input', { id: 'git-fork-name', value: `${room}-${commit.sha.slice(0, 7)}`, maxLength: 200, spellcheck: false })
    name.setAttribute('aria-label', 'Name of the new room')
    const form = el('form', { className: 'git-fork-form' }, name,
      el('button', { type: 'submit', className: 'small', id: 'git-fork-go', textContent: 'Fork here' }),
      el('button', { type: 'button', className: 'small', textContent: 'Cancel', onclick: () => this.askFork(commit) }))
    form.addEventListener('submit', (event) => { event.preventDefault(); this.fork(commit, name.value.trim()) })
    item.append(form)
    name.focus()
  }

  async fork(commit, name) {
    if (!name) return
    this.els.error.textContent = ''
    try {
      const answer = await this.api('POST', 'fork', { room: name, at: commit.seq })
      this.forking = null
      this.els.log.querySelector('.git-fork-form')?.remove()
      const link = el('a', { href: `/r/${encodeURIComponent(answer.room)}`, target: '_blank', rel: 'noopener', textContent: answer.room, title: answer.git?.branch ? `branch ${answer.git.branch}` : '' })
      // The fork has a repository of its own (answer.git), without this room's push credential.
      const more = answer.git?.branch
        ? ' Its own repository (branch shown there); its owners set its push credential.'
        : answer.git?.error ? ` It has no repository: ${answer.git.error}.` : ''
      this.els.note.replaceChildren(`Forked ${commit.sha.slice(0, 7)} into `, link, `.${more}`)
    } catch (error) {
      this.els.error.textContent = `Fork failed: ${error.message}`
    }
  }

  /** meta.git.conflicts as [id, {path, ours, theirs, sha, anchor}], oldest first. */
  conflicts() {
    const found = this.meta.get('git')?.get?.('conflicts')
    if (!found || typeof found.entries !== 'function') return []
    return [...found.entries()].filter(([, c]) => c && typeof c.path === 'string').sort((a, b) => (a[1].at ?? 0) - (b[1].at ?? 0))
  }

  renderConflicts() {
    const list = this.conflicts()
    const canCommit = this.status?.canCommit ?? false
    this.els.conflicts.hidden = list.length === 0
    this.els.conflicts.replaceChildren(...(list.length ? [el('h3', { textContent: `Conflicts from pull (${list.length})` })] : []),
      ...list.map(([id, c]) => {
        const side = (title, text, cls) => el('figure', { className: `git-side ${cls}` },
          el('figcaption', { textContent: title }), el('pre', { textContent: text || '(no lines)' }))
        const take = (which, label, hint) => el('button', {
          type: 'button', className: `small git-take-${which}`, textContent: label, title: hint, disabled: !canCommit || this.busy,
          onclick: () => this.resolve(id, which),
        })
        const box = el('article', { className: 'git-conflict', ariaLabel: `Conflict in ${c.path}` },
          el('div', { className: 'git-conflict-head' },
            el('code', { textContent: c.path }), el('span', { className: 'hint', textContent: ` pulled ${String(c.sha ?? '').slice(0, 7)}` })),
          el('div', { className: 'git-sides' },
            side("Room's version (kept now)", c.ours, 'ours'), side("Remote's version", c.theirs, 'theirs')),
          el('div', { className: 'git-actions' },
            take('ours', "Keep room's", 'Keep the lines as the room has them and close the thread'),
            c.anchor === 'file' ? null : take('theirs', "Take remote's", "Replace the room's lines with the remote's, for everyone")))
        box.dataset.conflict = id
        return box
      }))
  }

  async resolve(id, take) {
    this.els.error.textContent = ''
    try {
      const answer = await this.api('POST', 'git/resolve', { conflict: id, take })
      this.els.note.textContent = `${answer.path}: ${take === 'theirs' ? "took the remote's lines" : "kept the room's lines"}.`
    } catch (error) {
      this.els.error.textContent = `Resolve failed: ${error.message}`
    }
  }

  async commit() {
    const message = this.els.message.value.trim()
    if (!message) { this.els.error.textContent = 'Write a commit message first.'; return }
    const done = await this.act('commit', 'Committed', { message })
    if (done) this.els.message.value = ''
  }

  async act(what, verb, body = {}) {
    this.busy = true
    this.els.error.textContent = ''
    this.els.note.textContent = `${verb.replace(/ed$/, 'ing')}…`
    try {
      const answer = await this.api('POST', `git/${what}`, body)
      const sha = answer.head ? ` ${answer.head.slice(0, 7)}` : ''
      const conflicts = answer.conflicts?.length ? `; ${answer.conflicts.length} conflict(s) opened as review threads` : ''
      this.els.note.textContent = `${verb}${sha}${conflicts}.`
      return true
    } catch (error) {
      this.els.note.textContent = ''
      this.els.error.textContent = `${verb.replace(/ed$/, '')} failed: ${error.message}`
      return false
    } finally {
      this.busy = false
      await this.refresh()
    }
  }
}
