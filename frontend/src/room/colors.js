// A person's colour wherever their name shows (people, chat, review messages): the colour the server
// gave them while they are present, else their usual one from their user id (or name, in open mode).
import { colorFor, h } from '../shared.js'

export function personColor(awareness, { id, name } = {}) {
  const users = [...awareness.getStates().values()].map((state) => state?.user).filter((u) => u && typeof u.color === 'string')
  const found = (id && users.find((u) => u.id === id)) || (name && users.find((u) => u.name === name))
  return found ? found.color : colorFor(id || name)
}

/** The coloured dot before a name. */
export function swatch(color) {
  return h('span', { class: 'swatch', style: { background: color }, 'aria-hidden': 'true' })
}
