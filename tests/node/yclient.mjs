// A real npm Yjs client (Y.Doc + y-websocket WebsocketProvider) controlled over JSON lines.
//
//   node yclient.mjs --url ws://127.0.0.1:PORT/yjs --room NAME --version v1|v2|v3
//                    [--params k=v ...] [--no-connect] [--max-backoff MS]
//
// The provider connects to `${url}/${room}`, plus `?k=v&...` when params are given.
//
// stdin carries one request per line:   {"id": 1, "cmd": "insert", "name": "text", "index": 0, "text": "hi"}
// stdout carries one answer per line:   {"id": 1, "result": ...}   or   {"id": 1, "error": "message"}
// and unsolicited events, tagged with "event" and never with "id":
//   {"event": "ready", "clientId": 123, "version": "v1", "package": "1.5.4"}   once, before any answer
//   {"event": "status", "status": "connecting" | "connected" | "disconnected"}
//   {"event": "synced", "synced": true | false}
//   {"event": "ws-close", "code": 1000, "reason": "", "wasClean": true, "local": false}
//   {"event": "connection-error", "message": "..."}
//   {"event": "closed", "code": 4403, "reason": "..."}   (v3 only: the provider gave up reconnecting)
//   {"event": "uncaught", "message": "..."}               (also written to stderr)
//
// Nothing else is written to stdout: console.log is redirected to stderr so that library logging
// cannot corrupt the line protocol. Closing stdin has the same effect as the "close" command.

import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'

const VERSIONS = ['v1', 'v2', 'v3']
// How long "close" waits for the closing handshake before exiting anyway.
const CLOSE_HANDSHAKE_MS = 2000

console.log = (...args) => console.error(...args)

