// Syntax highlighting by file extension. Each language is its own chunk, loaded when a file of that
// kind is first opened, so the room's first paint carries only the editor core.

const loaders = {
  py: () => import('@codemirror/lang-python').then((m) => m.python()),
  pyi: () => import('@codemirror/lang-python').then((m) => m.python()),
  js: () => import('@codemirror/lang-javascript').then((m) => m.javascript()),
  mjs: () => import('@codemirror/lang-javascript').then((m) => m.javascript()),
  cjs: () => import('@codemirror/lang-javascript').then((m) => m.javascript()),
  jsx: () => import('@codemirror/lang-javascript').then((m) => m.javascript({ jsx: true })),
  ts: () => import('@codemirror/lang-javascript').then((m) => m.javascript({ typescript: true })),
  mts: () => import('@codemirror/lang-javascript').then((m) => m.javascript({ typescript: true })),
  tsx: () => import('@codemirror/lang-javascript').then((m) => m.javascript({ typescript: true, jsx: true })),
  md: () => import('@codemirror/lang-markdown').then((m) => m.markdown()),
  markdown: () => import('@codemirror/lang-markdown').then((m) => m.markdown()),
  html: () => import('@codemirror/lang-html').then((m) => m.html()),
  htm: () => import('@codemirror/lang-html').then((m) => m.html()),
  css: () => import('@codemirror/lang-css').then((m) => m.css()),
  json: () => import('@codemirror/lang-json').then((m) => m.json()),
}

const names = {
  py: 'Python', pyi: 'Python', js: 'JavaScript', mjs: 'JavaScript', cjs: 'JavaScript', jsx: 'JavaScript (JSX)',
  ts: 'TypeScript', mts: 'TypeScript', tsx: 'TypeScript (TSX)', md: 'Markdown', markdown: 'Markdown',
  html: 'HTML', htm: 'HTML', css: 'CSS', json: 'JSON',
}

function extension(path) {
  const base = path.slice(path.lastIndexOf('/') + 1)
  const dot = base.lastIndexOf('.')
  return dot > 0 ? base.slice(dot + 1).toLowerCase() : ''
}

/** The display name of a path's language ("Plain text" when there is no highlighter for it). */
export function languageName(path) {
  return names[extension(path)] ?? 'Plain text'
}

const NODE = ['js', 'mjs', 'cjs']

/** What ``path`` runs with: ``python`` (the room's kernel), ``javascript`` (node), or null. */
export function runLanguage(path) {
  const ext = extension(path ?? '')
  return ext === 'py' ? 'python' : NODE.includes(ext) ? 'javascript' : null
}

/**
 * Whether ``path`` can run, and if not, why, for the run buttons. ``runners`` is the server's answer
 * to ``GET runners`` (``{javascript: version | null}``), undefined until it is known.
 */
export function runnable(path, runners) {
  if (!path) return { ok: false, why: '' }
  const lang = runLanguage(path)
  if (lang === 'python') return { ok: true, why: '', lang }
  if (lang === 'javascript') {
    if (runners === undefined) return { ok: false, why: '', lang, unknown: true }
    if (runners?.javascript) return { ok: true, why: '', lang }
    return { ok: false, why: `${path} is JavaScript: this server’s sandbox has no node, so only .py files run here.`, lang }
  }
  const what = names[extension(path)] ?? 'not a program'
  return { ok: false, why: `${path} is ${what}: Run works on .py files (the room’s Python kernel) and .js files (node).` }
}

/** True for files that indent with 4 spaces (PEP 8). */
export function isPython(path) {
  return ['py', 'pyi'].includes(extension(path))
}

/** A CodeMirror extension highlighting ``path``'s language, or [] for plain text. */
export async function languageFor(path) {
  const load = loaders[extension(path)]
  return load ? load() : []
}
