// Chat over the `chat` Y.Array (docs/doc-schema.md). Clients append {id, text, name, at}; the server
// stamps author, name and time from the sender's token (in open mode it keeps the name and a sane time).
import { h, randomId } from '../shared.js'
import { swatch } from './colors.js'

export const MAX_CHAT_TEXT = 4096

export function appendChat(chat, text, name) {
  chat.push([{ id: randomId(12), text: text.slice(0, MAX_CHAT_TEXT), name, at: Date.now() }])
}

/** Chat through the server's HTTP API (for viewers, who cannot write the document). */
export async function postChat(room, token, text, name) {
  const response = await fetch(`/api/rooms/${encodeURIComponent(room)}/chat`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ text: text.slice(0, MAX_CHAT_TEXT), name }),
  })
  if (!response.ok) {
    const body = await response.json().catch(() => ({}))
    throw new Error(body.error || `HTTP ${response.status}`)
  }
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' })

/** ``colorOf({id, name})`` gives each author's colour. */
export function renderChat(log, chat, colorOf) {
  const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40
  log.replaceChildren(
    ...chat.toArray().filter((m) => m && typeof m.text === 'string').map((m) =>
      h('li', { 'data-id': m.id },
        swatch(colorOf({ id: m.author, name: m.name })),
        h('span', { class: 'chat-name' }, String(m.name ?? 'someone')),
        typeof m.at === 'number' ? h('time', { class: 'hint', datetime: new Date(m.at).toISOString() }, timeFormat.format(m.at)) : null,
        h('p', { class: 'chat-text' }, m.text)),
    ),
  )
  if (nearBottom) log.scrollTop = log.scrollHeight
}
