// One npm y-webrtc WebrtcProvider whose signaling goes to a pairroom /signal URL, driven over JSON lines.
//
//   node client.mjs SIGNAL_URL ROOM
//
// Prints one JSON object a line: {"event":"ready","peerId"} once the provider exists,
// {"event":"connect"} / {"event":"disconnect"} for its signaling socket, {"event":"message","message"}
// for every frame the signaling connection receives (as y-webrtc's SignalingConn parsed it), and
// {"event":"uncaught","error"} for an uncaught exception. Reads commands, one JSON object a line:
// {"cmd":"reconnect"} (provider.disconnect() then connect(): a fresh socket, which subscribes and
// announces again) and {"cmd":"close"} (destroy the provider and exit 0).
//
// maxConns is 0: the provider announces itself on every new signaling connection (y-webrtc does that
// unconditionally) but opens no WebRTC connection to the peers it hears of, as Node has no WebRTC.
// Node 20 has no global WebSocket, which lib0's websocket client (used by y-webrtc) needs.

import readline from 'node:readline'
import { WebSocket } from 'ws'

globalThis.WebSocket = WebSocket
const Y = await import('yjs')
const { WebrtcProvider } = await import('y-webrtc')

const [url, room] = process.argv.slice(2)
const out = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n')

process.on('uncaughtException', (error) => out('uncaught', { error: String(error && error.stack || error) }))

const doc = new Y.Doc()
const provider = new WebrtcProvider(room, doc, { signaling: [url], maxConns: 0, filterBcConns: true })

const watched = new Set()
const watch = () => {
  for (const conn of provider.signalingConns) {
    if (watched.has(conn)) continue
    watched.add(conn)
    conn.on('connect', () => out('connect'))
    conn.on('disconnect', () => out('disconnect'))
    conn.on('message', (message) => out('message', { message }))
  }
}
watch()

const peerId = () => (provider.room ? provider.room.peerId : null)
await provider.key // the room opens once the (absent) key resolved
out('ready', { peerId: peerId() })

const lines = readline.createInterface({ input: process.stdin })
lines.on('line', (line) => {
  const { cmd } = JSON.parse(line)
  if (cmd === 'reconnect') {
    provider.disconnect()
    provider.connect()
    watch()
    out('reconnecting')
  } else if (cmd === 'close') {
    provider.destroy()
    doc.destroy()
    out('closed')
    setImmediate(() => process.exit(0))
  }
})
lines.on('close', () => process.exit(0))
