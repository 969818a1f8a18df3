// What the lobby and the room page share: who I am in this browser, recent rooms, room links, tokens.

const NAME_KEY = 'pairroom:name'
const COLOR_KEY = 'pairroom:color'
const RECENT_KEY = 'pairroom:recent'
const MAX_RECENT = 12

// The server's palette (pairroom/rooms/identity.py PALETTE): the server gives each person present a
// colour of its own; the page uses the same list for people no longer present (chat, review, replay).
export const PALETTE = [
  '#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9',
  '#332288', '#882255', '#117733', '#999933', '#664400', '#004488',
]

/** A person's usual colour from their user id: FNV-1a of its UTF-8, as the server computes it. */
export function colorFor(id) {
  let hash = 0x811c9dc5
  for (const byte of new TextEncoder().encode(String(id ?? ''))) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0
  return PALETTE[hash % PALETTE.length]
}

/** Black or white, whichever reads better on `color` (#rrggbb). */
export function textColorOn(color) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})/i.exec(color || '')
  if (!m) return '#fff'
  const [r, g, b] = m.slice(1).map((x) => { const c = parseInt(x, 16) / 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4 })
  const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
  return luminance > 0.22 ? '#111' : '#fff'
}

/** Room names the lobby creates and accepts: URL-safe, one path segment. */
export const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/

function storageGet(key) {
  try {
    return localStorage.getItem(key)
  } catch {
    return null // storage disabled (privacy mode): fall back to defaults for this page only
  }
}

function storageSet(key, value) {
  try {
    localStorage.setItem(key, value)
  } catch {
    // storage disabled or full: the value only lives as long as the page
  }
}

export function randomId(length = 10) {
  const alphabet = 'abcdefghijkmnopqrstuvwxyz23456789'
  const bytes = crypto.getRandomValues(new Uint8Array(length))
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('')
}

/** The name this browser's person gave (the lobby or the room asked), or null. */
export function savedName() {
  const name = storageGet(NAME_KEY)?.trim()
  return name ? name.slice(0, 40) : null
}

/** This browser's display identity: the name given, else a guest name for this page only. */
export function localIdentity() {
  const name = savedName() ?? 'Guest ' + randomId(4).toUpperCase()
  let color = storageGet(COLOR_KEY)
  if (!color || !/^#[0-9a-f]{6}$/i.test(color)) {
    color = PALETTE[crypto.getRandomValues(new Uint8Array(1))[0] % PALETTE.length]
    storageSet(COLOR_KEY, color)
  }
  return { name, color }
}

export function saveLocalName(name) {
  storageSet(NAME_KEY, name)
}

/**
 * The claims of a JWT, decoded without checking the signature: for display only (name, role).
 * The server verifies tokens; nothing here grants anything.
 */
export function tokenClaims(token) {
  if (!token) return null
  const part = token.split('.')[1]
  if (!part) return null
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=')
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))
    const claims = JSON.parse(new TextDecoder().decode(bytes))
    return claims && typeof claims === 'object' ? claims : null
  } catch {
    return null
  }
}

export function roomPath(room, token) {
  const path = '/r/' + encodeURIComponent(room)
  return token ? `${path}?token=${encodeURIComponent(token)}` : path
}

/** Recent rooms, newest first: [{room, path, at}]. */
export function recentRooms() {
  try {
    const list = JSON.parse(storageGet(RECENT_KEY) || '[]')
    return Array.isArray(list) ? list.filter((r) => r && typeof r.room === 'string' && typeof r.path === 'string') : []
  } catch {
    return []
  }
}

export function rememberRoom(room, path) {
  const list = recentRooms().filter((r) => r.room !== room)
  list.unshift({ room, path, at: Date.now() })
  storageSet(RECENT_KEY, JSON.stringify(list.slice(0, MAX_RECENT)))
}

export function forgetRooms() {
  storageSet(RECENT_KEY, '[]')
}

/** Tiny DOM helper: h('li', {class: 'x', onclick}, child, 'text'). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value)
    else if (key === 'class') el.className = value
    else if (key === 'style' && typeof value === 'object') {
      for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), String(v))
    }
    else el.setAttribute(key, value === true ? '' : value)
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue
    el.append(child instanceof Node ? child : String(child))
  }
  return el
}
