// A real npm Yjs client for the review tests: files, review threads and relative positions, the way
// the browser handles them (y-codemirror.next anchors are `Y.encodeRelativePosition` bytes too).
//
//   node review_client.mjs --url ws://127.0.0.1:PORT/yjs --room NAME [--params k=v ...]
//
// Threads are named by a `thread` argument (`id` is the request's). Same JSON-lines protocol as yclient.mjs (so tests/support/yjs_node.py's NodeYClient drives it):
// one request per line {"id", "cmd", ...args}, one answer per line {"id", "result"} or {"id", "error"},
// events tagged with "event" ("ready" first). Indices are UTF-16 units, as in every Yjs client.

import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket-v2'

console.log = (...args) => console.error(...args)
const writeLine = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const opts = { params: {} }
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--url') opts.url = argv[++i]
  else if (argv[i] === '--room') opts.room = argv[++i]
  else if (argv[i] === '--params') {
    while (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
      const [k, ...v] = argv[++i].split('=')
      opts.params[k] = v.join('=')
    }
  } else throw new Error(`unknown argument ${argv[i]}`)
}

const doc = new Y.Doc()
const provider = new WebsocketProvider(opts.url, opts.room, doc, {
  params: opts.params, WebSocketPolyfill: WebSocket, disableBc: true
})
provider.on('sync', (synced) => writeLine({ event: 'synced', synced }))
process.on('uncaughtException', (err) => writeLine({ event: 'uncaught', message: String(err?.message ?? err) }))
process.on('unhandledRejection', (err) => writeLine({ event: 'uncaught', message: String(err?.message ?? err) }))

const files = doc.getMap('files')
const reviews = doc.getMap('reviews')
const b64 = (u8) => Buffer.from(u8).toString('base64')

const fileText = (path) => {
  const text = files.get(path)
  if (!(text instanceof Y.Text)) throw new Error(`no file ${path}`)
  return text
}

const thread = (id) => {
  const t = reviews.get(id)
  if (!(t instanceof Y.Map)) throw new Error(`no thread ${id}`)
  return t
}

const waitSynced = (timeoutMs) => new Promise((resolve, reject) => {
  if (provider.synced) return resolve(true)
  const timer = setTimeout(() => reject(new Error('not synced')), timeoutMs)
  provider.on('sync', (synced) => { if (synced) { clearTimeout(timer); resolve(true) } })
})

const commands = {
  waitSynced: ({ timeoutMs = 10000 }) => waitSynced(timeoutMs),
  fileCreate: ({ path, content }) => { files.set(path, new Y.Text(content)); return null },
  fileInsert: ({ path, index, text }) => { fileText(path).insert(index, text); return null },
  fileDelete: ({ path, index, length }) => { fileText(path).delete(index, length); return null },
  fileText: ({ path }) => files.has(path) ? fileText(path).toString() : null,
  // Where a thread's anchors point in this client's copy, decoded as the browser would.
  resolve: ({ thread: id }) => {
    const t = thread(id)
    const text = files.get(t.get('path'))
    const at = (key) => {
      const abs = Y.createAbsolutePositionFromRelativePosition(Y.decodeRelativePosition(t.get(key)), doc)
      return abs === null || abs.type !== text ? null : abs.index
    }
    return { start: at('start'), end: at('end') }
  },
  // A thread written straight into the document, as the browser does; message fields are forged
  // on purpose (the server must stamp them).
  createThread: ({ thread: id, path, start, end, text, forge }) => {
    const ytext = fileText(path)
    const rel = (index, assoc) => Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(ytext, index, assoc))
    doc.transact(() => {
      const messages = new Y.Array()
      messages.push([{ id: `m-${id}`, text, ...(forge ?? {}) }])
      reviews.set(id, new Y.Map([
        ['path', path], ['start', rel(start, 0)], ['end', rel(end, -1)], ['status', 'open'],
        ['messages', messages], ['suggestion', null], ['createdAt', 0], ['by', forge?.author ?? null]
      ]))
    })
    return null
  },
  addMessage: ({ thread: id, text, forge }) => {
    thread(id).get('messages').push([{ id: `m-${Date.now()}`, text, ...(forge ?? {}) }])
    return null
  },
  threadJson: ({ thread: id }) => {
    const t = thread(id).toJSON()
    return { ...t, start: b64(t.start), end: b64(t.end) }
  },
  disconnect: () => { provider.disconnect(); return null },
  connect: () => { provider.connect(); return null },
  close: async () => { provider.destroy(); doc.destroy(); return null }
}

writeLine({ event: 'ready', clientId: doc.clientID, version: 'v2', package: 'review' })

const input = createInterface({ input: process.stdin, crlfDelay: Infinity })
input.on('line', async (line) => {
  if (!line.trim()) return
  const { id, cmd, ...args } = JSON.parse(line)
  const handler = Object.hasOwn(commands, cmd) ? commands[cmd] : undefined
  try {
    if (!handler) throw new Error(`unknown command ${cmd}`)
    writeLine({ id, result: (await handler(args)) ?? null })
  } catch (err) {
    writeLine({ id, error: err instanceof Error ? err.message : String(err) })
  }
  if (cmd === 'close') process.stdout.write('', () => process.exit(0))
})
input.on('close', () => { provider.destroy(); process.exit(0) })
