// What the run shortcuts run: Ctrl/Cmd+Enter the selection (else the file), Shift+Enter the current
// line, or the whole statement it belongs to (a def, a class, an if with its else, a call spread over
// lines, with the decorators above), then the cursor moves past it, as in a notebook.
import { EditorSelection, Prec } from '@codemirror/state'
import { keymap } from '@codemirror/view'

const CONTINUES = /^(elif\b|else\b|except\b|finally\b|case\b|[)\]}])/

const indented = (text) => /^\s/.test(text)
const blank = (text) => text.trim() === '' || /^\s*#/.test(text) && indented(text)

/** Lines {from, to} (1-based) of the statement around ``lineNo``, or null on a blank line. */
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

/** Ctrl/Cmd+Enter and Shift+Enter for ``runs`` (the RunPanel), ahead of the editor's own Enter. */
export function runKeys(runs, enabled) {
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
        const statement = statementAt(doc, lineNo)
        if (statement) runs.runCode(view.state.sliceDoc(doc.line(statement.from).from, doc.line(statement.to).to))
        let next = (statement?.to ?? lineNo) + 1
        while (next <= doc.lines && doc.line(next).text.trim() === '') next++
        if (next <= doc.lines) view.dispatch({ selection: EditorSelection.cursor(doc.line(next).from), scrollIntoView: true })
        return true
      },
    },
  ]))
}
