// The `files` map (docs/doc-schema.md): path -> Y.Text. Path rules, the three operations, and the tree.
import * as Y from 'yjs'
import { h } from '../shared.js'

export const MAX_PATH = 255

/** Why ``path`` is not a valid file path, or null when it is (the rules of docs/doc-schema.md). */
export function pathProblem(path) {
  if (!path) return 'Give the file a name.'
  if (path.length > MAX_PATH) return `A path is at most ${MAX_PATH} characters.`
  if (path.startsWith('/')) return 'Paths are relative: leave out the leading /.'
  if (path.includes('\\')) return 'Use / between folders.'
  for (const segment of path.split('/')) {
    if (segment === '') return 'A path has no empty folder names (//, or a trailing /).'
    if (segment === '.' || segment === '..') return 'A path has no . or .. segments.'
  }
  return null
}

export function createFile(files, path, content = '') {
  files.set(path, new Y.Text(content))
}

/** Rename in one transaction, so that every client sees the move at once. */
export function renameFile(files, oldPath, newPath) {
  const old = files.get(oldPath)
  files.doc.transact(() => {
    files.set(newPath, new Y.Text(old ? old.toString() : ''))
    files.delete(oldPath)
  })
}

export function deleteFile(files, path) {
  files.delete(path)
}

/** Nested folders from flat paths: {dirs: Map<name, node>, files: [[name, path]]}, sorted. */
function buildTree(paths) {
  const root = { dirs: new Map(), files: [] }
  for (const path of [...paths].sort()) {
    const parts = path.split('/')
    let node = root
    for (const dir of parts.slice(0, -1)) {
      if (!node.dirs.has(dir)) node.dirs.set(dir, { dirs: new Map(), files: [] })
      node = node.dirs.get(dir)
    }
    node.files.push([parts.at(-1), path])
  }
  return root
}

/**
 * The file tree: one row per file, a button to open it and (for writers) rename and delete buttons.
 * Renaming and confirming a delete happen inline in the row.
 */
export class FileTree {
  constructor(list, { canWrite, onOpen, onRename, onDelete, problemFor }) {
    this.list = list
    this.canWrite = canWrite
    this.onOpen = onOpen
    this.onRename = onRename
    this.onDelete = onDelete
    this.problemFor = problemFor
    this.current = null
    this.editing = null // {path, mode: 'rename' | 'delete'}
    this.paths = []
    this.collapsed = new Set() // folder paths ("src/lib") folded in this page
  }

  render(paths, current) {
    this.paths = paths
    this.current = current
    if (this.editing && !paths.includes(this.editing.path)) this.editing = null
    const focused = document.activeElement?.dataset?.focusKey
    this.list.replaceChildren(...this.renderNode(buildTree(paths), 0, ''))
    if (focused) this.list.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus()
  }

  renderNode(node, depth, prefix) {
    const rows = []
    for (const [name, child] of node.dirs) {
      const dir = prefix + name
      const open = !this.collapsed.has(dir)
      const toggle = () => {
        if (open) this.collapsed.add(dir)
        else this.collapsed.delete(dir)
        this.render(this.paths, this.current)
      }
      rows.push(
        h('li', { class: `dir${open ? '' : ' collapsed'}`, style: { '--depth': depth }, 'data-dir': dir },
          h('button', {
            type: 'button', class: 'dir-name', 'aria-expanded': String(open), 'data-focus-key': `dir:${dir}`,
            'aria-label': `${open ? 'Fold' : 'Unfold'} the folder ${dir}`, onclick: toggle,
          }, h('span', { class: 'dir-arrow', 'aria-hidden': 'true' }, open ? '▾' : '▸'), ` ${name}/`),
          open ? h('ul', {}, ...this.renderNode(child, depth + 1, dir + '/')) : null),
      )
    }
    for (const [name, path] of node.files) rows.push(this.renderFile(name, path, depth))
    return rows
  }

  renderFile(name, path, depth) {
    const active = path === this.current
    const li = h('li', { class: 'file' + (active ? ' active' : ''), style: { '--depth': depth }, 'data-path': path })
    if (this.editing?.path === path && this.editing.mode === 'rename') {
      li.append(this.renameForm(path))
      return li
    }
    if (this.editing?.path === path && this.editing.mode === 'delete') {
      li.append(
        h('span', { class: 'confirm-text' }, `Delete ${name}?`),
        h('button', { type: 'button', class: 'danger', 'data-focus-key': `del-yes:${path}`,
          onclick: () => { this.editing = null; this.onDelete(path) } }, 'Delete'),
        h('button', { type: 'button', 'data-focus-key': `del-no:${path}`,
          onclick: () => this.stopEditing(`delete:${path}`) }, 'Cancel'),
      )
      return li
    }
    li.append(
      h('button', { type: 'button', class: 'open', title: path, 'aria-current': active ? 'true' : null,
        'data-focus-key': `open:${path}`, onclick: () => this.onOpen(path) }, name),
    )
    if (this.canWrite) {
      li.append(
        h('button', { type: 'button', class: 'icon', 'aria-label': `Rename ${path}`, title: 'Rename',
          'data-focus-key': `rename:${path}`, onclick: () => this.startEditing(path, 'rename') }, '✎'),
        h('button', { type: 'button', class: 'icon', 'aria-label': `Delete ${path}`, title: 'Delete',
          'data-focus-key': `delete:${path}`, onclick: () => this.startEditing(path, 'delete') }, '✕'),
      )
    }
    return li
  }

  renameForm(path) {
    const fresh = this.editing.draft === undefined
    if (fresh) this.editing.draft = path
    const input = h('input', { value: this.editing.draft ?? path, maxlength: 255, required: true, 'aria-label': `New path for ${path}`,
      'data-focus-key': `rename-input:${path}` })
    const error = h('span', { class: 'error', role: 'alert' })
    const form = h('form', { class: 'rename' }, input,
      h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', onclick: () => this.stopEditing(`rename:${path}`) }, 'Cancel'),
      error)
    form.addEventListener('submit', (event) => {
      event.preventDefault()
      const next = input.value.trim()
      if (next === path) return this.stopEditing(`open:${path}`)
      const problem = this.problemFor(next)
      if (problem) {
        error.textContent = problem
        return
      }
      this.editing = null
      this.onRename(path, next)
    })
    // Remote changes re-render the tree while someone types a new name: keep what they typed.
    input.addEventListener('input', () => { if (this.editing) this.editing.draft = input.value })
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') this.stopEditing(`rename:${path}`)
    })
    if (fresh) queueMicrotask(() => {
      input.focus()
      const dot = path.lastIndexOf('.')
      input.setSelectionRange(path.lastIndexOf('/') + 1, dot > path.lastIndexOf('/') + 1 ? dot : path.length)
    })
    return form
  }

  startEditing(path, mode) {
    this.editing = { path, mode }
    this.render(this.paths, this.current)
    if (mode === 'delete') this.list.querySelector(`[data-focus-key="${CSS.escape(`del-no:${path}`)}"]`)?.focus()
  }

  stopEditing(focusKey) {
    this.editing = null
    this.render(this.paths, this.current)
    this.list.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`)?.focus()
  }
}
