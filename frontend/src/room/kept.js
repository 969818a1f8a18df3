// What a person chose for the room's layout (folds, sizes), kept in this browser's `localStorage` as
// one JSON object per key. Storage that is off or full keeps the choice for this page only.

export function readKept(key) {
  try {
    const saved = JSON.parse(localStorage.getItem(key) || '{}')
    return saved && typeof saved === 'object' ? saved : {}
  } catch {
    return {}
  }
}

export function keep(key, value) {
  try { localStorage.setItem(key, JSON.stringify(value)) } catch { /* storage off: this page only */ }
}
