#!/usr/bin/env node
// A load generator speaking the y-websocket protocol (sync + awareness) directly over `ws`, and
// Hocuspocus' framing of the same messages for that server (`protocol: 'hocuspocus'`: every
// message is prefixed with the document name as a varstring, an auth message with an empty token
// goes first, the server's per-update SyncStatus acknowledgements are read and dropped, and its
// connection-level Ping is answered with a Pong).
//
// Usage:
//   node loadgen.mjs '<scenario JSON>'
//   node loadgen.mjs scenario.json
//   echo '<scenario JSON>' | node loadgen.mjs
//
// mode 'load' (default): the coordinator (this process without --worker) forks `workers` child
// processes; each owns a share of the clients (Y.Doc + Awareness + one websocket). Every edit
// appends a stamp "<writer>:<seq>:<hrtime-ns>;" to the Y.Text `text`. A receiving client reads the
// stamps of each update it receives and records latency = now - stamp: by default straight out of
// the update's bytes at receipt (receiverApply 'deferred': the update is applied to its Y.Doc later,
// when the settle phase asks for digests, so the generator's one core is not spent on
// Y.applyUpdate while it measures), or from the Y.Text delta after applying it (receiverApply
// 'eager'). All processes on one machine read the same CLOCK_MONOTONIC through
// process.hrtime.bigint(), so stamps written in one process can be compared with the clock of
// another.
//
// Phases: connect + sync every client -> start at a common t0 -> warmup -> measured window ->
// settle (wait until every room's clients hold identical text, bounded) -> report -> close.
// Only edits sent inside the measured window count for latency and delivery.
//
// mode 'joiner': one seeder client replays an editing trace (josephg/editing-traces sequential
// format, `tracePath`) into one room in chunks of `traceChunkTxns` transactions, stays connected,
// and then `joiners` new clients join one after another; each is timed from opening its socket
// until its text equals the trace's end content (a first, unmeasured joiner checks the seed).
//
// Progress events go to stderr as JSON lines ({"event": "..."}); the orchestrator samples the
// server on "measure_start", "measure_end" (and "connected", "seed_start", "seeded"). The single
// result goes to stdout as JSON.

import { fork } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { gunzipSync } from 'node:zlib'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'

import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'

const MESSAGE_SYNC = 0
const MESSAGE_AWARENESS = 1
const MESSAGE_AUTH = 2
const MESSAGE_QUERY_AWARENESS = 3
// Hocuspocus' own message types (every message is prefixed with the document name as a varstring;
// a connection-level Ping is the single byte 9 with no prefix).
const HP_SYNC_REPLY = 4
const HP_STATELESS = 5
const HP_CLOSE = 7
const HP_SYNC_STATUS = 8
const HP_PING = 9
const HP_PONG = 10
const HP_AUTH_TOKEN = 0
const HP_AUTH_PERMISSION_DENIED = 1
const HP_AUTH_AUTHENTICATED = 2
const HOCUSPOCUS_PROVIDER_VERSION = '4.7.0' // the provider version whose framing this speaks

const REMOTE = Symbol('remote')
const STAMP_RE = /([A-Za-z0-9]+):(\d+):(\d+);/g
const NS_PER_MS = 1e6

const DEFAULTS = {
  url: null, // e.g. ws://127.0.0.1:8000/yjs ; a client connects to `${url}/${room}`
  urls: null, // several URL bases (nodes of a cluster): client i of a room uses urls[i % urls.length]
  writerToken: null, // ?token= for writers (a server with a secret), and for readers below
  readerToken: null,
  roomPrefix: 'bench',
  rooms: 1,
  clientsPerRoom: 2,
  writers: 'all', // 'all' | number (the first N clients of each room) | [client indexes]
  editsPerSec: 10, // per writer
  editPadding: 0, // extra characters appended to each stamp (bigger edits)
  warmup: 3, // s
  duration: 30, // s, measured
  settle: 5, // s, upper bound of the quiet period spent waiting for convergence
  presence: false, // awareness update with a cursor on every edit
  awareness: true, // every client publishes a user entry on connect, like an editor does
  workers: 0, // 0: min(total clients, 4)
  connectConcurrency: 32, // per worker
  connectTimeout: 20, // s, for all clients to connect and sync
  startDelayMs: 300, // t0 = now + this, once every worker is ready
  textName: 'text',
  protocol: 'y-websocket', // 'y-websocket' | 'hocuspocus' (document-name prefix + auth message first)
  // Awareness renewals: every client re-publishes its awareness state every this many seconds (the
  // y-protocols default is 15 s), with a random phase so renewals spread like real connect times;
  // 0 turns renewals off (the 'no presence' variants).
  awarenessRenewS: 15,
  // 'deferred': a received update is scanned for stamps (latency is taken at that moment) and kept;
  // the kept updates are applied to the client's Y.Doc when it is asked for its digest (settle),
  // so the generator does not spend its core on Y.applyUpdate while it measures; 'eager': applied
  // on receipt and stamps read from the Y.Text delta (the latency then includes the apply).
  receiverApply: 'deferred',
  mode: 'load', // 'load' (rooms of clients editing) | 'joiner' (a new client on a large document)
  // joiner mode: the editing trace replayed into the room by a seeder client, then joiners
  tracePath: null,
  traceChunkTxns: 1000, // trace transactions per update message sent by the seeder
  traceCopies: 1, // the trace replayed this many times, into the room's text and texts 'file-1'... (a document of many files)
  joiners: 5, // measured joiners, one after another (a first, unmeasured one checks the seed)
  joinTimeout: 60, // s, per joiner
}

