// The room page: /r/{room}[?token=...]. One Y.Doc per room, synced with the server by y-websocket and
// kept in IndexedDB so that edits made offline survive a reload and reach the server on reconnect.
import '../style.css'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { IndexeddbPersistence } from 'y-indexeddb'
import { yCollab } from 'y-codemirror.next'
import { basicSetup } from 'codemirror'
import { EditorView, keymap } from '@codemirror/view'
import { Compartment, EditorState } from '@codemirror/state'
import { indentWithTab } from '@codemirror/commands'
import { localIdentity, rememberRoom, roomPath, saveLocalName, tokenClaims } from '../shared.js'
import { FileTree, createFile, deleteFile, pathProblem, renameFile } from './files.js'
import { languageFor, languageName } from './languages.js'
import { People } from './people.js'
import { appendChat, postChat, renderChat } from './chat.js'
import { ConnectionStatus } from './connection.js'
import { roomApi } from './api.js'
import { RunPanel } from './runs.js'
import { HistoryPanel } from './history.js'
import { Reviews } from './review.js'
import { Debugger } from './debug.js'
import { startReplay } from './replay.js'
import { mountCall } from './call-button.js'
import { mountExtensions } from './extensions.js'

const $ = (id) => document.getElementById(id)
const ROLES = ['owner', 'editor', 'reviewer', 'viewer']

const match = location.pathname.match(/^\/r\/([^/]+)(\/replay)?\/?$/)
const room = match ? decodeURIComponent(match[1]) : ''
const token = new URLSearchParams(location.search).get('token')

document.title = `${room} · pairroom`
$('room-name').textContent = room

if (match?.[2]) {
  // The replay page: recorded sessions played back read-only (replay.js).
  document.title = `${room} · replay · pairroom`
  $('layout').hidden = true
  $('copy-link').hidden = true
  $('connection').hidden = true
  $('replay').hidden = false
  $('replay-room-link').href = roomPath(room, token)
  startReplay(room, token)
} else {
  startRoom()
}

