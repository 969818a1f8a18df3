import './style.css'
import { ROOM_PATTERN, forgetRooms, h, recentRooms, roomPath, saveLocalName, savedName } from './shared.js'

const $ = (id) => document.getElementById(id)

/**
 * A creator token (``pairroom token --creator --url …``) arrives in the lobby's link as ``?creator=``;
 * it is kept for this tab and sent when a room is created. Servers with an open lobby need none.
 */
function creatorToken() {
  const url = new URL(location.href)
  const fromLink = url.searchParams.get('creator')
  if (fromLink) {
    sessionStorage.setItem('pairroom:creator', fromLink)
    url.searchParams.delete('creator') // not left in the address bar or the history
    history.replaceState(null, '', url)
  }
  return sessionStorage.getItem('pairroom:creator')
}
const CREATOR = creatorToken()

// Your name: rooms show it to the others (an owner link carries it; links for a role ask for it).
$('your-name').value = savedName() ?? ''
$('your-name').addEventListener('change', () => {
  const name = $('your-name').value.trim()
  if (!name) return
  saveLocalName(name)
  $('you-status').textContent = `Saved: rooms you join from this browser show you as ${name}.`
})
$('you-form').addEventListener('submit', (event) => event.preventDefault())

/** The name typed, saved; else null with the field showing why. */
function yourName() {
  const name = $('your-name').value.trim().slice(0, 40)
  if (!name) {
    $('your-name').reportValidity()
    $('your-name').focus()
    return null
  }
  saveLocalName(name)
  return name
}

const INVITE_ROLES = {
  owner: ['Owner link', 'yours: edits, runs and changes roles'],
  editor: ['Editor link', 'for the people who write code with you'],
  viewer: ['Viewer link', 'read-only, for an audience'],
}

/** Copy ``input``'s value, saying so in ``status``; where the clipboard is refused, select it instead. */
async function copyFrom(input, status, what) {
  try {
    await navigator.clipboard.writeText(input.value)
    status.textContent = `${what} copied.`
  } catch {
    input.select()
    status.textContent = `Select the ${what.toLowerCase()} and copy it.`
  }
}

function showOpenRoom(room, url) {
  $('created-link').value = url
  $('open-created').href = roomPath(room)
  $('created').hidden = false
  $('copy-status').textContent = ''
  $('open-created').focus()
}

/** With a server secret: one link per role, each with its token, each copyable. */
function showInvites(invites) {
  $('invite-list').replaceChildren(
    ...invites.map(({ role, url }) => {
      const [label, what] = INVITE_ROLES[role] ?? [`${role} link`, '']
      const id = `invite-${role}`
      const input = h('input', { id, readonly: true, value: url })
      return h('li', { class: 'invite', 'data-role': role },
        h('label', { for: id }, label, ' ', h('span', { class: 'hint' }, what)),
        h('div', { class: 'row' },
          input,
          h('button', { type: 'button', 'aria-label': `Copy the ${role} link`,
            onclick: () => copyFrom(input, $('invite-status'), label) }, 'Copy'),
          role === 'owner' ? h('a', { class: 'button primary', id: 'open-owner', href: new URL(url).pathname + new URL(url).search }, 'Open room') : null,
        ),
      )
    }),
  )
  $('invite-status').textContent = ''
  $('created-invites').hidden = false
  $('open-owner')?.focus()
}

$('create-form').addEventListener('submit', async (event) => {
  event.preventDefault()
  const wanted = $('create-name').value.trim()
  if (wanted && !ROOM_PATTERN.test(wanted)) return // the input's pattern already told the user
  const name = yourName()
  if (!name) return
  $('created').hidden = true
  $('created-invites').hidden = true
  $('create-error').textContent = ''
  const repository = $('create-git').value.trim()
  const button = event.target.querySelector('button[type=submit]')
  if (repository) $('create-status').textContent = 'Cloning the repository…'
  button.disabled = true
  let answer
  try {
    const response = await fetch('/api/rooms', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(CREATOR ? { authorization: `Bearer ${CREATOR}` } : {}),
      },
      body: JSON.stringify({ room: wanted || undefined, name, ...(repository ? { git: { url: repository } } : {}) }),
    })
    answer = await response.json().catch(() => null)
    if (!response.ok) throw new Error(answer?.error || `HTTP ${response.status}`)
  } catch (error) {
    $('create-error').textContent = `The room was not created: ${error.message}`
    return
  } finally {
    button.disabled = false
    $('create-status').textContent = ''
  }
  sessionStorage.setItem(`pairroom:created:${answer.room}`, '1') // the room page seeds a first file
  if (answer.open) showOpenRoom(answer.room, answer.url)
  else showInvites(answer.invites)
})

$('copy-created').addEventListener('click', () => copyFrom($('created-link'), $('copy-status'), 'Link'))

/** Where a pasted link or a bare room name leads: a same-origin path, or null. */
function joinTarget(text) {
  if (ROOM_PATTERN.test(text)) return roomPath(text)
  let url
  try {
    url = new URL(text, location.origin)
  } catch {
    return null
  }
  const match = url.pathname.match(/^\/r\/([^/]+)\/?$/)
  if (!match) return null
  const token = url.searchParams.get('token')
  return roomPath(decodeURIComponent(match[1]), token)
}

$('join-link').placeholder = `${location.origin}/r/…` // this server's own address, as links to it read

$('join-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const target = joinTarget($('join-link').value.trim())
  if (!target) {
    $('join-error').textContent = 'That is not a room link (…/r/name) or a room name.'
    return
  }
  if (!yourName()) return
  location.assign(target)
})

function renderRecent() {
  const rooms = recentRooms()
  const when = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' })
  $('recent-list').replaceChildren(
    ...rooms.map((r) =>
      h('li', {}, h('a', { href: r.path }, r.room), ' ', h('span', { class: 'hint' }, when.format(r.at))),
    ),
  )
  $('recent-empty').hidden = rooms.length > 0
  $('forget-recent').hidden = rooms.length === 0
}

$('forget-recent').addEventListener('click', () => {
  forgetRooms()
  renderRecent()
  $('create-name').focus()
})

renderRecent()