function hrnow () {
  return process.hrtime.bigint()
}

function emit (event, fields = {}) {
  process.stderr.write(JSON.stringify({ event, t_ns: hrnow().toString(), ...fields }) + '\n')
}

// ---------------------------------------------------------------------------------------------
// statistics

function percentiles (samples) {
  // samples: Float64Array of milliseconds
  const n = samples.length
  if (n === 0) return { count: 0, min: null, mean: null, p50: null, p90: null, p99: null, p999: null, max: null }
  const sorted = Float64Array.from(samples).sort()
  const at = (q) => sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))]
  let sum = 0
  for (let i = 0; i < n; i++) sum += sorted[i]
  const r = (x) => Math.round(x * 1000) / 1000
  return {
    count: n,
    min: r(sorted[0]),
    mean: r(sum / n),
    p50: r(at(0.5)),
    p90: r(at(0.9)),
    p99: r(at(0.99)),
    p999: r(at(0.999)),
    max: r(sorted[n - 1]),
  }
}

class SampleBuffer {
  constructor (initial = 1024) {
    this.data = new Float64Array(initial)
    this.length = 0
  }

  push (x) {
    if (this.length === this.data.length) {
      const grown = new Float64Array(this.data.length * 2)
      grown.set(this.data)
      this.data = grown
    }
    this.data[this.length++] = x
  }

  view () {
    return this.data.subarray(0, this.length)
  }
}

