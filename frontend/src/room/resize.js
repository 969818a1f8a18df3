// Panels people can resize: the file list, the right column and the output under the editor. Each has
// a separator (drag it, or focus it and use the arrow keys); sizes are kept in this browser for every
// room (`localStorage` key `pairroom:layout`).

import { keep, readKept } from './kept.js'

const KEY = 'pairroom:layout'
const STEP = 24 // px per arrow key

const load = () => readKept(KEY)

function save(sizes) {
  keep(KEY, sizes)
}

/**
 * ``panels``: [{name, handle, label, axis: 'x' | 'y', size(event) -> px from the pointer, current() -> px,
 * min, max(), apply(px)}]. Applies the saved sizes, then follows drags and keys.
 */
export function resizablePanels(panels) {
  const sizes = load()
  for (const panel of panels) {
    const { name, handle, label, axis } = panel
    handle.setAttribute('role', 'separator')
    handle.setAttribute('tabindex', '0')
    handle.setAttribute('aria-orientation', axis === 'x' ? 'vertical' : 'horizontal')
    handle.setAttribute('aria-label', label)
    handle.title = `${label}: drag, or use the arrow keys`
    const set = (px) => {
      const value = Math.round(Math.min(Math.max(px, panel.min), panel.max()))
      panel.apply(value)
      handle.setAttribute('aria-valuenow', String(value))
      sizes[name] = value
      save(sizes)
    }
    if (Number.isFinite(sizes[name])) {
      panel.apply(Math.max(panel.min, sizes[name]))
      handle.setAttribute('aria-valuenow', String(sizes[name]))
    }
    handle.addEventListener('pointerdown', (event) => {
      event.preventDefault()
      handle.setPointerCapture(event.pointerId)
      handle.classList.add('dragging')
      const move = (e) => set(panel.size(e))
      const up = () => {
        handle.classList.remove('dragging')
        handle.removeEventListener('pointermove', move)
        handle.removeEventListener('pointerup', up)
        handle.removeEventListener('pointercancel', up)
      }
      handle.addEventListener('pointermove', move)
      handle.addEventListener('pointerup', up)
      handle.addEventListener('pointercancel', up)
    })
    handle.addEventListener('keydown', (event) => {
      const grow = { x: { ArrowRight: 1, ArrowLeft: -1 }, y: { ArrowUp: 1, ArrowDown: -1 } }[axis][event.key]
      if (!grow) return
      event.preventDefault()
      set(panel.current() + grow * STEP * (panel.inverted ? -1 : 1))
    })
  }
}
