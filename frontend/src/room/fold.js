// Panels under the editor that fold to their head: the output and the terminal start folded, so the
// editor keeps its height on a laptop screen (1280x720), and open by themselves when something shows up
// in them (a run, a terminal). The head (title, status, buttons) always stays; a press on the title
// folds or opens. What each person chose is kept in this browser (`localStorage` key `pairroom:folds`).

import { keep, readKept } from './kept.js'

const KEY = 'pairroom:folds'

const load = () => readKept(KEY)

/**
 * Make ``section`` foldable by its ``title`` (an h2 in its head). Returns ``{open(), fold(), folded}``.
 * ``label`` names the panel for the toggle (``Output``); ``summary()`` says what a folded panel holds.
 */
export function foldable(name, section, title, { label, summary = () => '' }) {
  const states = load()
  const button = document.createElement('button')
  button.type = 'button'
  button.className = 'fold-toggle'
  button.id = `${name}-fold`
  button.setAttribute('aria-controls', section.id)
  title.replaceChildren(button)
  const note = document.createElement('span')
  note.className = 'hint fold-summary'
  title.after(note)

  const set = (folded, remember) => {
    section.classList.toggle('folded', folded)
    button.setAttribute('aria-expanded', String(!folded))
    button.textContent = `${folded ? '▸' : '▾'} ${label}`
    button.title = folded ? `Show the ${label.toLowerCase()} panel` : `Fold the ${label.toLowerCase()} panel`
    note.textContent = folded ? summary() : ''
    if (remember) {
      const saved = load()
      saved[name] = folded
      keep(KEY, saved)
    }
    if (!folded) window.dispatchEvent(new Event('resize')) // what draws to size (xterm, CodeMirror) measures again
  }
  button.addEventListener('click', () => set(!section.classList.contains('folded'), true))
  set(states[name] ?? true, false)
  return {
    /** Open it; ``remember``: as if the person had pressed the toggle (a drag of its edge). */
    open: (remember = false) => { if (section.classList.contains('folded')) set(false, remember) },
    refresh: () => { if (section.classList.contains('folded')) note.textContent = summary() },
    get folded() { return section.classList.contains('folded') },
  }
}
