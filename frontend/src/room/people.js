// The people list, raised hands and follow mode, from awareness (presence in docs/doc-schema.md).
//
// Everyone's `user` {name, color} is stamped by the server once it knows identities (chosen by each
// browser in open mode). Each browser publishes the file it has open, its `viewport` (the lines in
// view), its raised `hand` with `handAt` (when it went up), whom it is `following`, and, for an
// owner, `leading`: the time they asked everyone to follow them.
//
// Following someone opens their file and scrolls to their viewport whenever they move, until you
// type, open another file yourself, or press *Stop following*. An owner's `leading` starts a follow
// in every other browser once per request (a new time is a new request), with a banner to stop it.
import { EditorView } from '@codemirror/view'
import { h } from '../shared.js'

const VIEWPORT_EVERY_MS = 80 // at most this often while scrolling; the server relays presence every 20 ms

export class People {
  /**
   * ``els``: {list, count, hand, lead, banner, bannerText, stop}. ``hooks``: {openFile(path),
   * currentPath(), hasFile(path)}. ``role`` is this page's role, ``myId`` its user id when a token gave one.
   */
  constructor({ awareness, view, role, myId, els, hooks, changeRole }) {
    this.changeRole = changeRole // (userId, role) -> Promise: an owner's change of someone's role (the roles endpoint)
    this.roleErrors = new Map() // user id -> why the last change failed
    this.awareness = awareness
    this.view = view
    this.role = role
    this.myId = myId ?? null
    this.els = els
    this.hooks = hooks
    this.following = null // {clientId, lead, viewport: the last one applied}
    this.leads = new Map() // owner's client id -> the `leading` time already acted on
    this.viewportTimer = null

    els.hand.addEventListener('click', () => this.toggleHand())
    els.stop.addEventListener('click', () => this.stop())
    els.lead.hidden = role !== 'owner'
    els.lead.addEventListener('click', () => this.toggleLead())
    view.scrollDOM.addEventListener('scroll', () => this.publishViewport(), { passive: true })
    awareness.on('change', () => this.changed())
    this.changed()
  }

  /** The page's live role changed (an owner's change in ``meta.roles``). */
  setRole(role) {
    this.role = role
    this.els.lead.hidden = role !== 'owner'
    if (role !== 'owner' && typeof this.awareness.getLocalState()?.leading === 'number') {
      this.awareness.setLocalStateField('leading', null)
    }
    this.render()
  }

  // -- what this browser publishes ----------------------------------------------------------------

  toggleHand() {
    const state = this.awareness.getLocalState() ?? {}
    const up = !state.hand
    // one update for both fields: others never see a hand up without the time it went up
    this.awareness.setLocalState({ ...state, hand: up, handAt: up ? Date.now() : null })
  }

  toggleLead() {
    const leading = this.awareness.getLocalState()?.leading
    this.awareness.setLocalStateField('leading', typeof leading === 'number' ? null : Date.now())
  }

  /** The lines in view, soon: scrolling fires often, followers need a few updates a second. */
  publishViewport() {
    if (this.viewportTimer) return
    this.viewportTimer = setTimeout(() => {
      this.viewportTimer = null
      const viewport = this.hooks.currentPath() ? visibleLines(this.view) : null
      const old = this.awareness.getLocalState()?.viewport
      if (viewport?.from !== old?.from || viewport?.to !== old?.to) this.awareness.setLocalStateField('viewport', viewport)
    }, VIEWPORT_EVERY_MS)
  }

  // -- follow -------------------------------------------------------------------------------------

  /** A stable name for a person in `following`: their user id, or in open mode their client id. */
  idOf(clientId) {
    const id = this.awareness.getStates().get(clientId)?.user?.id
    return typeof id === 'string' ? id : `client:${clientId}`
  }

  follow(clientId, { lead = false } = {}) {
    this.following = { clientId, lead, viewport: null }
    this.awareness.setLocalStateField('following', this.idOf(clientId))
    this.apply()
    this.render()
  }

