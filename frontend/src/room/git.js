// The source-control panel: what changed since the last commit and who changed it, the co-authors a
// commit will credit, a message box, Commit, Pull and Push (docs/git.md). The server decides who may
// do what (the live role, `meta.policy.git`) and answers `canCommit`; this page only shows it.
// Shown only in rooms opened from a git repository (the document's `meta.git`).
import './git.css'

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props)
  node.append(...children.filter((c) => c !== null && c !== undefined))
  return node
}
const STATUS_LETTER = { modified: 'M', added: 'A', deleted: 'D' }

export class GitPanel {
  /** `new GitPanel({doc, api, before})`: a section of its own, put before `before` in the page. */
  constructor({ doc, api, before }) {
    this.doc = doc
    this.api = api
    this.meta = doc.getMap('meta')
    this.status = null
    this.busy = false
    this.timer = null
    this.build(before)
    this.meta.observeDeep(() => this.metaChanged())
    doc.getMap('files').observeDeep(() => this.soon())
    this.metaChanged()
    /** The test hook, as `window.pairroom.git`. */
    this.hook = {
      status: () => this.status,
      refresh: () => this.refresh(),
      message: () => this.els.message.value,
    }
  }

  build(before) {
    const els = (this.els = {})
    els.branch = el('span', { className: 'git-branch hint' })
    els.refresh = el('button', { type: 'button', className: 'small', textContent: 'Refresh' })
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
    const label = el('label', { htmlFor: 'git-message', className: 'visually-hidden', textContent: 'Commit message' })
    els.form = el('form', { className: 'git-form' }, label, els.message,
      el('div', { className: 'git-actions' }, els.commit, els.pull, els.push))
    this.root = el('section', { id: 'source-control', className: 'git-panel', hidden: true },
      el('div', { className: 'git-head' }, el('h2', { id: 'git-title', textContent: 'Source control' }), els.refresh),
      els.branch, els.changes, els.empty, els.coauthors, els.form, els.note, els.error, els.log)
    this.root.setAttribute('aria-labelledby', 'git-title')
    before.parentNode.insertBefore(this.root, before)
    els.refresh.addEventListener('click', () => this.refresh())
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
      el('span', { className: 'git-path', textContent: change.path }),
      el('span', { className: 'git-by hint', textContent: change.by.map((b) => b.name).join(', ') }),
    )))
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
    )))
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
