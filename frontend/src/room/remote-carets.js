// Other people's carets and selections, in the colour the server gave each of them, with a name flag
// that shows while the person types or moves and for FLAG_MS after (and while you hover the caret).
//
// y-codemirror.next draws remote carets too, but its flag only shows on hover and sits above the line,
// where the editor's scroller clips it on the first line. This plugin replaces that part of yCollab
// (which is used with no awareness, for sync and undo only) and publishes this browser's own cursor
// as y-codemirror.next does, so other clients read the same `cursor` field.
import * as Y from 'yjs'
import { Decoration, EditorView, ViewPlugin, WidgetType } from '@codemirror/view'
import { Annotation, RangeSet } from '@codemirror/state'
import { textColorOn } from '../shared.js'

export const FLAG_MS = 4000

const redraw = Annotation.define()

class CaretWidget extends WidgetType {
  constructor(clientId, name, color, active, below) {
    super()
    Object.assign(this, { clientId, name, color, active, below })
  }

  eq(other) {
    return other.clientId === this.clientId && other.name === this.name && other.color === this.color &&
      other.active === this.active && other.below === this.below
  }

  toDOM() {
    const caret = document.createElement('span')
    caret.className = 'cm-remoteCaret'
    caret.dataset.client = String(this.clientId)
    caret.style.borderColor = this.color
    caret.append('\u2060')
    const flag = document.createElement('span')
    flag.className = 'cm-remoteFlag' + (this.active ? ' active' : '') + (this.below ? ' below' : '')
    flag.style.backgroundColor = this.color
    flag.style.color = textColorOn(this.color)
    flag.textContent = this.name
    caret.append(flag, '\u2060')
    return caret
  }

  ignoreEvent() { return true }
}

const theme = EditorView.baseTheme({
  '.cm-remoteCaret': {
    position: 'relative', borderLeft: '2px solid', marginLeft: '-1px', marginRight: '-1px', boxSizing: 'border-box',
  },
  '.cm-remoteFlag': {
    position: 'absolute', left: '-2px', bottom: '100%', zIndex: 101, whiteSpace: 'nowrap', pointerEvents: 'none',
    font: '600 11px/1.35 system-ui, sans-serif', padding: '0 4px', borderRadius: '3px 3px 3px 0',
    opacity: 0, transition: 'opacity .25s ease-in-out',
  },
  '.cm-remoteFlag.below': { bottom: 'auto', top: '100%', borderRadius: '0 3px 3px 3px' },
  '.cm-remoteFlag.active, .cm-remoteCaret:hover > .cm-remoteFlag': { opacity: 1 },
})

/** Remote carets and selections of `awareness` on `ytext`; this browser's cursor published there. */
export function remoteCarets(ytext, awareness) {
  const plugin = ViewPlugin.fromClass(class {
    constructor(view) {
      this.view = view
      this.decorations = RangeSet.of([])
      this.lastMove = new Map() // client id -> when its cursor or text last changed (ms)
      this.cursors = new Map() // client id -> its last cursor, as JSON, to see moves
      this.timer = null
      this.listener = ({ added, updated, removed }) => {
        const me = awareness.clientID
        const now = Date.now()
        let others = false
        for (const id of [...added, ...updated]) {
          if (id === me) continue
          others = true
          const cursor = JSON.stringify(awareness.getStates().get(id)?.cursor ?? null)
          if (this.cursors.get(id) !== cursor) {
            this.cursors.set(id, cursor)
            if (cursor !== 'null') this.lastMove.set(id, now)
          }
        }
        for (const id of removed) {
          others ||= id !== me
          this.cursors.delete(id)
          this.lastMove.delete(id)
        }
        if (others) this.schedule() // a new cursor JSON is a move: typing moves it too
      }
      awareness.on('change', this.listener)
    }

    /** Redraw on the next frame (never inside another update), and once more when a flag expires. */
    schedule() {
      queueMicrotask(() => this.view.dispatch({ annotations: redraw.of(true) }))
    }

    destroy() {
      awareness.off('change', this.listener)
      clearTimeout(this.timer)
    }

    update(update) {
      this.publishOwn(update)
      this.decorations = this.build(update.view)
    }

    publishOwn(update) {
      const local = awareness.getLocalState()
      if (local == null) return
      // Unfocused, the last cursor stays published: people see where you were.
      if (update.view.hasFocus && update.view.dom.ownerDocument.hasFocus()) {
        const sel = update.state.selection.main
        const anchor = Y.createRelativePositionFromTypeIndex(ytext, sel.anchor)
        const head = Y.createRelativePositionFromTypeIndex(ytext, sel.head)
        const old = local.cursor
        if (old == null || !Y.compareRelativePositions(Y.createRelativePositionFromJSON(old.anchor), anchor) ||
            !Y.compareRelativePositions(Y.createRelativePositionFromJSON(old.head), head)) {
          awareness.setLocalStateField('cursor', { anchor, head })
        }
      }
    }

    build(view) {
      const ydoc = ytext.doc
      const doc = view.state.doc
      const now = Date.now()
      let nextExpiry = Infinity
      const ranges = []
      awareness.getStates().forEach((state, clientId) => {
        if (clientId === awareness.clientID || !state?.cursor?.anchor || !state?.cursor?.head) return
        const anchor = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(state.cursor.anchor), ydoc)
        const head = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(state.cursor.head), ydoc)
        if (!anchor || !head || anchor.type !== ytext || head.type !== ytext) return
        const color = typeof state.user?.color === 'string' ? state.user.color : '#30bced'
        const light = typeof state.user?.colorLight === 'string' ? state.user.colorLight : color + '33'
        const name = String(state.user?.name ?? 'Anonymous')
        const from = Math.min(anchor.index, head.index, doc.length)
        const to = Math.min(Math.max(anchor.index, head.index), doc.length)
        if (from < to) {
          ranges.push(Decoration.mark({ attributes: { style: `background-color: ${light}` }, class: 'cm-remoteSelection' }).range(from, to))
        }
        const until = (this.lastMove.get(clientId) ?? -Infinity) + FLAG_MS
        if (until > now) nextExpiry = Math.min(nextExpiry, until)
        const at = Math.min(head.index, doc.length)
        const below = doc.lineAt(at).number === 1 // above the first line the scroller would clip it
        ranges.push(Decoration.widget({
          side: head.index - anchor.index > 0 ? -1 : 1,
          widget: new CaretWidget(clientId, name, color, until > now, below),
        }).range(at))
      })
      clearTimeout(this.timer)
      if (nextExpiry < Infinity) this.timer = setTimeout(() => this.schedule(), nextExpiry - now + 20)
      return Decoration.set(ranges, true)
    }
  }, { decorations: (v) => v.decorations })

  return [theme, plugin]
}
