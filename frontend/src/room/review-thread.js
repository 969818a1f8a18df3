// The views of review.js, loaded the first time a thread or a draft is opened: one thread (its
// messages, its suggestion, a reply field and its actions) and the draft of a new one. Each element
// is built once and then only its changing parts are redrawn, so a half-written reply survives
// everyone else's edits.
import { h } from '../shared.js'

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' })

function textField(id, label, { rows = 2, value = '' } = {}) {
  const area = h('textarea', { id, rows, maxlength: 8000, 'aria-label': label, placeholder: `${label} (Ctrl+Enter sends)` })
  area.value = value
  return area
}

/** Ctrl/Cmd+Enter in a field sends its form. */
function submitOnModEnter(area, form) {
  area.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault()
      form.requestSubmit()
    }
  })
}

export function renderThread(el, t) {
  let parts = el._parts
  if (!parts) {
    const key = t.id.replace(/[^A-Za-z0-9_-]/g, '')
    parts = el._parts = {
      title: h('span', { class: 'review-title' }),
      status: h('span', { class: 'badge small review-status' }),
      actions: h('span', { class: 'review-actions' }),
      list: h('ol', { class: 'review-messages' }),
      suggestion: h('div', { class: 'review-suggestion' }),
      error: h('p', { class: 'error', role: 'alert' }),
      reply: t.canComment ? textField(`review-reply-${key}`, 'Reply', { rows: 2 }) : null,
    }
    let form = null
    if (parts.reply) {
      form = h('form', { class: 'review-reply' }, parts.reply, h('button', { type: 'submit' }, 'Comment'))
      submitOnModEnter(parts.reply, form)
      form.addEventListener('submit', (event) => {
        event.preventDefault()
        const text = parts.reply.value.trim()
        if (!text) return
        el._t.onReply(text)
        parts.reply.value = ''
      })
    }
    el.setAttribute('role', 'group')
    el.replaceChildren(
      h('div', { class: 'review-head' }, parts.title, parts.status, parts.actions),
      parts.list, parts.suggestion, parts.error, ...(form ? [form] : []),
    )
  }
  el._t = t // the handlers read the newest callbacks
  el.dataset.status = t.status
  el.setAttribute('aria-label', `Review thread on ${t.lines}`)
  parts.title.textContent = `Review · ${t.lines}`
  parts.status.textContent = t.status
  const act = (label, onclick, extra = {}) => h('button', { type: 'button', class: 'small', onclick, ...extra }, label)
  parts.actions.replaceChildren(...[
    t.canComment && t.status === 'open' ? act('Resolve', () => t.onResolve()) : null,
    t.canComment && t.status === 'resolved' ? act('Reopen', () => t.onReopen()) : null,
    act('Close', () => t.onClose(), { 'aria-label': `Close the thread on ${t.lines}` }),
  ].filter(Boolean))
  parts.list.replaceChildren(...t.messages.filter((m) => m && typeof m.text === 'string').map((m) =>
    h('li', {},
      h('span', { class: 'swatch', style: { background: t.colorOf({ id: m.author, name: m.name }) }, 'aria-hidden': 'true' }),
      h('span', { class: 'chat-name' }, String(m.name ?? 'Someone')),
      typeof m.at === 'number' ? h('time', { class: 'hint', datetime: new Date(m.at).toISOString() }, clock.format(m.at)) : null,
      h('p', { class: 'chat-text' }, m.text)),
  ))
  parts.suggestion.hidden = t.suggestion == null
  if (t.suggestion != null) {
    const apply = t.canApply && t.status === 'open'
      ? act('Apply suggestion', async (event) => {
        event.target.disabled = true
        parts.error.textContent = ''
        try {
          await t.onApply()
        } catch (error) {
          parts.error.textContent = `Not applied: ${error.message}`
          event.target.disabled = false
        }
      }, { class: 'small primary' })
      : null
    parts.suggestion.replaceChildren(
      h('div', { class: 'review-suggestion-head' }, h('span', { class: 'hint' }, 'Suggested change'), apply ?? ''),
      h('pre', { class: 'review-suggestion-text' }, t.suggestion || '(delete these lines)'),
    )
  }
}

export function renderDraft(el, d) {
  let parts = el._parts
  if (!parts) {
    const comment = textField('review-new-comment', 'Comment', { rows: 3 })
    const suggest = h('input', { type: 'checkbox', id: 'review-suggest' })
    const suggestion = textField('review-new-suggestion', 'Suggested replacement', { rows: 3 })
    const title = h('span', { class: 'review-title' })
    const form = h('form', { class: 'review-reply' },
      comment,
      h('label', { class: 'review-suggest-toggle', for: 'review-suggest' }, suggest, ' Suggest a change'),
      suggestion,
      h('div', { class: 'row' },
        h('button', { type: 'submit', class: 'primary' }, 'Comment'),
        h('button', { type: 'button', onclick: () => el._d.onCancel() }, 'Cancel')),
    )
    parts = el._parts = { comment, suggest, suggestion, title }
    suggestion.hidden = true
    suggest.addEventListener('change', () => {
      suggestion.hidden = !suggest.checked
      if (suggest.checked && !suggestion.value) suggestion.value = el._d.original
      if (suggest.checked) suggestion.focus()
    })
    submitOnModEnter(comment, form)
    submitOnModEnter(suggestion, form)
    form.addEventListener('submit', (event) => {
      event.preventDefault()
      const text = comment.value.trim()
      if (!text) return
      el._d.onSubmit({ text, suggestion: suggest.checked ? suggestion.value : null })
    })
    el.setAttribute('role', 'group')
    el.replaceChildren(h('div', { class: 'review-head' }, title), form)
    requestAnimationFrame(() => comment.focus())
  }
  el._d = d
  el.setAttribute('aria-label', `New review comment on ${d.lines}`)
  parts.title.textContent = `New comment on ${d.lines}`
}
