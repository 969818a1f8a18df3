// Beside the replayed editor: the chat and the runs (with their outputs) as they stood at that point of
// the replay. Both are in the replayed document (`chat`, `runs`), so they move with it, seeks included.
import * as Y from 'yjs'
import { h } from '../shared.js'
import { renderChat } from './chat.js'
import { personColor } from './colors.js'
import { renderOutputs } from './runs.js'

const STATUS = { queued: 'Queued', running: 'Running', ok: 'Done', error: 'Error', interrupted: 'Interrupted', failed: 'Failed' }

/** Render ``doc``'s chat and runs into the replay's side column, and again at each change. */
export function replaySide(doc, awareness) {
  const $ = (id) => document.getElementById(id)
  const chat = doc.getArray('chat')
  const runs = doc.getMap('runs')
  const showChat = () => {
    renderChat($('replay-chat'), chat, (who) => personColor(awareness, who))
    $('replay-chat-empty').hidden = chat.length > 0
  }
  const showRuns = () => {
    const entries = [...runs.entries()].filter(([, run]) => run instanceof Y.Map)
      .sort(([, a], [, b]) => (Number(a.get('order')) || 0) - (Number(b.get('order')) || 0))
    $('replay-runs').replaceChildren(...entries.map(([id, run]) => {
      const status = String(run.get('status') ?? 'queued')
      const path = run.get('path')
      const code = String(run.get('code') ?? '')
      const outputs = run.get('outputs')
      return h('li', { class: 'run', 'data-run': id, 'data-status': status },
        h('div', { class: 'run-head' },
          h('span', { class: 'run-order hint' }, `#${run.get('order') ?? '?'}`),
          h('span', { class: 'run-title' }, path ? `Run of ${path}` : `Selection: ${code.trim().split('\n')[0].slice(0, 40)}`),
          h('span', { class: `run-status status-${status}` }, STATUS[status] ?? status)),
        h('div', { class: 'run-outputs' }, renderOutputs(outputs instanceof Y.Array ? outputs.toArray() : [])))
    }))
    $('replay-runs-empty').hidden = entries.length > 0
  }
  chat.observe(showChat)
  runs.observeDeep(showRuns)
  showChat()
  showRuns()
}
