// What the run shortcuts run: Ctrl/Cmd+Enter the selection (else the file), Shift+Enter the current
// statement, then the cursor moves past it, as in a notebook. What a statement is depends on the
// language: in Python the line with everything indented under it (a def, a class, an if with its else,
// a call spread over lines, with the decorators above); in JavaScript and its kin the line, grown to
// the brackets it opens or sits inside (a function, an if/else, a call over several lines, a chain of
// `.then()` lines); in any other file just the line.
import { EditorSelection, Prec } from '@codemirror/state'
import { keymap } from '@codemirror/view'

const CONTINUES = /^(elif\b|else\b|except\b|finally\b|case\b|[)\]}])/

const indented = (text) => /^\s/.test(text)
const blank = (text) => text.trim() === '' || /^\s*#/.test(text) && indented(text)

const BRACES = /\.(m?[jt]sx?|cjs|cts|json|css|c|h|cc|cpp|hpp|java|go|rs|cs|kt|swift|php)$/i
const PYTHON = /\.pyi?$/i

/** Lines {from, to} (1-based) of the Python statement around ``lineNo``, or null on a blank line. */
export function statementAt(doc, lineNo) {
  const text = (n) => doc.line(n).text
  if (text(lineNo).trim() === '') return null
  let start = lineNo
  while (start > 1 && (indented(text(start)) || CONTINUES.test(text(start)))) start--
  while (start > 1 && text(start - 1).startsWith('@')) start--
  let end = lineNo
  while (end < doc.lines && (blank(text(end + 1)) || indented(text(end + 1)) || CONTINUES.test(text(end + 1)))) end++
  while (end > lineNo && text(end).trim() === '') end--
  return { from: start, to: end }
}

/**
 * The bracket depth at the start of each line (index 1..lines, and lines + 1 for the end), skipping
 * strings, template literals and comments: a brace in `'{'` or `// }` opens or closes nothing; a line
 * that starts inside a template literal or a block comment counts one deeper.
 */
function depths(doc) {
  const out = [0, 0]
  let depth = 0
  let mode = null // null | "'" | '"' | '`' | 'block'
  for (let n = 1; n <= doc.lines; n++) {
    const text = doc.line(n).text
    for (let i = 0; i < text.length; i++) {
      const c = text[i]
      if (mode === 'block') { if (c === '*' && text[i + 1] === '/') { mode = null; i++ } continue }
      if (mode) { if (c === '\\') i++; else if (c === mode) mode = null; continue }
      if (c === '/' && text[i + 1] === '/') break
      if (c === '/' && text[i + 1] === '*') { mode = 'block'; i++ } else if (c === '"' || c === "'" || c === '`') mode = c
      else if ('([{'.includes(c)) depth++
      else if (')]}'.includes(c)) depth = Math.max(0, depth - 1)
    }
    if (mode === '"' || mode === "'") mode = null // an unclosed quote ends with its line
    out.push(depth + (mode ? 1 : 0)) // inside a template literal or a block comment counts as inside
  }
  return out
}

const CONTINUES_BRACES = /^\s*(\.|\?|:|else\b|catch\b|finally\b|[)\]}])/

/** Lines {from, to} of the bracket-balanced statement around ``lineNo`` (JavaScript and kin), or null on a blank line. */
export function bracedStatementAt(doc, lineNo) {
  const text = (n) => doc.line(n).text
  if (text(lineNo).trim() === '') return null
  const depth = depths(doc)
  let start = lineNo
  for (;;) {
    while (start > 1 && depth[start] > 0) start-- // up to the line that opens the brackets this one is in
    if (start === 1 || !CONTINUES_BRACES.test(text(start))) break
    start-- // `.then(...)`, `else`: part of the statement above
    while (start > 1 && text(start).trim() === '') start--
  }
  let end = Math.max(lineNo, start)
  for (;;) {
    while (end < doc.lines && depth[end + 1] > 0) end++ // down to where every bracket is closed again
    let next = end + 1
    while (next <= doc.lines && text(next).trim() === '') next++
    if (next <= doc.lines && CONTINUES_BRACES.test(text(next))) { end = next; continue }
    break
  }
  return { from: start, to: end }
}

/** The statement Shift+Enter runs in ``path`` around ``lineNo``: by the language's rules. */
export function statementFor(path, doc, lineNo) {
  if (PYTHON.test(path ?? '')) return statementAt(doc, lineNo)
  if (BRACES.test(path ?? '')) return bracedStatementAt(doc, lineNo)
  return doc.line(lineNo).text.trim() === '' ? null : { from: lineNo, to: lineNo }
}

/** Ctrl/Cmd+Enter and Shift+Enter for ``runs`` (the RunPanel) in the file ``path``, ahead of the editor's own Enter. */
export function runKeys(runs, enabled, path) {
  return Prec.highest(keymap.of([
    {
      key: 'Mod-Enter',
      run: (view) => {
        if (!enabled()) return false
        const selection = view.state.selection.ranges.map((r) => view.state.sliceDoc(r.from, r.to)).filter(Boolean).join('\n')
        if (selection) runs.runCode(selection)
        else runs.run('file')
        return true
      },
    },
    {
      key: 'Shift-Enter',
      run: (view) => {
        if (!enabled()) return false
        const { doc } = view.state
        const lineNo = doc.lineAt(view.state.selection.main.head).number
        const statement = statementFor(path, doc, lineNo)
        if (statement) runs.runCode(view.state.sliceDoc(doc.line(statement.from).from, doc.line(statement.to).to))
        let next = (statement?.to ?? lineNo) + 1
        while (next <= doc.lines && doc.line(next).text.trim() === '') next++
        if (next <= doc.lines) view.dispatch({ selection: EditorSelection.cursor(doc.line(next).from), scrollIntoView: true })
        return true
      },
    },
  ]))
}
