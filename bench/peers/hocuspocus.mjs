#!/usr/bin/env node
// Hocuspocus as a benchmark peer: in memory, no extensions, default settings otherwise.
//
//   node hocuspocus.mjs PORT [HOST]
//
// Prints one JSON line {"msg": "listening", "port": N} once it accepts connections.
import { Server } from '@hocuspocus/server'

const port = Number.parseInt(process.argv[2] || '0', 10)
const host = process.argv[3] || '127.0.0.1'

const server = new Server({ port, address: host, quiet: true, extensions: [] })
await server.listen()
console.log(JSON.stringify({ msg: 'listening', port: server.address.port, server: 'hocuspocus' }))