function concatSamples (arrays) {
  let total = 0
  for (const a of arrays) total += a.length
  const out = new Float64Array(total)
  let off = 0
  for (const a of arrays) {
    out.set(a, off)
    off += a.length
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// scenario

function loadScenario () {
  const arg = process.argv[2]
  let raw
  if (arg === undefined || arg === '-') raw = readFileSync(0, 'utf8')
  else if (arg.trim().startsWith('{')) raw = arg
  else raw = readFileSync(arg, 'utf8')
  const sc = { ...DEFAULTS, ...JSON.parse(raw) }
  if (!sc.url || !/^wss?:\/\//.test(sc.url)) throw new Error('scenario.url must be a ws:// URL base')
  for (const k of ['rooms', 'clientsPerRoom']) {
    if (!Number.isInteger(sc[k]) || sc[k] < 1) throw new Error(`scenario.${k} must be a positive integer`)
  }
  for (const k of ['warmup', 'duration', 'settle', 'connectTimeout']) {
    if (typeof sc[k] !== 'number' || sc[k] < 0 || sc[k] > 3600) throw new Error(`scenario.${k} must be 0..3600 s`)
  }
  if (typeof sc.editsPerSec !== 'number' || sc.editsPerSec < 0 || sc.editsPerSec > 10000) {
    throw new Error('scenario.editsPerSec must be 0..10000')
  }
  if (!['y-websocket', 'hocuspocus'].includes(sc.protocol)) throw new Error('scenario.protocol: y-websocket | hocuspocus')
  if (!['load', 'joiner'].includes(sc.mode)) throw new Error('scenario.mode: load | joiner')
  if (sc.mode === 'joiner' && !sc.tracePath) throw new Error('scenario.tracePath is needed in joiner mode')
  if (!Number.isInteger(sc.joiners) || sc.joiners < 1 || sc.joiners > 100) throw new Error('scenario.joiners must be 1..100')
  return sc
}

function isWriter (sc, clientIndex) {
  const w = sc.writers
  if (w === 'all') return true
  if (w === 'none' || w === null) return false
  if (typeof w === 'number') return clientIndex < w
  if (Array.isArray(w)) return w.includes(clientIndex)
  throw new Error(`scenario.writers: unsupported value ${JSON.stringify(w)}`)
}

// Every client of the run, in a fixed order; ids are short and regex-safe.
function planClients (sc) {
  const clients = []
  let writerCount = 0
  for (let r = 0; r < sc.rooms; r++) {
    for (let c = 0; c < sc.clientsPerRoom; c++) {
      const writer = isWriter(sc, c) && sc.editsPerSec > 0
      clients.push({
        id: `r${r}c${c}`,
        room: `${sc.roomPrefix}-${r}`,
        roomIndex: r,
        index: c,
        writer,
        writerOrdinal: writer ? writerCount++ : -1,
      })
    }
  }
  return { clients, writerCount }
}

// ---------------------------------------------------------------------------------------------
// worker: the clients

class Client {
  constructor (spec, sc, stats) {
    this.spec = spec
    this.sc = sc
    this.stats = stats
    this.doc = new Y.Doc()
    this.text = this.doc.getText(sc.textName)
    this.awareness = new awarenessProtocol.Awareness(this.doc)
    this.ws = null
    this.synced = false
    this.closing = false
    this.seq = 0
    this.sentTotal = 0
    this.sentMeasured = 0
    this.received = 0 // stamps from the measured window seen by this client
    this.receivedAll = 0 // every remote stamp, any phase
    this.timer = null
    this.window = null // { start: bigint, end: bigint }
    this.deferred = sc.receiverApply === 'deferred'
    this.pending = [] // received updates not applied yet (deferred mode)
    this.seen = new Set() // stamps already counted (deferred mode: a re-sent update counts once)

    this.hocuspocus = sc.protocol === 'hocuspocus'
    this.renewTimer = null
    this.renewPhaseTimer = null
    this.authenticated = !this.hocuspocus
    // y-protocols renews the local state every 15 s from its own timer; the generator controls
    // renewals itself (see awarenessRenewS), so that one is stopped
    clearInterval(this.awareness._checkInterval)

    this.doc.on('update', (update, origin) => {
      if (origin === REMOTE) return
      const enc = this.newEncoder()
      encoding.writeVarUint(enc, MESSAGE_SYNC)
      syncProtocol.writeUpdate(enc, update)
      this.send(encoding.toUint8Array(enc))
    })
    this.awareness.on('update', ({ added, updated, removed }, origin) => {
      if (origin !== 'local') return
      const changed = added.concat(updated, removed)
      const enc = this.newEncoder()
      encoding.writeVarUint(enc, MESSAGE_AWARENESS)
      encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed))
      this.send(encoding.toUint8Array(enc))
    })
    this.text.observe((event, tr) => {
      if (tr.origin !== REMOTE || this.deferred) return
      const now = hrnow()
      for (const op of event.delta) {
        if (typeof op.insert === 'string') this.onInserted(op.insert, now)
      }
    })
    if (sc.presence) {
      this.awareness.on('change', ({ added, updated }, origin) => {
        if (origin !== REMOTE || this.window === null) return
        const now = hrnow()
        for (const cid of added.concat(updated)) {
          const st = this.awareness.getStates().get(cid)
          const t = st && st.cursor && st.cursor.t
          if (typeof t !== 'string') continue
          const ts = BigInt(t)
          if (ts >= this.window.start && ts < this.window.end) {
            this.stats.presence.push(Number(now - ts) / NS_PER_MS)
          }
        }
      })
    }
  }

  // An encoder for one outgoing message: Hocuspocus wants the document name in front of each.
  newEncoder () {
    const enc = encoding.createEncoder()
    if (this.hocuspocus) encoding.writeVarString(enc, this.spec.room)
    return enc
  }

  // Deferred mode: the stamps are read straight out of the update's bytes (Yjs writes inserted
  // strings as UTF-8, and a merged update keeps each string whole).
  onUpdateBytes (update, now) {
    const str = Buffer.from(update.buffer, update.byteOffset, update.byteLength).toString('latin1')
    STAMP_RE.lastIndex = 0
    let m
    while ((m = STAMP_RE.exec(str)) !== null) {
      if (m[1] === this.spec.id) continue
      const key = m[1] + ':' + m[2]
      if (this.seen.has(key)) continue
      this.seen.add(key)
      this.receivedAll++
      const ts = BigInt(m[3])
      if (this.window !== null && ts >= this.window.start && ts < this.window.end) {
        this.received++
        this.stats.latency.push(Number(now - ts) / NS_PER_MS)
      }
    }
  }

  applyPending () {
    if (this.pending.length === 0) return
    const updates = this.pending
    this.pending = []
    // one transaction: much faster than Y.mergeUpdates over thousands of small updates
    Y.transact(this.doc, () => {
      for (const u of updates) Y.applyUpdate(this.doc, u, REMOTE)
    }, REMOTE)
  }

  onInserted (str, now) {
    STAMP_RE.lastIndex = 0
    let m
    while ((m = STAMP_RE.exec(str)) !== null) {
      if (m[1] === this.spec.id) continue
      this.receivedAll++
      const ts = BigInt(m[3])
      if (this.window !== null && ts >= this.window.start && ts < this.window.end) {
        this.received++
        this.stats.latency.push(Number(now - ts) / NS_PER_MS)
      }
    }
  }

  send (bytes) {
    if (this.ws === null || this.ws.readyState !== WebSocket.OPEN) {
      this.stats.sendDropped++
      return
    }
    this.stats.bytesOut += bytes.length
    this.ws.send(bytes)
  }

  connect (timeoutMs) {
    return new Promise((resolve, reject) => {
      const bases = this.sc.urls || [this.sc.url]
      const base = bases[this.spec.index % bases.length]
      const token = this.spec.writer ? this.sc.writerToken : this.sc.readerToken
      const query = token ? `?token=${encodeURIComponent(token)}` : ''
      const url = `${base.replace(/\/$/, '')}/${encodeURIComponent(this.spec.room)}${query}`
      const started = hrnow()
      const ws = new WebSocket(url, { perMessageDeflate: false })
      ws.binaryType = 'nodebuffer'
      this.ws = ws
      let done = false
      const finish = (err) => {
        if (done) return
        done = true
        clearTimeout(timer)
        if (err) reject(err)
        else {
          this.stats.connectMs.push(Number(hrnow() - started) / NS_PER_MS)
          resolve()
        }
      }
      const timer = setTimeout(() => finish(new Error(`${this.spec.id}: not synced within ${timeoutMs} ms`)), timeoutMs)
      ws.on('open', () => {
        if (this.hocuspocus) {
          // Hocuspocus queues everything of a document until its auth message has been handled
          const auth = this.newEncoder()
          encoding.writeVarUint(auth, MESSAGE_AUTH)
          encoding.writeVarUint(auth, HP_AUTH_TOKEN)
          encoding.writeVarString(auth, '')
          encoding.writeVarString(auth, HOCUSPOCUS_PROVIDER_VERSION)
          this.send(encoding.toUint8Array(auth))
        }
        const enc = this.newEncoder()
        encoding.writeVarUint(enc, MESSAGE_SYNC)
        syncProtocol.writeSyncStep1(enc, this.doc)
        this.send(encoding.toUint8Array(enc))
        if (this.sc.awareness) {
          this.awareness.setLocalState({ user: { name: this.spec.id } })
        }
      })
      ws.on('message', (data) => {
        this.stats.messagesIn++
        this.stats.bytesIn += data.length
        try {
          this.onMessage(new Uint8Array(data.buffer, data.byteOffset, data.length))
        } catch (err) {
          this.stats.errors.push(`${this.spec.id}: message handling failed: ${err && err.message}`)
        }
        if (this.synced) finish(null)
      })
      ws.on('error', (err) => {
        this.stats.errors.push(`${this.spec.id}: socket error: ${err && err.message}`)
        finish(err)
      })
      ws.on('close', (code, reason) => {
        if (!this.closing) {
          this.stats.unexpectedCloses.push({ client: this.spec.id, code, reason: reason.toString(), t_ns: hrnow().toString() })
        }
        this.stopWriting()
        finish(new Error(`${this.spec.id}: closed with ${code} before sync`))
      })
    })
  }

  onMessage (buf) {
    if (this.hocuspocus && buf.length === 1 && buf[0] === HP_PING) {
      this.send(Uint8Array.of(HP_PONG))
      return
    }
    const dec = decoding.createDecoder(buf)
    if (this.hocuspocus) {
      const name = decoding.readVarString(dec)
      if (name !== this.spec.room) {
        this.stats.errors.push(`${this.spec.id}: message for document ${JSON.stringify(name)}`)
        return
      }
    }
    const type = decoding.readVarUint(dec)
    switch (type) {
      case HP_SYNC_REPLY:
        if (!this.hocuspocus) {
          this.stats.errors.push(`${this.spec.id}: unknown message type ${type}`)
          break
        }
      // falls through: Hocuspocus' sync reply is a sync message that asks for no further step 1
      case MESSAGE_SYNC: {
        if (this.deferred && this.synced && buf[dec.pos] === syncProtocol.messageYjsUpdate) {
          decoding.readVarUint(dec)
          const update = decoding.readVarUint8Array(dec)
          this.onUpdateBytes(update, hrnow())
          this.pending.push(update.slice())
          break
        }
        const enc = this.newEncoder()
        encoding.writeVarUint(enc, MESSAGE_SYNC)
        const empty = encoding.length(enc)
        const step = syncProtocol.readSyncMessage(dec, enc, this.doc, REMOTE)
        if (step === syncProtocol.messageYjsSyncStep2) this.synced = true
        if (encoding.length(enc) > empty) this.send(encoding.toUint8Array(enc))
        break
      }
      case MESSAGE_AWARENESS:
        awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(dec), REMOTE)
        break
      case MESSAGE_QUERY_AWARENESS: {
        const enc = this.newEncoder()
        encoding.writeVarUint(enc, MESSAGE_AWARENESS)
        encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, Array.from(this.awareness.getStates().keys())))
        this.send(encoding.toUint8Array(enc))
        break
      }
      case MESSAGE_AUTH: {
        if (this.hocuspocus) {
          const kind = decoding.readVarUint(dec)
          if (kind === HP_AUTH_AUTHENTICATED) {
            this.authenticated = true
            break
          }
          if (kind === HP_AUTH_TOKEN) break // a token refresh request; the empty token stands
          this.stats.errors.push(`${this.spec.id}: permission denied: ${kind === HP_AUTH_PERMISSION_DENIED ? decoding.readVarString(dec) : kind}`)
          break
        }
        this.stats.errors.push(`${this.spec.id}: auth message (permission denied?)`)
        break
      }
      case HP_SYNC_STATUS:
      case HP_STATELESS:
        if (this.hocuspocus) break // the acknowledgement of each update; stateless payloads
        this.stats.errors.push(`${this.spec.id}: unknown message type ${type}`)
        break
      case HP_CLOSE:
        if (this.hocuspocus) {
          this.stats.errors.push(`${this.spec.id}: the server closed the document`)
          break
        }
        this.stats.errors.push(`${this.spec.id}: unknown message type ${type}`)
        break
      default:
        this.stats.errors.push(`${this.spec.id}: unknown message type ${type}`)
    }
  }

  // Open-loop schedule: edit k is due at first + k * interval, whatever happened before, so a slow
  // server does not slow the offered load down. Lateness (actual - due) is recorded to show when the
  // generator itself falls behind.
  startWriting (t0, end, window, writerOrdinal, writerCount) {
    this.window = window
    this.startRenewals(end)
    if (!this.spec.writer) return
    const interval = BigInt(Math.round(1e9 / this.sc.editsPerSec))
    // spread the writers evenly over one interval so they do not all fire together
    const first = t0 + (interval * BigInt(writerOrdinal)) / BigInt(Math.max(1, writerCount))
    const pad = 'x'.repeat(this.sc.editPadding)
    let k = 0n
    const tick = () => {
      this.timer = null
      if (this.closing) return
      const due = first + k * interval
      if (due >= end) return
      const now = hrnow()
      if (now < due) {
        this.timer = setTimeout(tick, Math.max(0, Number(due - now) / NS_PER_MS))
        return
      }
      this.stats.sendLag.push(Number(now - due) / NS_PER_MS)
      this.edit(now, window, pad)
      k++
      const next = first + k * interval
      if (next >= end) return
      const wait = Number(next - hrnow()) / NS_PER_MS
      this.timer = setTimeout(tick, Math.max(0, wait))
    }
    tick()
  }

  edit (now, window, pad) {
    this.seq++
    const stamp = `${this.spec.id}:${this.seq}:${now.toString()};${pad}`
    this.text.insert(this.text.length, stamp)
    this.sentTotal++
    if (now >= window.start && now < window.end) this.sentMeasured++
    if (this.sc.presence) {
      const pos = this.text.length
      this.awareness.setLocalStateField('cursor', { anchor: pos, head: pos, t: now.toString() })
    }
  }

  // Re-publish the local awareness state every awarenessRenewS, first at a random phase.
  startRenewals (end) {
    const period = this.sc.awarenessRenewS * 1000
    if (!(period > 0) || !this.sc.awareness) return
    const renew = () => {
      if (this.closing || hrnow() >= end || this.awareness.getLocalState() === null) return
      this.awareness.setLocalState(this.awareness.getLocalState())
    }
    this.renewPhaseTimer = setTimeout(() => {
      this.renewPhaseTimer = null
      renew()
      this.renewTimer = setInterval(renew, period)
    }, Math.random() * period)
  }

  stopWriting () {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    if (this.renewPhaseTimer !== null) clearTimeout(this.renewPhaseTimer)
    this.renewPhaseTimer = null
    if (this.renewTimer !== null) clearInterval(this.renewTimer)
    this.renewTimer = null
  }

  digest () {
    this.applyPending()
    const str = this.text.toString()
    let stamps = 0
    STAMP_RE.lastIndex = 0
    while (STAMP_RE.exec(str) !== null) stamps++
    return {
      id: this.spec.id,
      room: this.spec.room,
      open: this.ws !== null && this.ws.readyState === WebSocket.OPEN,
      textLength: str.length,
      stamps,
      textSha: createHash('sha256').update(str).digest('hex'),
      stateVector: Buffer.from(Y.encodeStateVector(this.doc)).toString('base64'),
    }
  }

  close () {
    this.closing = true
    this.stopWriting()
    return new Promise((resolve) => {
      const ws = this.ws
      if (ws === null || ws.readyState === WebSocket.CLOSED) {
        this.awareness.destroy()
        resolve()
        return
      }
      const t = setTimeout(() => { ws.terminate(); resolve() }, 2000)
      ws.once('close', () => { clearTimeout(t); resolve() })
      try {
        this.awareness.destroy() // publishes the null state, like a closing editor
      } catch (_) {}
      if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'bench done')
      else ws.terminate()
    })
  }
}

