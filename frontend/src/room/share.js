// The Share dialog: the links that get someone into this room. In open mode the room link is all
// anyone needs. With tokens, an owner gets a fresh link per role from the invites endpoint (each person
// who opens one is asked for their name); anyone else is told who can hand links out, because the
// bare room link would let nobody in and their own link carries who they are.
import { h, roomPath } from '../shared.js'

const ROLES = [
  ['editor', 'Editor link', 'edits files and runs code'],
  ['reviewer', 'Reviewer link', 'reads and comments'],
  ['viewer', 'Viewer link', 'follows along read-only'],
]

export class ShareDialog {
  /** ``role()`` is this page's role now; ``owners()`` the names of the owners present. */
  constructor({ dialog, body, open, room, token, api, role, owners }) {
    Object.assign(this, { dialog, body, room, token, api, role, owners })
    this.invites = null // minted once per page: each opening shows the same links
    open.addEventListener('click', () => this.show())
    dialog.addEventListener('click', (event) => { if (event.target === dialog) dialog.close() })
  }

  async show() {
    this.dialog.showModal()
    if (!this.token) return this.render(this.openMode())
    if (this.role() !== 'owner') return this.render(this.notOwner())
    if (!this.invites) {
      this.render([h('p', { class: 'hint' }, 'Making links…')])
      try {
        this.invites = (await this.api('POST', 'invites', { roles: ROLES.map(([r]) => r) })).invites
      } catch (error) {
        return this.render([h('p', { class: 'error', role: 'alert' }, `No links: ${error.message}`)])
      }
    }
    this.render(this.ownerLinks())
  }

  render(children) {
    this.body.replaceChildren(...children)
    this.dialog.querySelector('input, button.copy')?.focus()
  }

  openMode() {
    const url = new URL(roomPath(this.room), location.origin).href
    return [h('p', {}, 'Anyone with this link can join and edit.'), this.row('share-room', 'Room link', url)]
  }

  ownerLinks() {
    const byRole = new Map(this.invites.map((i) => [i.role, i.url]))
    return [
      h('p', {}, 'Send each person the link for what they should do. Whoever opens one is asked for their name; you can change their role later in the people list.'),
      ...ROLES.filter(([role]) => byRole.has(role)).map(([role, label, what]) => this.row(`share-${role}`, label, byRole.get(role), what)),
      h('p', { class: 'hint' }, 'These links work for 8 hours. Your own link is yours: it carries who you are.'),
    ]
  }

  notOwner() {
    const owners = this.owners()
    const who = owners.length ? owners.join(' or ') : 'the room’s owner'
    return [
      h('p', {}, `Only an owner hands out links to this room: ask ${who} for one.`),
      h('p', { class: 'hint' }, 'The room’s address alone lets nobody in here, and your own link carries who you are, so it is not for sharing.'),
    ]
  }

  row(id, label, url, what) {
    const input = h('input', { id, readonly: true, value: url })
    const status = h('span', { class: 'hint copy-status', role: 'status' })
    const copy = async () => {
      try {
        await navigator.clipboard.writeText(url)
        status.textContent = 'Copied.'
      } catch {
        input.select()
        status.textContent = 'Press Ctrl+C to copy.'
      }
    }
    return h('div', { class: 'share-row' },
      h('label', { for: id }, label, what ? h('span', { class: 'hint' }, ` · ${what}`) : null),
      h('div', { class: 'row' }, input, h('button', { type: 'button', class: 'copy', 'aria-label': `Copy the ${label.toLowerCase()}`, onclick: copy }, 'Copy')),
      status)
  }
}