function startRoom() {
  // Only for display: the server checks the token and enforces the live role on every update. The
  // page starts with the token's role and follows the room's `meta.roles` (an owner's live change)
  // for its user from then on, without a reload: see applyRole below.
  const claims = tokenClaims(token)
  const myId = typeof claims?.sub === 'string' ? claims.sub : null
  const tokenRole = ROLES.includes(claims?.role) ? claims.role : 'editor'
  let role = tokenRole
  let readOnly = role === 'viewer'
  let writesFiles = !readOnly && role !== 'reviewer' // reviewers comment; the server drops their file edits
  const identity = claims?.name ? { name: String(claims.name), color: claims.color || localIdentity().color } : localIdentity()

  rememberRoom(room, roomPath(room, token))

  const doc = new Y.Doc()
  const files = doc.getMap('files')
  const chat = doc.getArray('chat')
  const local = new IndexeddbPersistence(`pairroom:${room}`, doc)
  const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/yjs`
  const provider = new WebsocketProvider(wsBase, encodeURIComponent(room), doc, {
    params: token ? { token } : {},
    connect: navigator.onLine,
  })
  const awareness = provider.awareness
  const setUser = (name) =>
    awareness.setLocalStateField('user', { name, color: identity.color, colorLight: identity.color + '33' })
  setUser(identity.name)

  // Header: role badge, connection, copy link.
  function showRole() {
    const badge = $('role-badge')
    badge.hidden = !(readOnly || claims?.role)
    badge.textContent = readOnly ? 'Viewer · read-only' : role
    badge.classList.toggle('viewer', readOnly)
    badge.dataset.role = role
  }
  showRole()
  const status = new ConnectionStatus(provider, doc, [local], ({ state, label }) => {
    $('connection').dataset.state = state
    $('connection-text').textContent = label
  })
  $('copy-link').addEventListener('click', async () => {
    // The room link without this browser's token: a token is a personal identity.
    const link = new URL(roomPath(room), location.origin).href
    try {
      await navigator.clipboard.writeText(link)
      $('copy-link').textContent = 'Link copied'
    } catch {
      $('copy-link').textContent = link
    }
    setTimeout(() => { $('copy-link').textContent = 'Copy room link' }, 2000)
  })

  // The editor: one view, a new state per open file, bound to that file's Y.Text.
  const language = new Compartment()
  const permissions = new Compartment() // read-only or not: follows the live role
  const permissionsFor = () => [EditorState.readOnly.of(!writesFiles), EditorView.editable.of(!readOnly)]
  const view = new EditorView({ parent: $('editor') })
  let current = null // {path, ytext, undo}
  let runs = null // the output panel, made below
  let people = null // the people list and follow mode, made below
  // extensions' panels and gutter marks (extensions.js); made before any file opens
  const extensions = mountExtensions({
    room, token, doc, view, role: () => role, name: () => awareness.getLocalState()?.user?.name ?? identity.name,
    currentPath: () => current?.path ?? null,
  })
  const reviews = new Reviews(doc, { api: roomApi(room, token), role, button: $('comment-line'), name: () => awareness.getLocalState()?.user?.name })
  const debug = new Debugger(doc, roomApi(room, token), {
    role, awareness, myId, name: () => awareness.getLocalState()?.user?.name ?? identity.name,
    hooks: { openFile: (path, line) => openFileAt(path, line), currentPath: () => current?.path ?? null },
  })

  function openFile(path) {
    const ytext = files.get(path)
    if (!(ytext instanceof Y.Text)) return
    current?.undo.destroy()
    const undo = new Y.UndoManager(ytext)
    current = { path, ytext, undo }
    view.setState(EditorState.create({
      doc: ytext.toString(),
      extensions: [
        basicSetup,
        keymap.of([indentWithTab]), // Escape then Tab leaves the editor (CodeMirror's tab focus mode)
        language.of([]),
        permissions.of(permissionsFor()),
        EditorView.contentAttributes.of({ 'aria-label': `${path} (${languageName(path)})` }),
        yCollab(ytext, awareness, { undoManager: undo }),
        reviews.extension(view, path, ytext),
        debug.extension(view, path),
        extensions.editorExtension(path),
        EditorView.updateListener.of((update) => { if (update.selectionSet || update.docChanged) runs?.selectionChanged() }),
        EditorView.updateListener.of((update) => people?.editorUpdate(update)),
      ],
    }))
    awareness.setLocalStateField('file', path)
    people?.publishViewport()
    runs?.selectionChanged()
    $('current-file').textContent = path
    $('editor').hidden = false
    $('editor-empty').hidden = true
    tree.render(sortedPaths(), path)
    languageFor(path).then((ext) => {
      if (current?.path === path) view.dispatch({ effects: language.reconfigure(ext) })
    }, (error) => console.warn(`no highlighting for ${path}:`, error))
    markInteractive()
  }

  /** Open ``path`` (if it is not the open file) and show ``line``: the debugger's Jump and Follow. */
  function openFileAt(path, line) {
    if (current?.path !== path) openFile(path)
    if (current?.path !== path || !line || line > view.state.doc.lines) return
    view.dispatch({ selection: { anchor: view.state.doc.line(line).from }, scrollIntoView: true })
  }

  function closeFile() {
    current?.undo.destroy()
    current = null
    reviews.detach()
    debug.detach()
    view.setState(EditorState.create({ doc: '' }))
    awareness.setLocalStateField('file', null)
    runs?.selectionChanged()
    $('current-file').textContent = 'No file open'
    $('editor').hidden = true
    $('editor-empty').hidden = false
    $('editor-empty').textContent = files.size
      ? 'Pick a file on the left.'
      : readOnly ? 'This room has no files yet.' : 'This room has no files yet: create one on the left.'
  }

  const sortedPaths = () => [...files.keys()].sort()
  const problemFor = (path) => pathProblem(path) ?? (files.has(path) ? `${path} already exists.` : null)

  const tree = new FileTree($('file-tree'), {
    canWrite: writesFiles,
    onOpen: (path) => { people?.openedByYou(); openFile(path); view.focus() },
    onRename: (from, to) => {
      renameFile(files, from, to)
      if (current?.path === from) openFile(to)
    },
    onDelete: (path) => deleteFile(files, path),
    problemFor,
  })

  $('new-file-form').hidden = !writesFiles
  $('new-file-form').addEventListener('submit', (event) => {
    event.preventDefault()
    if (!writesFiles) return
    const path = $('new-file-path').value.trim()
    const problem = problemFor(path)
    $('file-error').textContent = problem ?? ''
    if (problem) return
    createFile(files, path)
    $('new-file-path').value = ''
    openFile(path)
    view.focus()
  })

  files.observe((event) => {
    const changes = event.changes.keys
    if (current && changes.has(current.path)) {
      const { action } = changes.get(current.path)
      if (action === 'update') {
        openFile(current.path) // someone replaced the file's text: bind to the new one
      } else if (action === 'delete') {
        // A rename is a set plus a delete in one transaction: follow the file to its new path.
        const added = [...changes].filter(([, c]) => c.action === 'add').map(([p]) => p)
        if (added.length === 1) openFile(added[0])
        else closeFile()
      }
    }
    if (!current && files.size) openFile(sortedPaths()[0])
    else if (!current) closeFile()
    $('files-empty').hidden = files.size > 0
    tree.render(sortedPaths(), current?.path ?? null)
  })

  // A room created from this browser's lobby starts with one file, once we know the server has none.
  provider.once('sync', () => {
    const key = `pairroom:created:${room}`
    if (writesFiles && sessionStorage.getItem(key) && files.size === 0) createFile(files, 'main.py')
    sessionStorage.removeItem(key)
  })

  // Before the first sync the tree shows whatever IndexedDB had (possibly nothing yet).
  const showInitial = () => {
    if (!current && files.size) openFile(sortedPaths()[0])
    else if (!current) closeFile()
    $('files-empty').hidden = files.size > 0
    tree.render(sortedPaths(), current?.path ?? null)
  }
  local.once('synced', showInitial)
  provider.once('sync', () => { showInitial(); markInteractive() })
  closeFile()

  // The shared output panel: runs go through the HTTP API, outputs come back in the document.
  const api = roomApi(room, token)
  runs = new RunPanel(doc, api, {
    role,
    current: () => {
      if (!current) return { path: null, selection: '' }
      const state = view.state
      const selection = state.selection.ranges.map((r) => state.sliceDoc(r.from, r.to)).filter(Boolean).join('\n')
      return { path: current.path, selection }
    },
  })

  // History: versions, diffs and restores of the open file.
  const history = new HistoryPanel(doc, api, { canWrite: !readOnly, current: () => current?.path ?? null })
  provider.once('sync', () => history.start())

  // People, raised hands and follow mode; then chat.
  people = new People({
    awareness, view, role, myId,
    els: {
      list: $('people-list'), count: $('people-count'), hand: $('raise-hand'), lead: $('lead'),
      banner: $('follow-banner'), bannerText: $('follow-text'), stop: $('follow-stop'),
    },
    hooks: { openFile, currentPath: () => current?.path ?? null, hasFile: (path) => files.get(path) instanceof Y.Text },
  })
  if (!claims?.name) {
    $('name-form').hidden = false
    $('my-name').value = identity.name
    $('name-form').addEventListener('submit', (event) => {
      event.preventDefault()
      const name = $('my-name').value.trim().slice(0, 40)
      if (!name) return
      saveLocalName(name)
      setUser(name)
    })
  }
  chat.observe(() => renderChat($('chat-log'), chat))
  renderChat($('chat-log'), chat)
  // Viewers cannot write the document, chat included: their lines go through the HTTP API, where the
  // server appends them for them.
  $('chat-form').hidden = false
  $('chat-form').addEventListener('submit', async (event) => {
    event.preventDefault()
    const text = $('chat-input').value.trim()
    if (!text) return
    const name = awareness.getLocalState()?.user?.name ?? identity.name
    $('chat-error').textContent = ''
    if (!readOnly) {
      appendChat(chat, text, name)
      $('chat-input').value = ''
      return
    }
    try {
      await postChat(room, token, text, name)
      $('chat-input').value = ''
    } catch (error) {
      $('chat-error').textContent = `Not sent: ${error.message}`
    }
  })

  // Time to interactive: the first moment the server's state is in and the editor shows a file.
  let interactive = false
  function markInteractive() {
    if (interactive || !provider.synced) return
    if (files.size && !current) return
    interactive = true
    performance.mark('pairroom:interactive')
  }

  mountCall({ room, token, role: () => role, awareness }) // audio/video: call.js loads on "Join call"

  // The live role: an owner's change to this user's entry in `meta.roles` (the server's copy; a
  // client's own write there is reverted) applies at once: editor, file tree, buttons and panels.
  const meta = doc.getMap('meta')
  function liveRole() {
    const roles = meta.get('roles')
    const changed = myId && roles instanceof Y.Map ? roles.get(myId) : undefined
    return ROLES.includes(changed) ? changed : tokenRole
  }
  function applyRole() {
    const next = liveRole()
    if (next === role) return
    role = next
    readOnly = role === 'viewer'
    writesFiles = !readOnly && role !== 'reviewer'
    showRole()
    view.dispatch({ effects: permissions.reconfigure(permissionsFor()) })
    $('new-file-form').hidden = !writesFiles
    tree.canWrite = writesFiles
    tree.render(sortedPaths(), current?.path ?? null)
    if (!current) closeFile() // its hint depends on the role
    reviews.setRole(role)
    debug.setRole(role)
    runs.setRole(role)
    history.setCanWrite(!readOnly)
    people.setRole(role)
  }
  meta.observeDeep(applyRole)
  applyRole()

  // For tests and debugging from the console.
  window.pairroom = {
    doc, files, chat, provider, awareness, view, status, runs, history, reviews, people, extensions, debug,
    get role() { return role },
    get readOnly() { return readOnly },
    get currentPath() { return current?.path ?? null },
    openFile,
  }
}