  stop() {
    if (!this.following) return
    this.following = null
    this.awareness.setLocalStateField('following', null)
    this.render()
  }

  /** Your own keys or file choice end a follow. */
  editorUpdate(update) {
    if (!this.following) return
    const typed = update.transactions.some((tr) =>
      tr.docChanged && ['input', 'delete', 'undo', 'redo', 'move'].some((event) => tr.isUserEvent(event)))
    if (typed) this.stop()
  }

  openedByYou() {
    this.stop()
  }

  /** Go where the person followed is: their file, then their viewport. */
  apply() {
    const f = this.following
    if (!f) return
    const state = this.awareness.getStates().get(f.clientId)
    if (!state?.user) {
      this.stop() // they left
      return
    }
    const file = typeof state.file === 'string' ? state.file : null
    if (file && file !== this.hooks.currentPath() && this.hooks.hasFile(file)) {
      this.hooks.openFile(file)
      f.viewport = null
    }
    const viewport = state.viewport
    if (file && file === this.hooks.currentPath() && Number.isInteger(viewport?.from)) {
      const key = `${file}:${viewport.from}:${viewport.to}`
      if (key !== f.viewport) {
        f.viewport = key
        const doc = this.view.state.doc
        const line = doc.line(Math.min(Math.max(1, viewport.from), doc.lines))
        this.view.dispatch({ effects: EditorView.scrollIntoView(line.from, { y: 'start', yMargin: 0 }) })
      }
    }
  }

  // -- reacting to presence -----------------------------------------------------------------------

  changed() {
    const me = this.awareness.clientID
    const states = this.awareness.getStates()
    // An owner asking everyone to follow: once per request, for everyone else.
    for (const [id, state] of states) {
      if (id === me) continue
      const at = state?.user?.role === 'owner' && typeof state.leading === 'number' ? state.leading : null
      if (at === null) {
        this.endLead(id)
      } else if (this.leads.get(id) !== at) {
        this.leads.set(id, at)
        this.follow(id, { lead: true })
      }
    }
    for (const id of [...this.leads.keys()]) if (!states.has(id)) this.endLead(id)
    this.apply()
    this.render()
  }

  endLead(clientId) {
    if (!this.leads.delete(clientId)) return
    if (this.following?.clientId === clientId && this.following.lead) this.stop()
  }

  // -- the list -----------------------------------------------------------------------------------

  /** The person's role: a badge, or for an owner looking at someone else a menu that changes it live. */
  roleControl(clientId, user, label) {
    const role = typeof user.role === 'string' ? user.role : null
    const mine = clientId === this.awareness.clientID
    if (mine || this.role !== 'owner' || !this.changeRole || typeof user.id !== 'string' || !role) {
      return role ? h('span', { class: 'badge small' }, role) : null
    }
    const choices = ['editor', 'reviewer', 'viewer', ...(role === 'owner' ? ['owner'] : [])]
    const select = h('select', {
      class: 'role-menu small', 'aria-label': `Role of ${label}`, 'data-focus-key': `role:${clientId}`,
      onchange: async () => {
        select.disabled = true
        this.roleErrors.delete(user.id)
        try {
          await this.changeRole(user.id, select.value)
        } catch (error) {
          this.roleErrors.set(user.id, `Role not changed: ${error.message}`)
          this.render()
        }
      },
    }, ...choices.map((r) => h('option', { value: r, selected: r === role }, r)))
    return select
  }

