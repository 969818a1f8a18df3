// Print reference y-websocket frames built by the real npm encoders (yjs + y-protocols + lib0),
// as one JSON object of base64 strings on stdout. tests/test_protocol.py decodes them with
// pairroom's codec and re-encodes the same inputs to compare the bytes.
//
//   node frames.mjs
//
// Keys:
//   step1, step2, update, awareness, queryAwareness   complete frames (message type prefix included)
//   stateVector        the state vector inside step1
//   step2Update        the update inside step2 (what the peer misses given stateVector)
//   updateUpdate       the update inside update
//   awarenessPayload   the awareness update inside awareness
//   docText            the text of the full document after every edit ("text" type)
//   awarenessClients   [{clientId, clock, state}] in encoding order (state is the JSON text)

import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'

const MESSAGE_SYNC = 0
const MESSAGE_AWARENESS = 1
const MESSAGE_QUERY_AWARENESS = 3

const b64 = (bytes) => Buffer.from(bytes).toString('base64')

const frame = (write) => {
  const encoder = encoding.createEncoder()
  write(encoder)
  return encoding.toUint8Array(encoder)
}

// A document with fixed client ids, so the output is the same on every run.
const doc = new Y.Doc()
doc.clientID = 1234
doc.getText('text').insert(0, 'hello world')
const stateVector = Y.encodeStateVector(doc)

const step1 = frame((e) => {
  encoding.writeVarUint(e, MESSAGE_SYNC)
  syncProtocol.writeSyncStep1(e, doc)
})

// A peer that has nothing answers with everything: step 2 against an empty state vector.
const empty = new Y.Doc()
empty.clientID = 99
const emptyStateVector = Y.encodeStateVector(empty)
const step2 = frame((e) => {
  encoding.writeVarUint(e, MESSAGE_SYNC)
  syncProtocol.writeSyncStep2(e, doc, emptyStateVector)
})
const step2Update = Y.encodeStateAsUpdate(doc, emptyStateVector)

// An incremental update, as a provider broadcasts it from doc.on('update').
let updateUpdate = null
const onUpdate = (update) => { updateUpdate = update }
doc.on('update', onUpdate)
doc.getText('text').insert(5, ',')
doc.off('update', onUpdate)
const update = frame((e) => {
  encoding.writeVarUint(e, MESSAGE_SYNC)
  syncProtocol.writeUpdate(e, updateUpdate)
})

// Awareness with two clients: 1234 present (with non-ASCII text), 5678 removed ("null").
const awareness = new awarenessProtocol.Awareness(doc)
awareness.setLocalState({ user: { name: 'Zoë', color: '#ff0000' }, cursor: null })
const otherDoc = new Y.Doc()
otherDoc.clientID = 5678
const other = new awarenessProtocol.Awareness(otherDoc)
other.setLocalState({ user: { name: 'gone' } })
other.setLocalState(null)
awarenessProtocol.applyAwarenessUpdate(
  awareness, awarenessProtocol.encodeAwarenessUpdate(other, [5678]), 'test'
)
const clients = [1234, 5678]
const awarenessPayload = awarenessProtocol.encodeAwarenessUpdate(awareness, clients)
const awarenessFrame = frame((e) => {
  encoding.writeVarUint(e, MESSAGE_AWARENESS)
  encoding.writeVarUint8Array(e, awarenessPayload)
})
const awarenessClients = clients.map((clientId) => ({
  clientId,
  clock: awareness.meta.get(clientId).clock,
  state: JSON.stringify(awareness.getStates().get(clientId) ?? null)
}))

const queryAwareness = frame((e) => {
  encoding.writeVarUint(e, MESSAGE_QUERY_AWARENESS)
})

awareness.destroy()
other.destroy()

process.stdout.write(JSON.stringify({
  step1: b64(step1),
  stateVector: b64(stateVector),
  step2: b64(step2),
  step2Update: b64(step2Update),
  update: b64(update),
  updateUpdate: b64(updateUpdate),
  awareness: b64(awarenessFrame),
  awarenessPayload: b64(awarenessPayload),
  awarenessClients,
  queryAwareness: b64(queryAwareness),
  docText: doc.getText('text').toString()
}) + '\n')
