// pairroom-classroom's panel: the open poll (vote with one click), the timer, past results; owners also
// get the controls. It runs in a sandboxed frame and speaks to the page only through `window.pairroom`:
// `onState` brings the document's `ext.classroom` map, `request` calls the extension's own routes.
const api = window.pairroom
const el = (tag, { dataset = {}, style: css = '', ...props } = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props)
  Object.assign(node.dataset, dataset)
  if (css) node.style.cssText = css
  node.append(...children.filter((c) => c !== null && c !== undefined))
  return node
}
const style = document.createElement('style')
style.textContent = `
  .row{display:flex;gap:6px;align-items:center;margin:4px 0;flex-wrap:wrap}
  button{font:inherit;padding:2px 8px;border:1px solid #9aa4b5;border-radius:4px;background:#fff;cursor:pointer}
  button.chosen{background:#dbe7ff;border-color:#3a6ee8}
  .bar{height:6px;background:#3a6ee8;border-radius:3px;min-width:2px}
  .option{display:grid;grid-template-columns:1fr 2em;gap:1px 8px;margin:3px 0;align-items:center}
  .option button{text-align:left}
  .bar{grid-column:1/3}
  .timer{font-size:20px;font-variant-numeric:tabular-nums;font-weight:600}
  .timer.done{color:#b3261e}
  .hint{color:#5b6478;font-size:12px}
  input{font:inherit;padding:2px 4px;border:1px solid #9aa4b5;border-radius:4px;min-width:0}
  h3{font-size:13px;margin:8px 0 2px}`
document.head.append(style)

const timerBox = el('div', { id: 'timer' })
const pollBox = el('div', { id: 'poll' })
const controls = el('div', { id: 'controls' })
const resultsBox = el('div', { id: 'results' })
const problem = el('p', { id: 'problem', className: 'hint' })
api.root.append(timerBox, pollBox, controls, resultsBox, problem)

let state = {}
let myChoice = null

async function call(path, body) {
  const answer = await api.request(`rooms/${encodeURIComponent(api.room)}/${path}`, { method: 'POST', body })
  problem.textContent = answer.status >= 200 && answer.status < 300 ? '' : `${answer.body?.error ?? `failed (${answer.status})`}`
  return answer
}

function renderPoll() {
  const poll = state.poll
  if (!poll) { pollBox.replaceChildren(el('p', { className: 'hint' }, 'No poll is open.')); return }
  const votes = Object.values(poll.votes ?? {})
  const total = votes.length
  pollBox.replaceChildren(
    el('strong', { id: 'question' }, poll.question),
    ...poll.options.map((option, index) => {
      const count = votes.filter((v) => Number(v) === index).length
      return el('div', { className: 'option' },
        el('button', {
          type: 'button', className: myChoice?.poll === poll.id && myChoice.index === index ? 'chosen' : '',
          onclick: async () => { if ((await call('vote', { poll: poll.id, choice: index })).status === 200) { myChoice = { poll: poll.id, index }; renderPoll() } },
        }, option),
        el('span', { className: 'count', dataset: { option: String(index) } }, String(count)),
        el('div', { className: 'bar', style: `width:${total ? Math.round((100 * count) / total) : 0}%` }))
    }),
    el('p', { className: 'hint', id: 'voters' }, `${total} vote${total === 1 ? '' : 's'} · asked by ${poll.by}`))
}

function renderResults() {
  const results = (state.results ?? []).slice(-3).reverse()
  resultsBox.replaceChildren(...(results.length ? [el('h3', {}, 'Results')] : []),
    ...results.map((r) => el('p', { className: 'result' }, `${r.question}: ${r.options.map((o, i) => `${o} ${r.counts[i]}`).join(' · ')}`)))
}

function renderTimer() {
  const timer = state.timer
  if (!timer) { timerBox.replaceChildren(); return }
  const left = Math.max(0, Math.round((timer.endsAt - Date.now()) / 1000))
  const clock = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}`
  timerBox.replaceChildren(el('span', { className: 'hint' }, `${timer.label} `), el('span', { className: `timer${left === 0 ? ' done' : ''}`, id: 'clock' }, left === 0 ? `${clock} time's up` : clock))
}
setInterval(renderTimer, 250)

function renderControls() {
  if (api.role !== 'owner') { controls.replaceChildren(); return }
  const timerRow = el('div', { className: 'row' }, el('span', { className: 'hint' }, 'Timer'),
    ...[1, 5, 10].map((m) => el('button', { type: 'button', dataset: { minutes: String(m) }, onclick: () => call('timer', { seconds: m * 60, label: 'Exercise' }) }, `${m} min`)),
    el('button', { type: 'button', id: 'stop-timer', onclick: () => call('timer', { seconds: 0 }) }, 'Stop'))
  if (state.poll) { // while a poll is open: close it, or time the room
    controls.replaceChildren(el('div', { className: 'row' }, el('button', { type: 'button', id: 'close', onclick: () => call('close', {}) }, 'Close poll')), timerRow)
    return
  }
  const question = el('input', { id: 'new-question', placeholder: 'Question', style: 'flex:1 1 100%' })
  const options = el('input', { id: 'new-options', placeholder: 'Options, comma-separated', style: 'flex:1 1 60%' })
  controls.replaceChildren(
    el('h3', {}, 'Ask the room'),
    el('div', { className: 'row' }, question),
    el('div', { className: 'row' }, options,
      el('button', { type: 'button', id: 'ask', onclick: () => call('poll', { question: question.value, options: options.value.split(',').map((o) => o.trim()).filter(Boolean) }) }, 'Ask')),
    timerRow)
}

let hadPoll = null
api.onState((next) => {
  state = next ?? {}
  renderPoll(); renderTimer(); renderResults()
  if (Boolean(state.poll) !== hadPoll && api.room !== null) { hadPoll = Boolean(state.poll); renderControls() } // typed text survives other changes
})
api.onReady(() => { hadPoll = Boolean(state.poll); renderControls() })
renderPoll()
// the panel asks for the height its content needs (the page clamps it)
new ResizeObserver(() => api.setHeight?.(document.documentElement.scrollHeight)).observe(document.body)