function newStats () {
  return {
    latency: new SampleBuffer(),
    presence: new SampleBuffer(),
    sendLag: new SampleBuffer(),
    connectMs: new SampleBuffer(64),
    errors: [],
    unexpectedCloses: [],
    sendDropped: 0,
    messagesIn: 0,
    bytesIn: 0,
    bytesOut: 0,
  }
}

async function runWorker () {
  const stats = newStats()
  let sc = null
  let clients = []
  let writerCount = 0
  let loopDelay = null
  let cpuAtStart = null
  let cpuUsed = null
  let measureStart = null
  let measureEnd = null

  const send = (msg) => process.send(msg)

  process.on('message', async (msg) => {
    try {
      if (msg.type === 'init') {
        sc = msg.scenario
        writerCount = msg.writerCount
        clients = msg.clients.map((spec) => new Client(spec, sc, stats))
        const timeoutMs = sc.connectTimeout * 1000
        let next = 0
        const lane = async () => {
          while (next < clients.length) {
            const c = clients[next++]
            await c.connect(timeoutMs)
          }
        }
        const lanes = []
        for (let i = 0; i < Math.min(sc.connectConcurrency, clients.length); i++) lanes.push(lane())
        await Promise.all(lanes)
        send({ type: 'ready' })
      } else if (msg.type === 'start') {
        const t0 = BigInt(msg.t0)
        measureStart = BigInt(msg.measureStart)
        measureEnd = BigInt(msg.measureEnd)
        const window = { start: measureStart, end: measureEnd }
        for (const c of clients) c.startWriting(t0, measureEnd, window, c.spec.writerOrdinal, writerCount)
        // sample generator health over the measured window only
        setTimeout(() => {
          loopDelay = monitorEventLoopDelay({ resolution: 1 })
          loopDelay.enable()
          cpuAtStart = process.cpuUsage()
        }, Math.max(0, Number(measureStart - hrnow()) / NS_PER_MS))
        setTimeout(() => {
          if (loopDelay) loopDelay.disable()
          if (cpuAtStart) cpuUsed = process.cpuUsage(cpuAtStart)
        }, Math.max(0, Number(measureEnd - hrnow()) / NS_PER_MS))
      } else if (msg.type === 'digest') {
        send({ type: 'digest', digests: clients.map((c) => c.digest()) })
      } else if (msg.type === 'report') {
        for (const c of clients) c.stopWriting()
        const windowS = Number(measureEnd - measureStart) / 1e9
        send({
          type: 'report',
          latency: Float64Array.from(stats.latency.view()),
          presence: Float64Array.from(stats.presence.view()),
          sendLag: Float64Array.from(stats.sendLag.view()),
          connectMs: Float64Array.from(stats.connectMs.view()),
          clients: clients.map((c) => ({
            id: c.spec.id,
            room: c.spec.room,
            writer: c.spec.writer,
            sentTotal: c.sentTotal,
            sentMeasured: c.sentMeasured,
            received: c.received,
            receivedAll: c.receivedAll,
          })),
          errors: stats.errors.slice(0, 100),
          errorCount: stats.errors.length,
          unexpectedCloses: stats.unexpectedCloses.slice(0, 100),
          unexpectedCloseCount: stats.unexpectedCloses.length,
          sendDropped: stats.sendDropped,
          messagesIn: stats.messagesIn,
          bytesIn: stats.bytesIn,
          bytesOut: stats.bytesOut,
          eventLoopDelayMs: loopDelay
            ? { p50: loopDelay.percentile(50) / NS_PER_MS, p99: loopDelay.percentile(99) / NS_PER_MS, max: loopDelay.max / NS_PER_MS }
            : null,
          cpuS: cpuUsed ? (cpuUsed.user + cpuUsed.system) / 1e6 : null,
          cpuPct: cpuUsed && windowS > 0 ? (100 * (cpuUsed.user + cpuUsed.system)) / 1e6 / windowS : null,
        })
      } else if (msg.type === 'close') {
        await Promise.all(clients.map((c) => c.close()))
        send({ type: 'closed' })
        process.disconnect()
      }
    } catch (err) {
      send({ type: 'fatal', error: String(err && err.stack ? err.stack : err) })
    }
  })
  process.on('disconnect', () => setTimeout(() => process.exit(0), 100).unref())
  send({ type: 'hello', pid: process.pid })
}

