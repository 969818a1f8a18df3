// The people list, from awareness: everyone's `user` {name, color} (stamped by the server once it
// knows identities, chosen by each browser in open mode) and the file they have open.
import { h } from '../shared.js'

export function renderPeople(list, count, awareness, myRole) {
  const me = awareness.clientID
  const states = awareness.getStates()
  const people = [...states]
    .filter(([, state]) => state && state.user)
    .sort(([a, sa], [b, sb]) => (a === me ? -1 : b === me ? 1 : String(sa.user.name).localeCompare(sb.user.name)))
  // Viewers' presence goes only to participants; everyone gets the server's count of them, published
  // under its own client id as {pairroom: {viewers: n}}. Show the viewers not listed by name.
  const summary = [...states.values()].find((state) => state && state.pairroom)?.pairroom
  const listedViewers = people.filter(([id, state]) => (id === me ? myRole : state.user.role) === 'viewer').length
  const unlisted = Math.max(0, (Number(summary?.viewers) || 0) - listedViewers)
  count.textContent = `(${people.length + unlisted})`
  list.replaceChildren(
    ...people.map(([id, state]) => {
      const { name, color, role } = state.user
      return h('li', { 'data-client': id },
        h('span', { class: 'swatch', style: { background: color || '#888' }, 'aria-hidden': 'true' }),
        h('span', { class: 'person-name' }, String(name ?? 'Anonymous')),
        id === me ? h('span', { class: 'hint' }, ' (you)') : null,
        role ? h('span', { class: 'badge small' }, role) : null,
        state.file ? h('span', { class: 'person-file hint', title: state.file }, state.file) : null,
      )
    }),
    ...(unlisted ? [h('li', { class: 'hint' }, unlisted === 1 ? '1 more viewer' : `${unlisted} more viewers`)] : []),
  )
}
