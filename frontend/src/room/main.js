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
import { indentUnit } from '@codemirror/language'
import { indentWithTab } from '@codemirror/commands'
import { h, localIdentity, rememberRoom, roomPath, saveLocalName, savedName, tokenClaims } from '../shared.js'
import { FileTree, createFile, deleteFile, pathProblem, renameFile } from './files.js'
import { isPython, languageFor, languageName } from './languages.js'
import { runKeys, statementFor } from './run-keys.js'
import { People, visibleLines } from './people.js'
import { appendChat, postChat, renderChat } from './chat.js'
import { ConnectionStatus } from './connection.js'
import { roomApi } from './api.js'
import { RunPanel } from './runs.js'
import { TerminalPanel } from './terminals.js'
import { GitPanel } from './git.js'
import { HistoryPanel, historyNotice } from './history.js'
import { Reviews } from './review.js'
import { Debugger } from './debug.js'
import { startReplay } from './replay.js'
import { remoteCarets } from './remote-carets.js'
import { personColor } from './colors.js'
import { ShareDialog } from './share.js'
import { ThreadsPanel } from './threads-panel.js'
import { resizablePanels } from './resize.js'
import { foldable } from './fold.js'
import { collapsible } from './side-sections.js'
import { showRefusal } from './refused.js'
import { mountCall } from './call-button.js'
import { mountExtensions } from './extensions.js'

const $ = (id) => document.getElementById(id)
const ROLES = ['owner', 'editor', 'reviewer', 'viewer']
const STARTER_PATH = 'main.py'

/**
 * The offline app shell (public/sw.js): register the service worker, and hand it the chunks this page
 * loaded before it ran the page (the language of the open file), so a reload without the server has them.
 */
function offlineShell() {
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return
  navigator.serviceWorker.register('/sw.js').catch((error) => console.warn('offline shell unavailable:', error.message))
  const send = () => navigator.serviceWorker.ready.then((registration) => {
    const assets = performance.getEntriesByType('resource').map((e) => new URL(e.name)).filter((u) => u.origin === location.origin && u.pathname.startsWith('/assets/')).map((u) => u.pathname)
    registration.active?.postMessage({ assets })
  })
  send()
  setTimeout(send, 5000) // chunks loaded on demand (a language, the review thread view) after the first look
}
const STARTER = '# main.py: the room’s first file, shared with everyone here.\n# Ctrl+Enter runs it (or the selection); everyone sees the output.\n'
const ROLE_WORDS = {
  owner: 'an owner: you edit, run code and give people their roles',
  editor: 'an editor: you edit files and run code',
  reviewer: 'a reviewer: you read the code and comment on it',
  viewer: 'a viewer: you follow along read-only and chat',
}

const match = location.pathname.match(/^\/r\/([^/]+)(\/replay)?\/?$/)
const room = match ? decodeURIComponent(match[1]) : ''
const token = new URLSearchParams(location.search).get('token')

document.title = `${room} · pairroom`
$('room-name').textContent = room

if (match?.[2]) {
  // The replay page: recorded sessions played back read-only (replay.js).
  document.title = `${room} · replay · pairroom`
  $('layout').hidden = true
  $('share-button').hidden = true
  $('connection').hidden = true
  $('replay').hidden = false
  $('replay-room-link').href = roomPath(room, token)
  startReplay(room, token)
} else if (!tokenClaims(token)?.name && !savedName()) {
  askName(() => startRoom()) // a room link or a link for a role: the others should see a real name
} else {
  startRoom()
}

