// The connection indicator: connected, connecting, reconnecting, offline, each with "unsynced edits"
// while local changes have not reached the server, or refused when the server turned the token away.
// A page opened while the server is out of reach (from the offline shell and the IndexedDB copy) is
// offline until its first sync.

/**
 * Tracks the provider and the browser's network state and calls ``render({state, label})``.
 * Local edits made while the socket is down count as unsynced until the next full sync: on reconnect
 * the client answers the server's sync step 1 with everything the server lacks before the server's
 * own step 2 arrives, so `sync` true means they were sent.
 */
export class ConnectionStatus {
  constructor(provider, doc, localOrigins, render) {
    this.provider = provider
    this.render = render
    this.everSynced = false
    this.unsynced = false
    this.refused = null
    this.unreachable = false // this page has not reached the server since it opened (it came from the offline shell)
    doc.on('update', (_update, origin) => {
      if (origin === provider || localOrigins.includes(origin)) return
      if (!provider.wsconnected || !provider.synced) {
        if (!this.unsynced) {
          this.unsynced = true
          this.update()
        }
      }
    })
    provider.on('status', () => this.update())
    for (const failed of ['connection-close', 'connection-error']) {
      provider.on(failed, () => {
        if (!this.everSynced && !this.unreachable) {
          this.unreachable = true
          this.update()
        }
      })
    }
    provider.on('sync', (synced) => {
      if (synced) {
        this.everSynced = true
        this.unsynced = false
      }
      this.update()
    })
    provider.on('closed', ({ code, reason }) => {
      this.refused = reason || `closed (${code})`
      this.update()
    })
    // The browser knows it is offline long before a socket times out: stop trying until it is back.
    window.addEventListener('offline', () => {
      provider.disconnect()
      this.update()
    })
    window.addEventListener('online', () => {
      provider.connect()
      this.update()
    })
    this.update()
  }

  get state() {
    if (this.refused && !this.provider.wsconnected) return 'refused'
    if (this.provider.wsconnected && this.provider.synced) return 'connected'
    if (!navigator.onLine || (this.unreachable && !this.everSynced)) return 'offline'
    return this.everSynced ? 'reconnecting' : 'connecting'
  }

  update() {
    const state = this.state
    const labels = {
      connected: 'Connected',
      connecting: 'Connecting…',
      reconnecting: 'Reconnecting…',
      offline: this.unreachable && navigator.onLine ? 'Offline · the server is out of reach' : 'Offline',
      refused: `Not allowed in: ${this.refused}`,
    }
    let label = labels[state]
    if (this.unsynced && state !== 'connected') label += ' · unsynced edits'
    this.render({ state, unsynced: this.unsynced && state !== 'connected', label })
  }
}
