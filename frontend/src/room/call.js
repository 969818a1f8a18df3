// The room's audio/video call: a browser mesh (one RTCPeerConnection per other participant) signaled
// over pairroom's /call/{room} websocket, as docs/rtc.md describes it:
//   - `join {audio, video}`; the server answers `joined {peer, peers, policy}` and the newcomer offers to
//     each of `peers`; members who join later offer to us (`peer-joined`, then their `offer`);
//   - `offer`/`answer`/`candidate` go `{to}` one peer and arrive `{from}` it;
//   - `state {muted, camera}` is shown to everyone, `peer-left` removes a tile, `policy` says who speaks.
// The server enforces who may send media (`speak: owners`): a listener offers and answers receive-only and
// cannot unmute. When the room is recorded, the server's recorder peer (`recorder: true`) gets our audio
// only and sends nothing back. Descriptions are sent once ICE gathering completes (bounded), because the
// recorder (aiortc) does not trickle; candidates found later are trickled.
//
// Loaded on demand by call-button.js the first time someone presses "Join call".
import { h } from '../shared.js'

const GATHER_WAIT_MS = 2000 // longest wait for candidates before a description goes out anyway
const STATS_MS = 500 // speaking indicators and the test hooks' frame counts
const PING_MS = 20000
const SPEAKING_LEVEL = 0.03 // RTCStats audioLevel (0..1) above which a tile shows as speaking

