// The history panel: the room's versions (named and checkpoints), saving one, the diff of the open file
// between a version and now, and restoring that file to a version (docs/recording.md, HTTP routes).
import * as Y from 'yjs'
import { h } from '../shared.js'

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
const dayFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' })
const when = (at) => {
  const date = new Date(at)
  const today = date.toDateString() === new Date().toDateString()
  return today ? timeFormat.format(date) : `${dayFormat.format(date)} ${timeFormat.format(date)}`
}

function diffView(text) {
  const lines = text.split('\n')
  if (lines.at(-1) === '') lines.pop()
  return lines.map((line) => {
    const kind = line.startsWith('+++') || line.startsWith('---') ? 'file'
      : line.startsWith('@@') ? 'hunk' : line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : 'same'
    return h('span', { class: `diff-line diff-${kind}` }, line + '\n')
  })
}

/** What someone's `history` presence event says to the others. */
export function historyNotice(who, event) {
  const version = event.version ? `“${event.version}”` : 'a checkpoint'
  const at = event.versionAt ? ` (${when(event.versionAt)})` : ''
  if (event.kind === 'restored') {
    return `${who} restored ${event.path} to ${version}${at}. The edits before it are in History: Diff shows them.`
  }
  return `${who} saved the version ${version}.`
}

export class HistoryPanel {
  /**
   * ``current()`` gives the open file's path (or null); ``canWrite`` is false for viewers. ``announce``
   * tells the others what this page did (`saved` or `restored`), through presence: their lists
   * reload and a restore shows them a notice.
   */
  constructor(doc, api, { canWrite, current, announce }) {
    this.api = api
    this.announce = announce ?? (() => {})
    this.confirming = null // the version whose restore waits for a yes
    this.meta = doc.getMap('meta')
    this.current = current
    this.versions = []
    this.$ = (id) => document.getElementById(id)
    this.setCanWrite(canWrite)
    this.$('version-form').addEventListener('submit', (event) => {
      event.preventDefault()
      const name = this.$('version-name').value.trim()
      if (!name) return
      this.call(async () => {
        await this.api('POST', 'versions', { name })
        this.$('version-name').value = ''
        this.say(`Saved version “${name}”.`)
        this.announce({ kind: 'saved', version: name })
        await this.load()
      })
    })
    this.$('versions-refresh').addEventListener('click', () => this.call(() => this.load()))
    this.$('diff-close').addEventListener('click', () => { this.$('diff').hidden = true })
    this.meta.observeDeep(() => this.renderOff())
  }

  /** Viewers read history; the page's live role decides (an owner's change in ``meta.roles``). */
  setCanWrite(canWrite) {
    this.canWrite = canWrite
    this.$('version-form').hidden = !canWrite
    this.render()
  }

  get recordingOff() {
    const policy = this.meta.get('policy')
    return policy instanceof Y.Map && policy.get('recording') === false
  }

  renderOff() {
    const off = this.recordingOff
    this.$('history-off').hidden = !off
    this.$('history-on').hidden = off
    return off
  }

  /** First load, once the room is synced (the server answers 404 for a room it has never stored). */
  start() {
    if (this.renderOff()) return
    this.call(() => this.load())
  }

  say(text) {
    this.$('history-status').textContent = text
  }

  async call(fn) {
    this.$('history-error').textContent = ''
    try {
      await fn()
    } catch (error) {
      this.say('') // an earlier success is not the news any more
      this.$('history-error').textContent = error.message
    }
  }

  async load() {
    if (this.renderOff()) return
    const { versions } = await this.api('GET', 'versions')
    this.versions = versions.slice().sort((a, b) => b.seq - a.seq || String(b.at).localeCompare(String(a.at)))
    this.render()
  }

  render() {
    const list = this.$('version-list')
    this.$('versions-empty').hidden = this.versions.length > 0
    list.replaceChildren(...this.versions.map((v) => {
      const at = v.at ? when(v.at) : `seq ${v.seq}`
      const label = `${v.name} (${at})`
      return h('li', { class: 'version', 'data-seq': v.seq, 'data-name': v.name },
        h('span', { class: 'version-name', title: `seq ${v.seq}` }, v.auto ? 'checkpoint' : v.name),
        h('time', { class: 'hint', datetime: v.at ?? '' }, at),
        h('span', { class: 'version-actions' },
          h('button', { type: 'button', class: 'small', 'aria-label': `Diff the open file since ${label}`, onclick: () => this.diff(v) }, 'Diff'),
          this.canWrite
            ? h('button', { type: 'button', class: 'small', 'aria-label': `Restore the open file to ${label}`, onclick: () => this.confirm(v) }, 'Restore')
            : null),
        this.confirming?.seq === v.seq ? this.confirmation(v) : null)
    }))
    list.querySelector('.restore-confirm button.danger')?.focus()
  }

  /** Restore asks first, naming the file and the version, and says what happens to the edits since. */
  confirm(version) {
    if (!this.current()) {
      this.$('history-error').textContent = 'Open a file first: Restore brings back one file.'
      return
    }
    this.confirming = version
    this.render()
  }

  confirmation(version) {
    const path = this.current()
    const name = version.auto ? 'the checkpoint' : `“${version.name}”`
    const at = version.at ? ` (${when(version.at)})` : ''
    const cancel = () => { this.confirming = null; this.render() }
    return h('div', { class: 'restore-confirm', role: 'group', 'aria-label': 'Confirm the restore' },
      h('p', {}, `Restore ${path} to ${name}${at}? Everyone sees it at once; the edits since stay in History.`),
      h('div', { class: 'row' },
        h('button', { type: 'button', class: 'small danger', onclick: () => { this.confirming = null; this.restore(version) } }, `Restore ${path}`),
        h('button', { type: 'button', class: 'small', onclick: cancel }, 'Cancel')))
  }

  diff(version) {
    const path = this.current()
    if (!path) {
      this.$('history-error').textContent = 'Open a file first.'
      return
    }
    this.call(async () => {
      const query = new URLSearchParams({ from: String(version.seq), path })
      const { diff } = await this.api('GET', `diff?${query}`)
      this.$('diff-title').textContent = `${path}: ${version.auto ? 'checkpoint' : version.name} → now`
      const out = this.$('diff-text')
      if (diff) out.replaceChildren(...diffView(diff))
      else out.textContent = 'No changes.'
      this.$('diff').hidden = false
    })
  }

  restore(version) {
    const path = this.current()
    if (!path) {
      this.$('history-error').textContent = 'Open a file first.'
      return
    }
    this.call(async () => {
      const { changed } = await this.api('POST', 'restore', { at: String(version.seq), path })
      const name = version.auto ? 'the checkpoint' : `“${version.name}”`
      this.say(changed?.length === 0 ? `${path} was already as in ${name}.` : `Restored ${path} to ${name}.`)
      this.$('diff').hidden = true
      if (changed?.length !== 0) this.announce({ kind: 'restored', path, version: version.auto ? null : version.name, versionAt: version.at ?? null })
      await this.load()
    })
  }
}