/** The page that asks for your name before the room opens (kept in this browser for next time). */
function askName(then) {
  $('layout').hidden = true
  $('share-button').hidden = true
  $('connection').hidden = true
  $('gate').hidden = false
  $('gate-title').textContent = `Join ${room}`
  const input = h('input', { id: 'gate-name', maxlength: 40, autocomplete: 'nickname', required: true, placeholder: 'Ada' })
  const form = h('form', { class: 'gate-form' },
    ROLE_WORDS[tokenClaims(token)?.role] ? h('p', {}, `This link lets you in as ${ROLE_WORDS[tokenClaims(token).role]}.`) : null,
    h('label', { for: 'gate-name' }, 'Your name'),
    h('div', { class: 'row' }, input, h('button', { type: 'submit', class: 'primary' }, 'Join room')),
    h('p', { class: 'hint' }, 'The others in the room see it. This browser keeps it for next time; you can change it in the room.'))
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    const name = input.value.trim().slice(0, 40)
    if (!name) return
    saveLocalName(name)
    $('gate').hidden = true
    $('gate-body').replaceChildren()
    $('layout').hidden = false
    $('share-button').hidden = false
    $('connection').hidden = false
    then()
  })
  $('gate-body').replaceChildren(form)
  input.focus()
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
  $('replay-link').href = roomPath(room, token).replace(/^(\/r\/[^?]+)/, '$1/replay')
  $('replay-link').hidden = false

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
  // The server gives each person a colour of their own and stamps it into this state (a newer clock
  // makes it ours); until then, the browser's own guess.
  const setUser = (name) => {
    const color = awareness.getLocalState()?.user?.color ?? identity.color
    awareness.setLocalStateField('user', { ...awareness.getLocalState()?.user, name, color, colorLight: color + '33' })
  }
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
  // Turned away for good (44xx): a page saying why and what to do instead of a room that looks editable.
  provider.on('closed', ({ code, reason }) => {
    if (code === 4404) local.clearData() // deleted: the copy here must not bring the room back on a reload
    showRefusal({
      gate: $('gate'), title: $('gate-title'), body: $('gate-body'),
      hide: [$('layout'), $('share-button'), $('connection'), $('role-badge'), $('replay-link')],
    }, code, reason, { hasToken: Boolean(token) })
  })
  const status = new ConnectionStatus(provider, doc, [local], ({ state, label }) => {
    $('connection').dataset.state = state
    $('connection-text').textContent = label
  })
  offlineShell()
  new ShareDialog({
    dialog: $('share'), body: $('share-body'), open: $('share-button'), room, token, api: roomApi(room, token),
    role: () => role,
    owners: () => [...awareness.getStates().values()].filter((s) => s?.user?.role === 'owner').map((s) => String(s.user.name)),
  })

  // The editor: one view, a new state per open file, bound to that file's Y.Text.
  const language = new Compartment()
  const permissions = new Compartment() // read-only or not: follows the live role
  const permissionsFor = () => [EditorState.readOnly.of(!writesFiles), EditorView.editable.of(!readOnly)]
  // On a phone-sized window long lines wrap: a review thread under a line is as wide as the text, and
  // would otherwise run off the screen with it.
  const wrapping = new Compartment()
  const narrow = matchMedia('(max-width: 820px)')
  const wrapFor = () => (narrow.matches ? EditorView.lineWrapping : [])
  narrow.addEventListener('change', () => view.dispatch({ effects: wrapping.reconfigure(wrapFor()) }))
  const view = new EditorView({ parent: $('editor') })
  let current = null // {path, ytext, undo}
  let runs = null // the output panel, made below
  let people = null // the people list and follow mode, made below
  // Where you were: a reload opens the file you had open, scrolled where it was (this browser only).
  const placeKey = `pairroom:place:${room}`
  const savedPlace = (() => {
    try { return JSON.parse(localStorage.getItem(placeKey) || 'null') } catch { return null }
  })()
  let placeTimer = null
  const savePlace = () => {
    clearTimeout(placeTimer)
    placeTimer = setTimeout(() => {
      if (!current) return
      try { localStorage.setItem(placeKey, JSON.stringify({ path: current.path, line: visibleLines(view).from })) } catch { /* storage off */ }
    }, 250)
  }
  view.scrollDOM.addEventListener('scroll', savePlace, { passive: true })
  // extensions' panels and gutter marks (extensions.js); made before any file opens
  const extensions = mountExtensions({
    room, token, doc, view, role: () => role, name: () => awareness.getLocalState()?.user?.name ?? identity.name,
    currentPath: () => current?.path ?? null,
    ready: new Promise((resolve) => provider.once('sync', resolve)),
  })
  const reviews = new Reviews(doc, {
    api: roomApi(room, token), role, button: $('comment-line'),
    name: () => awareness.getLocalState()?.user?.name, colorOf: (who) => personColor(awareness, who),
  })
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
        runKeys({ run: (kind) => runs?.run(kind), runCode: (code) => runs?.runCode(code) }, () => Boolean(runs?.canRunHere), path),
        keymap.of([indentWithTab]), // Escape then Tab leaves the editor (CodeMirror's tab focus mode)
        indentUnit.of(isPython(path) ? '    ' : '  '), // PEP 8 for Python
        language.of([]),
        permissions.of(permissionsFor()),
        wrapping.of(wrapFor()),
        EditorView.contentAttributes.of({ 'aria-label': `${path} (${languageName(path)})` }),
        yCollab(ytext, null, { undoManager: undo }), // sync and shared undo; carets below
        remoteCarets(ytext, awareness),
        reviews.extension(view, path, ytext),
        debug.extension(view, path),
        extensions.editorExtension(path),
        EditorView.updateListener.of((update) => { if (update.selectionSet || update.docChanged) runs?.selectionChanged() }),
        EditorView.updateListener.of((update) => people?.editorUpdate(update)),
      ],
    }))
    awareness.setLocalStateField('file', path)
    savePlace()
    people?.publishViewport()
    runs?.selectionChanged()
    $('current-file').textContent = path
    if (!tabs.includes(path)) tabs.push(path)
    renderTabs()
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

  // Tabs: the files opened in this page, in the order opened; shown once there are two.
  let tabs = []
  function renderTabs() {
    tabs = tabs.filter((p) => files.get(p) instanceof Y.Text)
    $('tabs').hidden = tabs.length < 2
    $('tabs').replaceChildren(...tabs.map((p) => {
      const active = p === current?.path
      return h('span', { class: `tab${active ? ' active' : ''}`, 'data-path': p },
        h('button', {
          type: 'button', role: 'tab', class: 'tab-open', 'aria-selected': String(active), title: p,
          onclick: () => { if (!active) { people?.openedByYou(); openFile(p) } },
        }, p.slice(p.lastIndexOf('/') + 1)),
        h('button', { type: 'button', class: 'tab-close', 'aria-label': `Close the tab of ${p}`, onclick: () => closeTab(p) }, '×'))
    }))
  }
  function closeTab(path) {
    const i = tabs.indexOf(path)
    if (i < 0) return
    tabs.splice(i, 1)
    if (current?.path === path) {
      const next = tabs[Math.min(i, tabs.length - 1)]
      if (next) openFile(next)
      else closeFile()
    }
    renderTabs()
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
    const starter = files.get(path)
    if (path === STARTER_PATH && starter instanceof Y.Text && starter.toString() === STARTER) {
      starter.delete(0, starter.length) // the untouched starter: "create" it empty, in place
      $('new-file-path').value = ''
      $('file-error').textContent = ''
      openFile(path)
      view.focus()
      return
    }
    const problem = problemFor(path)
    $('file-error').textContent = problem ?? ''
    if (problem) return
    doc.transact(() => {
      // The untouched starter steps aside for the room's first real file: everyone who had it open
      // follows to the new file (a delete and an add in one transaction reads as a move).
      if (starter === undefined && files.get(STARTER_PATH)?.toString() === STARTER && files.size === 1) files.delete(STARTER_PATH)
      createFile(files, path)
    })
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
    if (!current && files.size) openFirst()
    else if (!current) closeFile()
    $('files-empty').hidden = files.size > 0
    tree.render(sortedPaths(), current?.path ?? null)
    renderTabs()
  })

  // An empty room starts with a file, once we know the server has none, so the editor has something to
  // show (a room whose files were all deleted later stays empty: it has a history).
  provider.once('sync', () => {
    sessionStorage.removeItem(`pairroom:created:${room}`)
    if (writesFiles && files.size === 0 && doc.getMap('runs').size === 0 && doc.getArray('chat').length === 0) {
      createFile(files, STARTER_PATH, STARTER)
    }
  })

  // Before the first sync the tree shows whatever IndexedDB had (possibly nothing yet).
  let placeRestored = false
  const restorePlace = () => {
    if (placeRestored || !savedPlace || !(files.get(savedPlace.path) instanceof Y.Text)) return false
    placeRestored = true
    openFile(savedPlace.path)
    const line = Math.min(Math.max(1, Number(savedPlace.line) || 1), view.state.doc.lines)
    requestAnimationFrame(() => view.dispatch({ effects: EditorView.scrollIntoView(view.state.doc.line(line).from, { y: 'start' }) }))
    return true
  }

  /** Nothing open yet: the file you had open before a reload, else the first one. */
  const openFirst = () => restorePlace() || openFile(sortedPaths()[0])

  const showInitial = () => {
    if (!current && files.size) openFirst()
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

  const terminals = new TerminalPanel({ room, token, role, api, ready: provider.synced ? Promise.resolve() : new Promise((resolve) => provider.once('sync', resolve)) }) // shared terminals (terminals.js)
  const git = new GitPanel({ doc, api, before: $('history'), view, current: () => current?.path ?? null, awareness }) // source control (git.js)

  // History: versions, diffs and restores of the open file.
  const history = new HistoryPanel(doc, api, {
    canWrite: !readOnly, current: () => current?.path ?? null,
    announce: (event) => awareness.setLocalStateField('history', { ...event, at: Date.now() }),
  })
  // What others did to the history: their `history` presence event reloads the list here, and a
  // restore shows a notice above the editor (the restored text itself arrives as an ordinary edit).
  const historySeen = new Map() // client id -> the `at` of its last event acted on
  awareness.on('change', ({ added, updated }) => {
    for (const id of [...added, ...updated]) {
      const state = awareness.getStates().get(id)
      const event = state?.history
      if (id === awareness.clientID || !event || typeof event.at !== 'number' || historySeen.get(id) === event.at) continue
      const first = !historySeen.has(id)
      historySeen.set(id, event.at)
      if (first && Date.now() - event.at > 10_000) continue // an old event, from before this page came
      history.call(() => history.load())
      if (event.kind === 'restored' && typeof event.path === 'string') {
        $('room-notice-text').textContent = historyNotice(String(state.user?.name ?? 'Someone'), event)
        $('room-notice').hidden = false
      }
    }
  })
  $('room-notice-close').addEventListener('click', () => { $('room-notice').hidden = true })

  // Every review thread of the room, outdated ones included: picking one opens its file and thread.
  const threads = new ThreadsPanel(doc, {
    room, list: $('thread-list'), count: $('threads-count'), empty: $('threads-empty'),
    colorOf: (who) => personColor(awareness, who),
    show: (path, id, line) => {
      people?.openedByYou()
      if (current?.path !== path) openFile(path)
      reviews.toggle([id], true)
      const at = view.state.doc.line(Math.min(line, view.state.doc.lines)).from
      view.dispatch({ effects: EditorView.scrollIntoView(at, { y: 'center' }) })
    },
  })
  provider.once('sync', () => history.start())

  // People, raised hands and follow mode; then chat.
  people = new People({
    awareness, view, role, myId,
    els: {
      list: $('people-list'), count: $('people-count'), hand: $('raise-hand'), lead: $('lead'),
      banner: $('follow-banner'), bannerText: $('follow-text'), stop: $('follow-stop'),
    },
    hooks: { openFile, currentPath: () => current?.path ?? null, hasFile: (path) => files.get(path) instanceof Y.Text },
    changeRole: token ? (user, newRole) => api('PUT', `roles/${encodeURIComponent(user)}`, { role: newRole }) : null,
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
  const colorOf = (who) => personColor(awareness, who)
  // The side column's sections fold to their headings (side-sections.js); the chat, folded, says
  // how many messages came since.
  let chatSeen = chat.length
  const chatFold = collapsible('chat', $('chat'), $('chat-title'), $('chat-title'), {
    label: 'the chat',
    summary: () => (chat.length > chatSeen ? `${chat.length - chatSeen} new` : ''),
  })
  collapsible('people', $('people'), $('people-title'), $('people-title'), { label: 'the people list' })
  collapsible('threads', $('threads'), $('threads-title'), $('threads-title'), { label: 'the review threads' })
  $('chat-fold').addEventListener('click', () => { chatSeen = chat.length; chatFold.refresh() })
  const showChat = () => {
    renderChat($('chat-log'), chat, colorOf)
    $('chat-empty').hidden = chat.length > 0
    if (!chatFold.folded) chatSeen = chat.length
    chatFold.refresh()
  }
  chat.observe(showChat)
  awareness.on('change', ({ added, removed }) => { if (added.length || removed.length) showChat() })
  showChat()
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

  // Resizable panels, the same sizes in every room of this browser.
  const layout = $('layout')
  const box = (el) => el.getBoundingClientRect()
  resizablePanels([
    {
      name: 'files', handle: $('resize-files'), label: 'Resize the file list', axis: 'x', min: 140,
      max: () => box(layout).width * 0.4, current: () => box($('files')).width,
      size: (e) => e.clientX - box(layout).left,
      apply: (px) => layout.style.setProperty('--files-w', `${px}px`),
    },
    {
      name: 'side', handle: $('resize-side'), label: 'Resize the people and chat column', axis: 'x', min: 200, inverted: true,
      max: () => box(layout).width * 0.45, current: () => box($('side')).width,
      size: (e) => box(layout).right - e.clientX,
      apply: (px) => layout.style.setProperty('--side-w', `${px}px`),
    },
    {
      name: 'runs', handle: $('resize-runs'), label: 'Resize the output panel', axis: 'y', min: 80,
      max: () => box($('center')).height - 120, current: () => box($('runs')).height,
      size: (e) => box($('runs')).bottom - e.clientY, // the output's bottom edge stays where it is
      apply: (px) => { $('runs').classList.add('sized'); $('runs').style.setProperty('--runs-h', `${px}px`) },
    },
  ])

  // The output and the terminal fold to their heads (folded at first), and open when a run starts
  // or a terminal appears; the Debug panel folds itself (debug.js).
  const runsMap = doc.getMap('runs')
  const outputFold = foldable('runs', $('runs'), $('runs-title'), {
    label: 'Output',
    summary: () => (runsMap.size ? `${runsMap.size} run${runsMap.size === 1 ? '' : 's'}` : ''),
  })
  runsMap.observe((event) => {
    const started = [...event.changes.keys].some(([id, change]) =>
      change.action === 'add' && ['queued', 'running'].includes(runsMap.get(id)?.get?.('status')))
    if (started && provider.synced) outputFold.open()
    else outputFold.refresh()
  })
  for (const type of ['pointerdown', 'keydown']) $('resize-runs').addEventListener(type, () => outputFold.open(true))
  const terminalFold = foldable('terminals', $('terminals'), $('terminals-title'), { label: 'Terminal' })
  $('term-new').addEventListener('click', () => terminalFold.open())
  new MutationObserver(() => { if ($('term-tabs').children.length) terminalFold.open() })
    .observe($('term-tabs'), { childList: true })

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
    terminals: terminals.hook,
    git: git.hook,
    doc, files, chat, provider, awareness, view, status, runs, history, reviews, people, threads, extensions, debug,
    get role() { return role },
    get readOnly() { return readOnly },
    get currentPath() { return current?.path ?? null },
    openFile,
    /** The lines Shift+Enter would run around ``line`` of the open file: {from, to} or null. */
    statementAt: (line) => (current ? statementFor(current.path, view.state.doc, line) : null),
  }
}