  render() {
    const { list, count, hand, lead, banner, bannerText } = this.els
    const me = this.awareness.clientID
    const states = this.awareness.getStates()
    const mine = states.get(me) ?? {}
    const handAt = (state) => (state.hand ? (Number(state.handAt) || 0) : Infinity)
    const people = [...states]
      .filter(([, state]) => state && state.user)
      .sort(([a, sa], [b, sb]) => (a === me ? -1 : b === me ? 1
        : handAt(sa) - handAt(sb) || String(sa.user.name).localeCompare(String(sb.user.name))))
    // Viewers' presence goes only to participants; everyone gets the server's count of them and their
    // raised hands, under its own client id as {pairroom: {viewers, hands}}.
    const summary = [...states.values()].find((state) => state && state.pairroom)?.pairroom
    const listedViewers = people.filter(([id, state]) => (id === me ? this.role : state.user.role) === 'viewer').length
    const unlisted = Math.max(0, (Number(summary?.viewers) || 0) - listedViewers)
    const listedIds = new Set(people.map(([, state]) => state.user.id).filter(Boolean))
    if (this.myId) listedIds.add(this.myId)
    const otherHands = (Array.isArray(summary?.hands) ? summary.hands : []).filter((x) => x && !listedIds.has(x.id))
    count.textContent = `(${people.length + unlisted})`

    const focused = document.activeElement?.dataset?.focusKey
    list.replaceChildren(
      ...people.map(([id, state]) => {
        const { name, color } = state.user
        const label = String(name ?? 'Anonymous')
        const followed = this.following?.clientId === id
        return h('li', { 'data-client': id, class: state.hand ? 'hand-up' : null },
          h('span', { class: 'swatch', style: { background: color || '#888' }, 'aria-hidden': 'true' }),
          h('span', { class: 'person-name' }, label),
          id === me ? h('span', { class: 'hint' }, ' (you)') : null,
          this.roleControl(id, state.user, label),
          state.call ? h('span', { class: 'badge small in-call', title: `${label} is in the call` }, 'in call') : null,
          state.hand ? h('span', { class: 'badge small hand', title: 'Hand raised' }, 'hand up') : null,
          id !== me ? h('button', {
            type: 'button', class: 'small follow', 'data-focus-key': `follow:${id}`,
            'aria-pressed': String(followed), 'aria-label': followed ? `Stop following ${label}` : `Follow ${label}`,
            onclick: () => (followed ? this.stop() : this.follow(id)),
          }, followed ? 'Following' : 'Follow') : null,
          state.file ? h('span', { class: 'person-file hint', title: state.file }, state.file) : null,
          this.roleErrors.has(state.user.id) ? h('span', { class: 'error person-error', role: 'alert' }, this.roleErrors.get(state.user.id)) : null,
        )
      }),
      ...otherHands.map((x) => h('li', { class: 'hand-up' },
        h('span', { class: 'person-name' }, String(x.name ?? 'A viewer')),
        h('span', { class: 'badge small' }, 'viewer'),
        h('span', { class: 'badge small hand', title: 'Hand raised' }, 'hand up'))),
      ...(unlisted ? [h('li', { class: 'hint' }, unlisted === 1 ? '1 more viewer' : `${unlisted} more viewers`)] : []),
    )
    if (focused) list.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus()

    hand.textContent = mine.hand ? 'Lower hand' : 'Raise hand'
    hand.setAttribute('aria-pressed', String(Boolean(mine.hand)))
    const leading = typeof mine.leading === 'number'
    lead.textContent = leading ? 'Stop asking to follow' : 'Ask everyone to follow me'
    lead.setAttribute('aria-pressed', String(leading))

    const f = this.following
    const whom = f ? states.get(f.clientId)?.user?.name : null
    banner.hidden = !f
    bannerText.textContent = !f ? '' : f.lead
      ? `${whom ?? 'The owner'} asked everyone to follow them: you see their file and where they are in it.`
      : `Following ${whom ?? 'someone'}: typing or opening another file stops it.`
  }
}

/**
 * The first and last lines at least half on screen (1-based), not the lines CodeMirror renders
 * around them.
 */
export function visibleLines(view) {
  const rect = view.scrollDOM.getBoundingClientRect()
  const doc = view.state.doc
  const half = view.defaultLineHeight / 2
  const top = view.lineBlockAtHeight(Math.max(0, rect.top - view.documentTop + half))
  const bottom = view.lineBlockAtHeight(Math.max(0, rect.bottom - view.documentTop - half))
  return { from: doc.lineAt(top.from).number, to: doc.lineAt(bottom.from).number }
}
