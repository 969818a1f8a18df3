// The page shown instead of the room when the server turns the connection away for good (a 44xx
// close: y-websocket stops reconnecting): what happened, in words, and what to do about it.
import { h } from '../shared.js'

/** {title, text, hint} for a close code and the server's reason. */
export function explainRefusal(code, reason, { hasToken }) {
  const why = String(reason || '')
  if (code === 4401 && /missing/.test(why)) {
    return {
      title: 'This room needs an invitation link',
      text: 'This server lets people in by personal links: the room’s address alone is not enough.',
      hint: 'Open the link you were sent (it ends in ?token=…), or ask the room’s owner for one.',
    }
  }
  if (code === 4401 && /expired/.test(why)) {
    return {
      title: 'Your link has expired',
      text: 'Links to this room work for a limited time, and this one’s time is up.',
      hint: 'Ask the room’s owner for a new link: in the room, Share makes one.',
    }
  }
  if (code === 4401) {
    return {
      title: 'This link is not valid here',
      text: `The server could not read the link’s token (${why || 'invalid token'}).`,
      hint: 'The link may have been cut short when it was copied, or made for another server. Open the whole link again, or ask the room’s owner for a new one.',
    }
  }
  if (code === 4403 && /another room/.test(why)) {
    return {
      title: 'This link is for another room',
      text: 'The link’s token lets you into a different room than this address names.',
      hint: 'Open the link exactly as you were sent it, or ask this room’s owner for a link to it.',
    }
  }
  if (code === 4404) {
    return {
      title: 'This room was deleted',
      text: 'An owner deleted the room and its history. The copy this browser kept has been cleared too.',
      hint: 'Create a new room from the lobby, or ask whoever deleted it where the work went on.',
    }
  }
  if (code === 4409) {
    return {
      title: 'This room is full',
      text: 'The room has as many people as the server allows.',
      hint: 'Try again when someone has left.',
    }
  }
  return {
    title: 'The server closed the connection',
    text: `It said: ${why || `close code ${code}`}.`,
    hint: hasToken ? 'Reload to try again; if it happens again, ask the room’s owner for a new link.' : 'Reload to try again.',
  }
}

/** Replace the room with the explanation (the room underneath would look editable and save nothing). */
export function showRefusal(els, code, reason, { hasToken }) {
  const { title, text, hint } = explainRefusal(code, reason, { hasToken })
  for (const el of els.hide) el.hidden = true
  els.gate.hidden = false
  els.gate.dataset.code = String(code)
  els.title.textContent = title
  els.body.replaceChildren(
    h('p', {}, text),
    h('p', { class: 'hint' }, hint),
    h('div', { class: 'row gate-actions' },
      h('a', { class: 'button primary', href: '/' }, 'Go to the lobby'),
      code === 4404 ? null : h('button', { type: 'button', onclick: () => location.reload() }, 'Try again')),
  )
  document.title = `${title} · pairroom`
  els.gate.querySelector('a, button')?.focus()
}
