import './style.css'
import { ROOM_PATTERN, forgetRooms, h, randomId, recentRooms, roomPath } from './shared.js'

const $ = (id) => document.getElementById(id)

$('create-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const wanted = $('create-name').value.trim()
  const room = wanted || randomId(10)
  if (!ROOM_PATTERN.test(room)) return // the input's pattern already told the user
  sessionStorage.setItem(`pairroom:created:${room}`, '1') // the room page seeds a first file
  const link = new URL(roomPath(room), location.origin).href
  $('created-link').value = link
  $('open-created').href = roomPath(room)
  $('created').hidden = false
  $('copy-status').textContent = ''
  $('open-created').focus()
})

$('copy-created').addEventListener('click', async () => {
  try {
    await navigator.clipboard.writeText($('created-link').value)
    $('copy-status').textContent = 'Link copied.'
  } catch {
    $('created-link').select()
    $('copy-status').textContent = 'Select the link and copy it.'
  }
})

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

$('join-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const target = joinTarget($('join-link').value.trim())
  if (!target) {
    $('join-error').textContent = 'That is not a room link (…/r/name) or a room name.'
    return
  }
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
