// What the lobby and the room page share: who I am in this browser, recent rooms, room links, tokens.

const NAME_KEY = 'pairroom:name'
const COLOR_KEY = 'pairroom:color'
const RECENT_KEY = 'pairroom:recent'
const MAX_RECENT = 12

export const PALETTE = ['#d7263d', '#1b998b', '#3a6ea5', '#e07a1f', '#8e44ad', '#0f8b8d', '#c2185b', '#5c8001']

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

/** This browser's display identity in open mode: picked once, kept in localStorage. */
export function localIdentity() {
  let name = storageGet(NAME_KEY)
  if (!name) {
    name = 'Guest ' + randomId(4).toUpperCase()
    storageSet(NAME_KEY, name)
  }
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
