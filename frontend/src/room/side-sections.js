// The side column's sections (people, review threads, chat, extensions' panels) fold to their heading
// with a press on it, so whoever needs room for the chat or a panel can make it; all start open, and
// what each person chose is kept in this browser (`localStorage` key `pairroom:side-folds`). The
// column itself scrolls: no section is squeezed below its own content (see style.css, "Side column").

import { keep, readKept } from './kept.js'

const KEY = 'pairroom:side-folds'

const load = () => readKept(KEY)

/**
 * Make ``section`` fold to ``head`` (its first child, which stays shown) by a press on ``title`` (an h2
 * in the head, whose content moves into the toggle: counts inside it keep updating). ``summary()``
 * says what a folded section holds (``2 new``). Returns ``{folded, refresh()}``.
 */
export function collapsible(name, section, head, title, { label, summary = () => '' } = {}) {
  head.classList.add('side-head')
  const button = document.createElement('button')
  button.type = 'button'
  button.className = 'fold-toggle side-toggle'
  button.id = `${name.replace(/[^A-Za-z0-9_-]/g, '-')}-fold`
  if (section.id) button.setAttribute('aria-controls', section.id)
  const arrow = document.createElement('span')
  arrow.className = 'fold-arrow'
  arrow.setAttribute('aria-hidden', 'true')
  button.append(arrow, ...title.childNodes)
  const note = document.createElement('span')
  note.className = 'hint fold-summary'
  title.replaceChildren(button, note) // in the heading: it stays shown when the section folds

  const set = (folded, remember) => {
    section.classList.toggle('folded', folded)
    button.setAttribute('aria-expanded', String(!folded))
    arrow.textContent = folded ? '▸ ' : '▾ '
    button.title = `${folded ? 'Show' : 'Fold'} ${label ?? 'this section'}`
    note.textContent = folded ? summary() : ''
    if (remember) {
      const saved = load()
      saved[name] = folded
      keep(KEY, saved)
    }
  }
  button.addEventListener('click', () => set(!section.classList.contains('folded'), true))
  set(load()[name] === true, false)
  return {
    get folded() { return section.classList.contains('folded') },
    refresh: () => { if (section.classList.contains('folded')) note.textContent = summary() },
  }
}