const writeLine = (obj) => {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const parseArgs = (argv) => {
  const opts = { params: {}, connect: true, maxBackoff: null }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} expects a value`)
      return argv[++i]
    }
    switch (arg) {
      case '--url': opts.url = value(); break
      case '--room': opts.room = value(); break
      case '--version': opts.version = value(); break
      case '--no-connect': opts.connect = false; break
      case '--max-backoff': opts.maxBackoff = Number(value()); break
      case '--params':
        while (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
          const pair = argv[++i]
          const eq = pair.indexOf('=')
          if (eq < 1) throw new Error(`--params expects k=v, got ${JSON.stringify(pair)}`)
          opts.params[pair.slice(0, eq)] = pair.slice(eq + 1)
        }
        break
      default: throw new Error(`unknown argument ${JSON.stringify(arg)}`)
    }
  }
  if (!opts.url) throw new Error('--url is required')
  if (!opts.room) throw new Error('--room is required')
  if (!VERSIONS.includes(opts.version)) {
    throw new Error(`--version must be one of ${VERSIONS.join(', ')}, got ${JSON.stringify(opts.version)}`)
  }
  return opts
}

const opts = parseArgs(process.argv.slice(2))
const packageName = `y-websocket-${opts.version}`
// All three majors export the same `WebsocketProvider` name and differ in behaviour (see the module
// docstring of tests/support/yjs_node.py). They share the single top-level `yjs` install.
const { WebsocketProvider } = await import(packageName)
const packageVersion = createRequire(import.meta.url)(`${packageName}/package.json`).version

const doc = new Y.Doc()
const providerOptions = {
  connect: opts.connect,
  params: opts.params,
  WebSocketPolyfill: WebSocket,
  // Each process holds one provider; the clients must meet only through the server.
  disableBc: true
}
if (opts.maxBackoff !== null) providerOptions.maxBackoffTime = opts.maxBackoff

// Close events of the raw sockets. The provider's own 'connection-close' event carries `null` for
// locally initiated closes in v2/v3 (and v3 detaches `onclose`), so we listen on each socket with
// addEventListener, which the provider never removes.
const closeState = { lastCloseCode: null, lastCloseReason: null, closeCount: 0, terminalClose: null }
const watchedSockets = new WeakSet()
let localCloseRequested = false

const watchSocket = (ws) => {
  if (ws === null || watchedSockets.has(ws)) return
  watchedSockets.add(ws)
  ws.addEventListener('close', (event) => {
    closeState.lastCloseCode = event.code
    closeState.lastCloseReason = event.reason
    closeState.closeCount++
    writeLine({
      event: 'ws-close',
      code: event.code,
      reason: event.reason,
      wasClean: event.wasClean,
      local: localCloseRequested
    })
  })
}

const provider = new WebsocketProvider(opts.url, opts.room, doc, providerOptions)

// 'status' {connecting} is emitted by every major right after `provider.ws` is assigned.
provider.on('status', ({ status }) => {
  watchSocket(provider.ws)
  writeLine({ event: 'status', status })
})
watchSocket(provider.ws)
provider.on('sync', (synced) => writeLine({ event: 'synced', synced }))
provider.on('connection-error', (event) => {
  writeLine({ event: 'connection-error', message: String(event?.message ?? event?.error ?? event?.type ?? event) })
})
// v3 only: a close code in 4400-4499 makes the provider stop reconnecting.
provider.on('closed', (event) => {
  closeState.terminalClose = { code: event.code, reason: event.reason }
  writeLine({ event: 'closed', code: event.code, reason: event.reason })
})

const reportUncaught = (kind) => (err) => {
  const message = err instanceof Error ? (err.stack ?? err.message) : String(err)
  console.error(`yclient ${opts.version} ${kind}: ${message}`)
  writeLine({ event: 'uncaught', message: `${kind}: ${err instanceof Error ? err.message : String(err)}` })
}
process.on('uncaughtException', reportUncaught('uncaughtException'))
process.on('unhandledRejection', reportUncaught('unhandledRejection'))

const b64 = (u8) => Buffer.from(u8).toString('base64')
const fromB64 = (s) => new Uint8Array(Buffer.from(requireString(s, 'update'), 'base64'))

function requireString (v, field) {
  if (typeof v !== 'string') throw new Error(`${field} must be a string, got ${JSON.stringify(v)}`)
  return v
}
const requireInt = (v, field) => {
  if (!Number.isInteger(v) || v < 0) throw new Error(`${field} must be a non-negative integer, got ${JSON.stringify(v)}`)
  return v
}

const waitSynced = (timeoutMs) => new Promise((resolve, reject) => {
  if (provider.synced) return resolve(true)
  const onSync = (synced) => {
    if (!synced) return
    clearTimeout(timer)
    provider.off('sync', onSync)
    resolve(true)
  }
  const timer = setTimeout(() => {
    provider.off('sync', onSync)
    reject(new Error(`not synced after ${timeoutMs} ms (wsconnected=${provider.wsconnected})`))
  }, timeoutMs)
  provider.on('sync', onSync)
})

const waitSocketClosed = (ws, timeoutMs) => new Promise((resolve) => {
  if (ws === null || ws.readyState === WebSocket.CLOSED) return resolve()
  const timer = setTimeout(resolve, timeoutMs)
  ws.addEventListener('close', () => { clearTimeout(timer); resolve() })
})

const status = () => {
  const ws = provider.ws
  return {
    connected: ws !== null && ws.readyState === WebSocket.OPEN,
    wsconnected: provider.wsconnected,
    wsconnecting: provider.wsconnecting,
    shouldConnect: provider.shouldConnect,
    synced: provider.synced,
    url: provider.url,
    ...closeState
  }
}

const setParams = (params) => {
  if (params === null || typeof params !== 'object') throw new Error('params must be an object')
  // v2/v3 build `url` from `params` on every connect; v1 fixes `url` in the constructor.
  if (opts.version === 'v1') {
    // Same encoding as lib0/url encodeQueryParams, which v2/v3 use.
    const query = Object.entries(params)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
      .join('&')
    provider.url = `${provider.url.split('?')[0]}${query ? '?' + query : ''}`
  } else {
    provider.params = params
  }
  return provider.url
}

let shutdownPromise = null
let closeCommandSeen = false
// Idempotent: the "close" command and the end of stdin may race.
const shutdown = () => {
  shutdownPromise ??= (async () => {
    localCloseRequested = true
    const ws = provider.ws
    provider.destroy()
    doc.destroy()
    await waitSocketClosed(ws, CLOSE_HANDSHAKE_MS)
  })()
  return shutdownPromise
}

const commands = {
  waitSynced: ({ timeoutMs = 10000 }) => waitSynced(timeoutMs),
  insert: ({ name, index, text }) => {
    doc.getText(requireString(name, 'name')).insert(requireInt(index, 'index'), requireString(text, 'text'))
    return null
  },
  delete: ({ name, index, length }) => {
    doc.getText(requireString(name, 'name')).delete(requireInt(index, 'index'), requireInt(length, 'length'))
    return null
  },
  text: ({ name }) => doc.getText(requireString(name, 'name')).toString(),
  mapSet: ({ name, key, value }) => {
    doc.getMap(requireString(name, 'name')).set(requireString(key, 'key'), value)
    return null
  },
  mapGet: ({ name, key }) => doc.getMap(requireString(name, 'name')).get(requireString(key, 'key')) ?? null,
  map: ({ name }) => doc.getMap(requireString(name, 'name')).toJSON(),
  setAwareness: ({ state }) => { provider.awareness.setLocalState(state ?? null); return null },
  setAwarenessField: ({ field, value }) => {
    provider.awareness.setLocalStateField(requireString(field, 'field'), value)
    return null
  },
  awareness: () => Array.from(provider.awareness.getStates().entries())
    .map(([clientId, state]) => ({ clientId, state }))
    .sort((a, b) => a.clientId - b.clientId),
  clientId: () => doc.clientID,
  stateVector: () => b64(Y.encodeStateVector(doc)),
  encodeState: () => b64(Y.encodeStateAsUpdate(doc)),
  applyUpdate: ({ update }) => { Y.applyUpdate(doc, fromB64(update), 'yclient'); return null },
  disconnect: () => { localCloseRequested = true; provider.disconnect(); return null },
  connect: () => { localCloseRequested = false; provider.connect(); return null },
  setParams: ({ params }) => setParams(params),
  status: () => status(),
  bigInsert: ({ name, size, index = 0 }) => {
    const text = doc.getText(requireString(name, 'name'))
    // One transaction, hence one update message of at least `size` bytes.
    doc.transact(() => text.insert(requireInt(index, 'index'), 'x'.repeat(requireInt(size, 'size'))))
    return null
  },
  close: async () => { await shutdown(); return null }
}

const handleLine = async (line) => {
  if (line.trim() === '') return
  let request
  try {
    request = JSON.parse(line)
  } catch (err) {
    writeLine({ id: null, error: `invalid JSON request: ${err.message}` })
    return
  }
  const { id, cmd, ...args } = request
  if (cmd === 'close') closeCommandSeen = true
  const handler = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined
  if (handler === undefined) {
    writeLine({ id, error: `unknown command ${JSON.stringify(cmd)}` })
    return
  }
  try {
    const result = await handler(args)
    writeLine({ id, result: result === undefined ? null : result })
  } catch (err) {
    writeLine({ id, error: err instanceof Error ? err.message : String(err) })
  }
  if (cmd === 'close') process.stdout.write('', () => process.exit(0))
}

writeLine({ event: 'ready', clientId: doc.clientID, version: opts.version, package: packageVersion })

const input = createInterface({ input: process.stdin, crlfDelay: Infinity })
input.on('line', (line) => { handleLine(line) })
// The controlling test went away: leave the room cleanly instead of lingering.
input.on('close', async () => {
  // A pending "close" command answers and exits by itself.
  if (closeCommandSeen) return
  await shutdown()
  process.exit(0)
})
