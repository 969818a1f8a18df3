// pairroom-ruff's panel: the diagnostics the server stored in `ext.ruff`, as editor marks and a list.
// It runs in a sandboxed frame and speaks to the page only through `window.pairroom`
// (docs/extensions.md, "Browser-side panels").
const api = window.pairroom
const summary = document.createElement('p')
const list = document.createElement('ul')
list.style.cssText = 'margin:4px 0;padding-left:16px;max-height:160px;overflow:auto'
api.root.append(summary, list)
summary.textContent = 'Waiting for the first lint…'

let marked = new Set() // paths that have marks from this panel

api.onState((state) => {
  const byPath = state ?? {}
  const paths = Object.keys(byPath).sort()
  let total = 0
  list.replaceChildren()
  for (const path of paths) {
    const found = Array.isArray(byPath[path]) ? byPath[path] : []
    total += found.length
    api.setMarks(path, found.map((d) => ({ line: d.line, message: d.message, severity: d.severity })))
    for (const d of found.slice(0, 50)) {
      const item = document.createElement('li')
      item.dataset.severity = d.severity
      item.textContent = `${path}:${d.line}:${d.column} ${d.message}`
      item.style.color = d.severity === 'error' ? '#b3261e' : d.severity === 'warning' ? '#8a5a00' : '#1d2433'
      list.append(item)
    }
  }
  for (const path of marked) if (!(path in byPath)) api.setMarks(path, [])
  marked = new Set(paths)
  summary.textContent = paths.length
    ? `${total} finding${total === 1 ? '' : 's'} in ${paths.length} Python file${paths.length === 1 ? '' : 's'}`
    : 'No Python files in this room yet.'
})
new ResizeObserver(() => api.setHeight?.(document.documentElement.scrollHeight)).observe(document.body)