// ---------------------------------------------------------------------------------------------
// coordinator

class Worker {
  constructor (index, script) {
    this.index = index
    this.child = fork(script, ['--worker'], { serialization: 'advanced', stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
    this.waiters = new Map()
    this.dead = null
    this.child.on('message', (msg) => {
      if (msg.type === 'fatal') {
        this.dead = new Error(`worker ${index}: ${msg.error}`)
        for (const w of this.waiters.values()) w.reject(this.dead)
        this.waiters.clear()
        return
      }
      const w = this.waiters.get(msg.type)
      if (w) {
        this.waiters.delete(msg.type)
        w.resolve(msg)
      }
    })
    this.child.on('exit', (code, signal) => {
      if (this.waiters.size === 0) return
      this.dead = new Error(`worker ${index} exited (${code ?? signal})`)
      for (const w of this.waiters.values()) w.reject(this.dead)
      this.waiters.clear()
    })
  }

  expect (type) {
    if (this.dead) return Promise.reject(this.dead)
    return new Promise((resolve, reject) => this.waiters.set(type, { resolve, reject }))
  }

  async request (msg, answer) {
    const p = this.expect(answer)
    this.child.send(msg)
    return p
  }

  kill () {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL')
  }
}

function withTimeout (promise, ms, what) {
  let t
  return Promise.race([
    promise.finally(() => clearTimeout(t)),
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms) }),
  ])
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function checkConvergence (digests) {
  const byRoom = new Map()
  for (const d of digests) {
    if (!byRoom.has(d.room)) byRoom.set(d.room, [])
    byRoom.get(d.room).push(d)
  }
  let converged = 0
  const diverged = []
  for (const [room, ds] of byRoom) {
    const same = ds.every((d) => d.textSha === ds[0].textSha && d.stateVector === ds[0].stateVector)
    if (same) converged++
    else if (diverged.length < 10) diverged.push({ room, clients: ds.map((d) => ({ id: d.id, textLength: d.textLength, stamps: d.stamps, stateVector: d.stateVector })) })
  }
  return { rooms: byRoom.size, converged, diverged, byRoom }
}