function wsUrl(room, token) {
  const base = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/call/${encodeURIComponent(room)}`
  return token ? `${base}?token=${encodeURIComponent(token)}` : base
}

async function iceServers(token) {
  try {
    const response = await fetch('/api/rtc-config', { headers: token ? { authorization: `Bearer ${token}` } : {} })
    if (response.ok) return (await response.json()).iceServers ?? []
    console.warn(`no ICE servers from /api/rtc-config (HTTP ${response.status}); host candidates only`)
  } catch (error) {
    console.warn('no ICE servers from /api/rtc-config; host candidates only:', error)
  }
  return []
}

/** Camera and microphone, or whatever of them this browser has and allows; null for none. */
async function localMedia() {
  const tries = [
    { audio: true, video: { width: { ideal: 640 }, height: { ideal: 360 } } },
    { audio: true, video: false },
    { audio: false, video: true },
  ]
  for (const constraints of tries) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints)
    } catch (error) {
      console.warn('getUserMedia', constraints, error.name)
    }
  }
  return null
}

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve()
  return new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === 'complete') finish() }
    const finish = () => {
      clearTimeout(timer)
      pc.removeEventListener('icegatheringstatechange', check)
      resolve()
    }
    const timer = setTimeout(finish, GATHER_WAIT_MS)
    pc.addEventListener('icegatheringstatechange', check)
  })
}

function initials(name) {
  return String(name).split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join('') || '?'
}

export class Call {
  /**
   * @param {object} options
   * @param {string} options.room
   * @param {string|null} options.token  the page's token (the server checks it; the role is for display)
   * @param {string|function} options.role  the page's live role (a function answering it), or a fixed role
   * @param {object} options.awareness   the room's y-websocket awareness (names, and our call peer id)
   * @param {HTMLElement} options.root   the #call section; its #call-join button toggles joining
   */
  constructor({ room, token, role, awareness, root }) {
    this.room = room
    this.token = token
    this.roleOf = typeof role === 'function' ? role : () => role
    this.awareness = awareness
    this.root = root
    this.joinButton = root.querySelector('#call-join')
    this.status = root.querySelector('#call-status')
    this.tiles = root.querySelector('#call-tiles')
    this.muteButton = h('button', { type: 'button', id: 'call-mute', class: 'small', 'aria-label': 'Mute microphone', 'aria-pressed': 'false', onclick: () => this.setMuted(!this.muted) }, 'Mute')
    this.cameraButton = h('button', { type: 'button', id: 'call-camera', class: 'small', 'aria-label': 'Turn camera off', 'aria-pressed': 'false', onclick: () => this.setCamera(!this.camera) }, 'Camera off')
    this.controls = h('div', { id: 'call-controls', class: 'call-controls', role: 'group', 'aria-label': 'Call controls', hidden: true }, this.muteButton, this.cameraButton)
    this.status.after(this.controls)

    this.state = 'idle' // idle | joining | joined
    this.ws = null
    this.self = null // our peer id in the call
    this.speaker = false // whether the server lets us send audio and video
    this.local = null // our MediaStream
    this.muted = true
    this.camera = false
    this.record = false
    this.speak = 'everyone' // the room's policy: everyone | owners
    this.ice = []
    this.peers = new Map() // peer id -> {info, pc, stream, tile, queued, sent, stats}
    this.timers = []

    this.joinButton.addEventListener('click', () => (this.state === 'idle' ? this.join() : this.leave()))
    this.onAwareness = () => this.renderNames()
    awareness.on('change', this.onAwareness)
  }

  // -- joining and leaving -----------------------------------------------------------------------------

  async join() {
    if (this.state !== 'idle') return
    this.setState('joining', 'Joining the call…')
    const [ice, local] = await Promise.all([iceServers(this.token), localMedia()])
    if (this.state !== 'joining') { // left while the browser was asking for the camera
      local?.getTracks().forEach((t) => t.stop())
      return
    }
    this.ice = ice
    this.local = local
    const audio = Boolean(local?.getAudioTracks().length)
    const video = Boolean(local?.getVideoTracks().length)
    this.muted = !audio
    this.camera = video
    const ws = this.ws = new WebSocket(wsUrl(this.room, this.token))
    ws.addEventListener('open', () => this.send({ type: 'join', audio, video }))
    ws.addEventListener('message', (event) => this.receive(JSON.parse(event.data)))
    ws.addEventListener('close', (event) => {
      if (this.ws !== ws) return
      this.teardown()
      this.setState('idle', `The call ended: ${event.reason || `connection closed (${event.code})`}`)
    })
    this.timers.push(setInterval(() => this.send({ type: 'ping' }), PING_MS))
    this.timers.push(setInterval(() => this.poll(), STATS_MS))
  }

  leave() {
    if (this.state === 'idle') return
    this.send({ type: 'leave' })
    const ws = this.ws
    this.teardown()
    ws?.close(1000, 'left the call')
    this.setState('idle', 'You left the call.')
  }

  teardown() {
    this.ws = null
    this.timers.forEach(clearInterval)
    this.timers = []
    for (const id of [...this.peers.keys()]) this.dropPeer(id)
    this.local?.getTracks().forEach((t) => t.stop())
    this.local = null
    this.self = null
    this.tiles.replaceChildren()
    this.controls.hidden = true
    if (this.awareness.getLocalState()) this.awareness.setLocalStateField('call', null)
  }

  setState(state, text) {
    this.state = state
    this.root.dataset.state = state
    this.joinButton.textContent = state === 'idle' ? 'Join call' : 'Leave call'
    this.joinButton.classList.toggle('primary', state === 'idle')
    this.joinButton.classList.toggle('danger', state !== 'idle')
    if (text !== undefined) this.status.textContent = text
  }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message))
  }

  // -- what the server says --------------------------------------------------------------------------

  receive(message) {
    switch (message.type) {
      case 'joined': return this.joined(message)
      case 'peer-joined': return this.peerJoined(message)
      case 'peer-left': return this.dropPeer(message.peer)
      case 'offer': return this.answerOffer(message.from, message.sdp)
      case 'answer': return this.takeAnswer(message.from, message.sdp)
      case 'candidate': return this.takeCandidate(message.from, message.candidate)
      case 'state': return this.peerState(message)
      case 'policy': return this.policy(message)
      case 'error':
        // Harmless races included: a signal to a peer that has just left is refused (4403).
        console.warn(`call: ${message.code} ${message.reason}`)
        return undefined
      default: return undefined // pong
    }
  }

  /** The page's role now: it follows `meta.roles`, and the server decides with the same live role. */
  get role() {
    return this.roleOf()
  }

  joined({ peer, peers, policy }) {
    this.self = peer
    this.record = Boolean(policy?.record)
    this.speak = policy?.speak ?? 'everyone'
    // The server has no `speaker` field for ourselves: under `owners` a newcomer who is not an owner
    // joined without media (the floor is given later, by a `policy` message naming the speakers).
    this.speaker = this.speak !== 'owners' || this.role === 'owner'
    if (!this.speaker) this.dropLocalMedia()
    this.awareness.setLocalStateField('call', peer)
    this.setState('joined')
    this.describe()
    this.controls.hidden = false
    this.tiles.append(this.tile(peer, true))
    this.showLocal()
    for (const info of peers) {
      this.addPeer(info)
      this.offer(info.peer)
    }
  }

  peerJoined(info) {
    if (info.peer === this.self || this.peers.has(info.peer)) return
    this.addPeer(info)
    if (info.recorder) this.offer(info.peer) // the recorder never offers; newcomers offer to us
  }

  peerState({ peer, muted, camera }) {
    if (peer === this.self) return
    const entry = this.peers.get(peer)
    if (!entry) return
    Object.assign(entry.info, { muted, camera })
    this.renderTile(peer)
  }

  async policy({ speak, record, speakers }) {
    this.record = Boolean(record)
    this.speak = speak
    for (const [id, entry] of this.peers) {
      entry.info.speaker = speakers.includes(id)
      this.renderTile(id)
    }
    const speaker = speakers.includes(this.self)
    if (speaker !== this.speaker) {
      // Given or taken the floor: start over with every peer, sending media or not.
      this.speaker = speaker
      if (speaker && !this.local) {
        this.local = await localMedia()
        this.muted = true // the floor is given muted: unmuting is the speaker's own choice
        this.local?.getAudioTracks().forEach((t) => { t.enabled = false })
        this.camera = Boolean(this.local?.getVideoTracks().length)
        this.send({ type: 'state', muted: true, camera: this.camera })
      } else if (!speaker) {
        this.dropLocalMedia()
      }
      this.showLocal()
      for (const id of this.peers.keys()) this.offer(id)
    }
    this.describe()
  }

  describe() {
    const parts = []
    if (!this.speaker) parts.push('Listening: in this room owners speak, and those they give the floor.')
    else if (!this.local) parts.push('No camera or microphone: others cannot see or hear you.')
    if (this.record) parts.push("This call's audio is recorded.")
    this.status.textContent = parts.join(' ')
    this.renderControls()
  }

  // -- our media ---------------------------------------------------------------------------------------

  dropLocalMedia() {
    this.local?.getTracks().forEach((t) => t.stop())
    this.local = null
    this.muted = true
    this.camera = false
  }

  track(kind) {
    return this.local?.getTracks().find((t) => t.kind === kind && t.readyState === 'live') ?? null
  }

  setMuted(muted) {
    const audio = this.track('audio')
    if (!audio || !this.speaker) return
    this.muted = muted
    audio.enabled = !muted
    this.send({ type: 'state', muted })
    this.renderControls()
    this.renderTile(this.self)
  }

  setCamera(on) {
    const video = this.track('video')
    if (!video || !this.speaker) return
    this.camera = on
    video.enabled = on // black frames while off: no renegotiation
    this.send({ type: 'state', camera: on })
    this.renderControls()
    this.renderTile(this.self)
  }

  renderControls() {
    const audio = Boolean(this.track('audio')) && this.speaker
    const video = Boolean(this.track('video')) && this.speaker
    this.muteButton.disabled = !audio
    this.muteButton.setAttribute('aria-pressed', String(this.muted))
    this.muteButton.textContent = this.muted ? 'Unmute' : 'Mute'
    this.muteButton.title = audio ? '' : this.speaker ? 'No microphone' : 'Listeners cannot unmute'
    this.cameraButton.disabled = !video
    this.cameraButton.setAttribute('aria-pressed', String(!this.camera))
    this.cameraButton.textContent = this.camera ? 'Camera off' : 'Camera on'
    this.cameraButton.title = video ? '' : this.speaker ? 'No camera' : 'Listeners cannot send video'
  }

  showLocal() {
    const tile = this.tiles.querySelector(`[data-peer="${CSS.escape(this.self)}"]`)
    if (!tile) return
    const video = tile.querySelector('video')
    video.srcObject = this.local
    if (this.local) video.play().catch((error) => console.warn('local preview:', error.name))
    this.renderTile(this.self)
  }

  // -- peers -------------------------------------------------------------------------------------------

  addPeer(info) {
    const entry = { info, pc: null, stream: new MediaStream(), tile: null, queued: [], sent: false, stats: {} }
    this.peers.set(info.peer, entry)
    if (!info.recorder) {
      entry.tile = this.tile(info.peer, false)
      this.tiles.append(entry.tile)
      entry.tile.querySelector('video').srcObject = entry.stream
    }
  }

  dropPeer(id) {
    const entry = this.peers.get(id)
    if (!entry) return
    this.peers.delete(id)
    entry.pc?.close()
    entry.tile?.remove()
  }

  connection(id) {
    const entry = this.peers.get(id)
    entry.pc?.close() // a new offer starts the connection over
    const pc = entry.pc = new RTCPeerConnection({ iceServers: this.ice, bundlePolicy: 'max-bundle' })
    entry.queued = []
    entry.sent = false
    pc.addEventListener('icecandidate', ({ candidate }) => {
      // Before the description goes out its candidates are in it; later ones are trickled.
      if (candidate && entry.sent && entry.pc === pc) this.send({ type: 'candidate', to: id, candidate: candidate.toJSON() })
    })
    pc.addEventListener('track', ({ track }) => {
      for (const old of entry.stream.getTracks().filter((t) => t.kind === track.kind)) entry.stream.removeTrack(old)
      entry.stream.addTrack(track)
      const video = entry.tile?.querySelector('video')
      video?.play().catch((error) => console.warn('remote media:', error.name))
    })
    pc.addEventListener('connectionstatechange', () => this.renderTile(id))
    return pc
  }

  async offer(id) {
    const entry = this.peers.get(id)
    if (!entry) return
    const pc = this.connection(id)
    if (entry.info.recorder) {
      // The recorder takes our voice and sends nothing: audio only, send only, and only if we speak.
      const audio = this.speaker ? this.track('audio') : null
      if (!audio) { pc.close(); entry.pc = null; return }
      pc.addTransceiver(audio, { direction: 'sendonly', streams: [this.local] })
    } else {
      for (const kind of ['audio', 'video']) {
        const track = this.speaker ? this.track(kind) : null
        pc.addTransceiver(track ?? kind, { direction: track ? 'sendrecv' : 'recvonly', streams: track ? [this.local] : [] })
      }
    }
    try {
      await pc.setLocalDescription(await pc.createOffer())
      await gathered(pc)
      if (entry.pc !== pc) return
      this.send({ type: 'offer', to: id, sdp: pc.localDescription.sdp })
      entry.sent = true
    } catch (error) {
      console.warn(`call: no offer to ${id}:`, error)
    }
  }

  async answerOffer(id, sdp) {
    let entry = this.peers.get(id)
    if (!entry) return // gone already
    const pc = this.connection(id)
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp })
      for (const transceiver of pc.getTransceivers()) {
        const track = this.speaker ? this.track(transceiver.receiver.track.kind) : null
        if (!track) continue
        await transceiver.sender.replaceTrack(track)
        transceiver.sender.setStreams?.(this.local)
        transceiver.direction = 'sendrecv'
      }
      await pc.setLocalDescription(await pc.createAnswer())
      await this.flushCandidates(entry, pc)
      await gathered(pc)
      entry = this.peers.get(id)
      if (entry?.pc !== pc) return
      this.send({ type: 'answer', to: id, sdp: pc.localDescription.sdp })
      entry.sent = true
    } catch (error) {
      console.warn(`call: could not answer ${id}:`, error)
    }
  }

  async takeAnswer(id, sdp) {
    const entry = this.peers.get(id)
    if (!entry?.pc) return
    const pc = entry.pc
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp })
      await this.flushCandidates(entry, pc)
    } catch (error) {
      console.warn(`call: bad answer from ${id}:`, error)
    }
  }

  async takeCandidate(id, candidate) {
    const entry = this.peers.get(id)
    if (!entry?.pc || !candidate) return
    if (!entry.pc.remoteDescription) {
      entry.queued.push(candidate) // it overtook the description it belongs to
      return
    }
    try {
      await entry.pc.addIceCandidate(candidate)
    } catch (error) {
      console.warn(`call: candidate from ${id} refused:`, error)
    }
  }

  async flushCandidates(entry, pc) {
    const queued = entry.queued
    entry.queued = []
    for (const candidate of queued) {
      await pc.addIceCandidate(candidate).catch((error) => console.warn('call: queued candidate refused:', error))
    }
  }

  // -- tiles ------------------------------------------------------------------------------------------

  tile(id, self) {
    const video = h('video', { autoplay: true, playsinline: true, 'aria-hidden': 'true' })
    video.muted = self // our own voice is not played back to us
    const enlarge = h('button', { type: 'button', class: 'small call-enlarge', 'aria-pressed': 'false', onclick: () => {
      const big = enlarge.getAttribute('aria-pressed') !== 'true'
      for (const other of this.tiles.querySelectorAll('.call-tile.enlarged')) { // one big tile at a time
        other.classList.remove('enlarged')
        other.querySelector('.call-enlarge')?.setAttribute('aria-pressed', 'false')
      }
      tile.classList.toggle('enlarged', big)
      enlarge.setAttribute('aria-pressed', String(big))
    } }, '⤢')
    const tile = h('li', { class: `call-tile${self ? ' self' : ''}`, 'data-peer': id },
      video, enlarge,
      h('span', { class: 'call-avatar', 'aria-hidden': 'true' }),
      h('span', { class: 'call-label' },
        h('span', { class: 'call-name' }),
        h('span', { class: 'call-muted', title: 'Muted' }, 'muted'),
        h('span', { class: 'call-conn hint' })))
    return tile
  }

  nameOf(id) {
    if (id === this.self) return (this.awareness.getLocalState()?.user?.name ?? 'You') + ' (you)'
    for (const state of this.awareness.getStates().values()) {
      if (state?.call === id && state.user?.name) return String(state.user.name)
    }
    return String(this.peers.get(id)?.info.user?.name ?? 'Someone')
  }

  renderNames() {
    for (const tile of this.tiles.children) this.renderTile(tile.dataset.peer)
  }

  renderTile(id) {
    const tile = this.tiles.querySelector(`[data-peer="${CSS.escape(id ?? '')}"]`)
    if (!tile) return
    const self = id === this.self
    const entry = self ? null : this.peers.get(id)
    const muted = self ? this.muted : Boolean(entry?.info.muted)
    const camera = self ? this.camera && Boolean(this.track('video')) : Boolean(entry?.info.camera)
    const conn = self ? 'connected' : entry?.pc?.connectionState ?? 'new'
    const name = this.nameOf(id)
    tile.dataset.muted = String(muted)
    tile.dataset.camera = String(camera)
    tile.dataset.conn = conn
    tile.setAttribute('aria-label', `${name}${muted ? ', muted' : ''}${camera ? '' : ', camera off'}${conn === 'connected' ? '' : `, ${conn}`}`)
    tile.querySelector('.call-name').textContent = name
    tile.querySelector('.call-enlarge').setAttribute('aria-label', `Enlarge ${name.replace(/ \(you\)$/, '')}’s tile`)
    tile.querySelector('.call-avatar').textContent = initials(name.replace(/ \(you\)$/, ''))
    tile.querySelector('.call-conn').textContent = conn === 'connected' ? '' : conn === 'new' ? 'connecting…' : conn
    this.renderFloor(tile, id, entry, name)
  }

  /** Owners under `speak: owners` give or take the floor of each other participant. */
  renderFloor(tile, id, entry, name) {
    let button = tile.querySelector('.call-floor')
    if (!entry || entry.info.owner || this.role !== 'owner' || this.speak !== 'owners') {
      button?.remove()
      return
    }
    if (!button) {
      button = h('button', { type: 'button', class: 'small call-floor', onclick: () => {
        const info = this.peers.get(id)?.info
        if (info) this.send({ type: 'allow', peer: id, speak: !info.speaker })
      } })
      tile.querySelector('.call-label').append(button)
    }
    const speaker = Boolean(entry.info.speaker)
    button.textContent = speaker ? 'Take floor' : 'Give floor'
    button.setAttribute('aria-pressed', String(speaker))
    button.setAttribute('aria-label', `Let ${name} speak`)
  }

  // -- stats: speaking indicators, and what the tests read ------------------------------------------

  async poll() {
    let localLevel = 0
    for (const [id, entry] of this.peers) {
      const pc = entry.pc
      if (!pc || pc.connectionState === 'closed') continue
      const stats = { connectionState: pc.connectionState, framesDecoded: 0, frameWidth: 0, audioLevel: 0, audioPackets: 0 }
      try {
        for (const report of (await pc.getStats()).values()) {
          if (report.type === 'inbound-rtp' && report.kind === 'video') {
            stats.framesDecoded += report.framesDecoded ?? 0
            stats.frameWidth = Math.max(stats.frameWidth, report.frameWidth ?? 0)
          } else if (report.type === 'inbound-rtp' && report.kind === 'audio') {
            stats.audioLevel = Math.max(stats.audioLevel, report.audioLevel ?? 0)
            stats.audioPackets += report.packetsReceived ?? 0
          } else if (report.type === 'media-source' && report.kind === 'audio') {
            localLevel = Math.max(localLevel, report.audioLevel ?? 0)
          }
        }
      } catch {
        continue // closed while we asked
      }
      entry.stats = stats
      entry.tile?.classList.toggle('speaking', !entry.info.muted && stats.audioLevel > SPEAKING_LEVEL)
    }
    const mine = this.self && this.tiles.querySelector(`[data-peer="${CSS.escape(this.self)}"]`)
    mine?.classList.toggle('speaking', !this.muted && localLevel > SPEAKING_LEVEL)
  }

  /** Fresh stats, then `view`: `await window.pairroom.call.snapshot()`. */
  async snapshot() {
    await this.poll()
    return this.view
  }

  /** A plain picture of the call for tests and the console, with the stats of the last poll. */
  get view() {
    const peers = {}
    for (const [id, entry] of this.peers) {
      peers[id] = {
        name: entry.info.recorder ? 'Recorder' : this.nameOf(id),
        recorder: Boolean(entry.info.recorder),
        muted: Boolean(entry.info.muted),
        camera: Boolean(entry.info.camera),
        speaker: entry.info.speaker !== false,
        connectionState: entry.pc?.connectionState ?? 'none',
        ...entry.stats,
      }
    }
    return { state: this.state, self: this.self, speaker: this.speaker, muted: this.muted, camera: this.camera, record: this.record, peers }
  }
}

/** Start the call UI in `root` and join at once (the first "Join call" press loaded this module). */
export function startCall(options) {
  const call = new Call(options)
  if (window.pairroom) window.pairroom.call = call
  call.join()
  return call
}
