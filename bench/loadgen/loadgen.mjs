#!/usr/bin/env node
// A load generator speaking the y-websocket protocol (sync + awareness) directly over `ws`.
//
// Usage:
//   node loadgen.mjs '<scenario JSON>'
//   node loadgen.mjs scenario.json
//   echo '<scenario JSON>' | node loadgen.mjs
//
// The coordinator (this process without --worker) forks `workers` child processes; each owns a
// share of the clients (Y.Doc + Awareness + one websocket). Every edit appends a stamp
// "<writer>:<seq>:<hrtime-ns>;" to the Y.Text `text`; a receiving client parses the stamps out of
// the Y.Text delta of each remote transaction and records latency = now - stamp. All processes on
// one machine read the same CLOCK_MONOTONIC through process.hrtime.bigint(), so stamps written in
// one process can be compared with the clock of another.
//
// Phases: connect + sync every client -> start at a common t0 -> warmup -> measured window ->
// settle (wait until every room's clients hold identical text, bounded) -> report -> close.
// Only edits sent inside the measured window count for latency and delivery.
//
// Progress events go to stderr as JSON lines ({"event": "..."}); the orchestrator uses
// "measure_start" and "measure_end" to sample the server. The single result goes to stdout as JSON.

import { fork } from 'node:child_process'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
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

const REMOTE = Symbol('remote')
const STAMP_RE = /([A-Za-z0-9]+):(\d+):(\d+);/g
const NS_PER_MS = 1e6

const DEFAULTS = {
  url: null, // e.g. ws://127.0.0.1:8000/yjs ; a client connects to `${url}/${room}`
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

    this.doc.on('update', (update, origin) => {
      if (origin === REMOTE) return
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, MESSAGE_SYNC)
      syncProtocol.writeUpdate(enc, update)
      this.send(encoding.toUint8Array(enc))
    })
    this.awareness.on('update', ({ added, updated, removed }, origin) => {
      if (origin !== 'local') return
      const changed = added.concat(updated, removed)
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, MESSAGE_AWARENESS)
      encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed))
      this.send(encoding.toUint8Array(enc))
    })
    this.text.observe((event, tr) => {
      if (tr.origin !== REMOTE) return
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
      const url = `${this.sc.url.replace(/\/$/, '')}/${encodeURIComponent(this.spec.room)}`
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
        const enc = encoding.createEncoder()
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
    const dec = decoding.createDecoder(buf)
    const type = decoding.readVarUint(dec)
    switch (type) {
      case MESSAGE_SYNC: {
        const enc = encoding.createEncoder()
        encoding.writeVarUint(enc, MESSAGE_SYNC)
        const step = syncProtocol.readSyncMessage(dec, enc, this.doc, REMOTE)
        if (step === syncProtocol.messageYjsSyncStep2) this.synced = true
        if (encoding.length(enc) > 1) this.send(encoding.toUint8Array(enc))
        break
      }
      case MESSAGE_AWARENESS:
        awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(dec), REMOTE)
        break
      case MESSAGE_QUERY_AWARENESS: {
        const enc = encoding.createEncoder()
        encoding.writeVarUint(enc, MESSAGE_AWARENESS)
        encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, Array.from(this.awareness.getStates().keys())))
        this.send(encoding.toUint8Array(enc))
        break
      }
      case MESSAGE_AUTH:
        this.stats.errors.push(`${this.spec.id}: auth message (permission denied?)`)
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

  stopWriting () {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
  }

  digest () {
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

async function runWorker () {
  const stats = {
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
  const hardDeadlineMs = (sc.connectTimeout + sc.warmup + sc.duration + sc.settle + 30) * 1000
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
      const answers = await withTimeout(Promise.all(workers.map((w) => w.request({ type: 'digest' }, 'digest'))), 10000, 'digest')
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

if (process.argv.includes('--worker')) {
  runWorker()
} else {
  runCoordinator().catch((err) => {
    process.stdout.write(JSON.stringify({ ok: false, error: String(err && err.stack ? err.stack : err) }) + '\n')
    process.exitCode = 2
  })
}