async function runCoordinator () {
  const sc = loadScenario()
  if (sc.mode === 'joiner') return runJoiner(sc)
  const { clients, writerCount } = planClients(sc)
  const nWorkers = Math.max(1, Math.min(sc.workers > 0 ? sc.workers : Math.min(4, clients.length), clients.length))
  const script = fileURLToPath(import.meta.url)
  const result = {
    ok: false,
    scenario: sc,
    workers: nWorkers,
    clients: clients.length,
    rooms: sc.rooms,
    writers: writerCount,
  }
  const workers = []
  const hardDeadlineMs = (sc.connectTimeout + sc.warmup + sc.duration + sc.settle + 120) * 1000
  const deadline = setTimeout(() => {
    emit('abort', { reason: 'hard deadline passed' })
    for (const w of workers) w.kill()
    result.error = 'hard deadline passed'
    process.stdout.write(JSON.stringify(result) + '\n')
    process.exit(1)
  }, hardDeadlineMs)

  try {
    // round-robin, so the clients of one room sit in different processes
    const shares = Array.from({ length: nWorkers }, () => [])
    clients.forEach((c, i) => shares[i % nWorkers].push(c))
    for (let i = 0; i < nWorkers; i++) workers.push(new Worker(i, script))
    await withTimeout(Promise.all(workers.map((w) => w.expect('hello'))), 10000, 'worker start')
    emit('workers_started', { workers: nWorkers })

    const connectStarted = hrnow()
    await withTimeout(
      Promise.all(workers.map((w, i) => w.request({ type: 'init', scenario: sc, clients: shares[i], writerCount }, 'ready'))),
      sc.connectTimeout * 1000 + 5000,
      'connect'
    )
    result.connectAllMs = Number(hrnow() - connectStarted) / NS_PER_MS
    emit('connected', { clients: clients.length, ms: result.connectAllMs })

    const t0 = hrnow() + BigInt(sc.startDelayMs) * 1000000n
    const measureStart = t0 + BigInt(Math.round(sc.warmup * 1e9))
    const measureEnd = measureStart + BigInt(Math.round(sc.duration * 1e9))
    for (const w of workers) w.child.send({ type: 'start', t0: t0.toString(), measureStart: measureStart.toString(), measureEnd: measureEnd.toString() })
    emit('started', { t0_ns: t0.toString() })
    await sleep(Number(measureStart - hrnow()) / NS_PER_MS)
    emit('measure_start')
    await sleep(Math.max(0, Number(measureEnd - hrnow()) / NS_PER_MS))
    emit('measure_end')

    // quiet period: poll until every room's clients agree, at most `settle` seconds
    const settleStarted = hrnow()
    const settleEnd = settleStarted + BigInt(Math.round(sc.settle * 1e9))
    let conv = null
    let digests = []
    let polls = 0
    do {
      await sleep(polls === 0 ? 100 : 250)
      polls++
      // the first digest applies every update kept during the window (deferred mode): allow time
      const answers = await withTimeout(Promise.all(workers.map((w) => w.request({ type: 'digest' }, 'digest'))), 60000, 'digest')
      digests = answers.flatMap((a) => a.digests)
      conv = checkConvergence(digests)
    } while (conv.converged < conv.rooms && hrnow() < settleEnd)
    const settleMs = Number(hrnow() - settleStarted) / NS_PER_MS
    emit('settled', { converged: conv.converged, rooms: conv.rooms, ms: settleMs })

    const reports = await withTimeout(Promise.all(workers.map((w) => w.request({ type: 'report' }, 'report'))), 20000, 'report')
    await withTimeout(Promise.all(workers.map((w) => w.request({ type: 'close' }, 'closed'))), 10000, 'close').catch((err) => {
      emit('close_failed', { error: String(err) })
    })

    // ---- aggregate
    const perClient = reports.flatMap((r) => r.clients)
    const roomSize = new Map()
    for (const c of clients) roomSize.set(c.room, (roomSize.get(c.room) || 0) + 1)
    let sentTotal = 0
    let sentMeasured = 0
    let expected = 0
    let received = 0
    for (const c of perClient) {
      sentTotal += c.sentTotal
      sentMeasured += c.sentMeasured
      expected += c.sentMeasured * (roomSize.get(c.room) - 1)
      received += c.received
    }
    // the final text of each room must hold every stamp that was sent into it
    const sentPerRoom = new Map()
    for (const c of perClient) sentPerRoom.set(c.room, (sentPerRoom.get(c.room) || 0) + c.sentTotal)
    let stampsComplete = true
    for (const d of digests) if (d.stamps !== sentPerRoom.get(d.room)) stampsComplete = false

    const latency = concatSamples(reports.map((r) => r.latency))
    const presence = concatSamples(reports.map((r) => r.presence))
    const sendLag = concatSamples(reports.map((r) => r.sendLag))
    const connectMs = concatSamples(reports.map((r) => r.connectMs))
    const sum = (f) => reports.reduce((a, r) => a + (f(r) || 0), 0)
    const maxOf = (f) => reports.reduce((a, r) => Math.max(a, f(r) ?? 0), 0)
    const unexpectedCloses = reports.flatMap((r) => r.unexpectedCloses)
    const errors = reports.flatMap((r) => r.errors)

    Object.assign(result, {
      ok: true,
      window: { warmupS: sc.warmup, durationS: sc.duration },
      edits: {
        sentTotal,
        sentMeasured,
        offeredPerSec: sc.duration > 0 ? sentMeasured / sc.duration : 0,
        expectedDeliveries: expected,
        delivered: received,
        deliveryRatio: expected > 0 ? received / expected : null,
      },
      latencyMs: percentiles(latency),
      presenceLatencyMs: sc.presence ? percentiles(presence) : null,
      convergence: {
        converged: conv.converged === conv.rooms && stampsComplete,
        roomsConverged: conv.converged,
        rooms: conv.rooms,
        finalTextHasAllStamps: stampsComplete,
        settleMs,
        diverged: conv.diverged,
      },
      connections: {
        connectMs: percentiles(connectMs),
        unexpectedCloseCount: sum((r) => r.unexpectedCloseCount),
        unexpectedCloses: unexpectedCloses.slice(0, 20),
        errorCount: sum((r) => r.errorCount),
        errors: errors.slice(0, 20),
        sendDropped: sum((r) => r.sendDropped),
      },
      traffic: { messagesIn: sum((r) => r.messagesIn), bytesIn: sum((r) => r.bytesIn), bytesOut: sum((r) => r.bytesOut) },
      generator: {
        sendLagMs: percentiles(sendLag),
        eventLoopDelayMsP99Max: maxOf((r) => r.eventLoopDelayMs && r.eventLoopDelayMs.p99),
        eventLoopDelayMsMax: maxOf((r) => r.eventLoopDelayMs && r.eventLoopDelayMs.max),
        cpuS: sum((r) => r.cpuS),
        cpuPctOfOneCore: sum((r) => r.cpuPct),
      },
    })
    if (result.connections.unexpectedCloseCount > 0 || result.connections.errorCount > 0) result.ok = false
  } catch (err) {
    result.ok = false
    result.error = String(err && err.message ? err.message : err)
    emit('error', { error: result.error })
    for (const w of workers) w.kill()
  }
  clearTimeout(deadline)
  for (const w of workers) w.kill()
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exitCode = result.ok ? 0 : 1
}

// ---------------------------------------------------------------------------------------------
// joiner mode: one room holding a large document (an editing trace replayed by a seeder client),
// then new clients join it one after another; how long until each holds the whole document.

function loadTrace (path) {
  const raw = readFileSync(path)
  const json = path.endsWith('.gz') ? gunzipSync(raw).toString('utf8') : raw.toString('utf8')
  const trace = JSON.parse(json)
  if (!Array.isArray(trace.txns) || typeof trace.endContent !== 'string') throw new Error(`${path}: not a sequential editing trace`)
  return trace
}

async function runJoiner (sc) {
  const result = { ok: false, mode: 'joiner', scenario: sc, clients: 0, rooms: 1, writers: 1 }
  const hardDeadlineMs = (sc.connectTimeout * 2 + sc.joinTimeout * (sc.joiners + 1) + 120) * 1000
  const open = []
  const deadline = setTimeout(() => {
    emit('abort', { reason: 'hard deadline passed' })
    result.error = 'hard deadline passed'
    process.stdout.write(JSON.stringify(result) + '\n')
    process.exit(1)
  }, hardDeadlineMs)
  const stats = newStats()
  const room = `${sc.roomPrefix}-0`
  try {
    const t = hrnow()
    const trace = loadTrace(sc.tracePath)
    const expectedSha = createHash('sha256').update(trace.endContent).digest('hex')
    emit('trace_loaded', { txns: trace.txns.length, ms: Number(hrnow() - t) / NS_PER_MS })

    // the seeder: an editor that typed the whole trace, sent in chunks of traceChunkTxns
    const seeder = new Client({ id: 'seed', room, index: 0, writer: true, writerOrdinal: 0 }, sc, stats)
    open.push(seeder)
    await seeder.connect(sc.connectTimeout * 1000)
    emit('seed_start')
    const seedStarted = hrnow()
    let messages = 0
    const copies = Math.max(1, sc.traceCopies | 0)
    // the texts of a document of many files: the room's text, then 'file-1', 'file-2'...
    const textsOf = (doc) => [doc.getText(sc.textName), ...Array.from({ length: copies - 1 }, (_, i) => doc.getText(`file-${i + 1}`))]
    for (const text of textsOf(seeder.doc)) {
      for (let i = 0; i < trace.txns.length; i += sc.traceChunkTxns) {
        const chunk = trace.txns.slice(i, i + sc.traceChunkTxns)
        seeder.doc.transact(() => {
          for (const txn of chunk) {
            for (const [pos, del, ins] of txn.patches) {
              if (del > 0) text.delete(pos, del)
              if (ins) text.insert(pos, ins)
            }
          }
        })
        messages++
        // let the socket drain now and then so the seed is a stream, not one burst in memory
        if (seeder.ws.bufferedAmount > 1 << 20) await sleep(5)
      }
      if (text.toString() !== trace.endContent) throw new Error('replaying the trace did not give its endContent')
    }
    while (seeder.ws.bufferedAmount > 0) await sleep(5)
    const docBytes = Y.encodeStateAsUpdate(seeder.doc).length
    const seedMs = Number(hrnow() - seedStarted) / NS_PER_MS
    emit('seed_sent', { messages, ms: seedMs, docBytes })

    // one joiner: connect, sync step 1 with an empty state vector, done when its text is the
    // trace's end content (the server may still be integrating the seed for the first one)
    const join = async (k) => {
      const c = new Client({ id: `j${k}`, room, index: k + 1, writer: false, writerOrdinal: -1 }, { ...sc, awareness: false }, stats)
      open.push(c)
      const started = hrnow()
      await c.connect(sc.joinTimeout * 1000)
      const synced = hrnow()
      const limit = started + BigInt(sc.joinTimeout * 1e9)
      for (const text of textsOf(c.doc)) {
        while (text.length !== trace.endContent.length || createHash('sha256').update(text.toString()).digest('hex') !== expectedSha) {
          if (hrnow() > limit) throw new Error(`joiner ${k}: document incomplete after ${sc.joinTimeout} s (${text.length} of ${trace.endContent.length} characters)`)
          await sleep(2)
        }
      }
      const complete = hrnow()
      const ms = { syncStep2Ms: Number(synced - started) / NS_PER_MS, completeMs: Number(complete - started) / NS_PER_MS }
      await c.close()
      open.splice(open.indexOf(c), 1)
      return ms
    }
    const first = await join(0)
    emit('seeded', first)
    emit('measure_start')
    const measured = []
    for (let k = 1; k <= sc.joiners; k++) {
      measured.push(await join(k))
      emit('joined', { joiner: k, ...measured[measured.length - 1] })
    }
    emit('measure_end')
    const complete = percentiles(Float64Array.from(measured.map((m) => m.completeMs)))
    Object.assign(result, {
      ok: stats.errors.length === 0 && stats.unexpectedCloses.length === 0,
      clients: 1 + 1 + sc.joiners,
      trace: { txns: trace.txns.length, endChars: trace.endContent.length, chunkTxns: sc.traceChunkTxns, copies, messages, seedMs, docBytes },
      firstJoin: first,
      joinMs: complete,
      joinSyncStep2Ms: percentiles(Float64Array.from(measured.map((m) => m.syncStep2Ms))),
      joins: measured,
      convergence: { converged: true, rooms: 1, roomsConverged: 1, finalTextHasAllStamps: true },
      connections: {
        unexpectedCloseCount: stats.unexpectedCloses.length,
        unexpectedCloses: stats.unexpectedCloses.slice(0, 20),
        errorCount: stats.errors.length,
        errors: stats.errors.slice(0, 20),
      },
      traffic: { messagesIn: stats.messagesIn, bytesIn: stats.bytesIn, bytesOut: stats.bytesOut },
    })
    if (!result.ok) result.error = stats.errors[0] || 'unexpected close'
  } catch (err) {
    result.ok = false
    result.error = String(err && err.message ? err.message : err)
    emit('error', { error: result.error })
  }
  await Promise.all(open.map((c) => c.close()))
  clearTimeout(deadline)
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exitCode = result.ok ? 0 : 1
}

if (process.argv.includes('--worker')) {
  runWorker()
} else {
  runCoordinator().catch((err) => {
    process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack ? err.stack : err) }) + '\n')
    process.exitCode = 2
  })
}
