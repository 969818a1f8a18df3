// The "Join call" button. The call itself (call.js: WebRTC, tiles, controls) is a chunk of its own,
// loaded the first time the button is pressed, so the room page's initial script stays small.

/** `mountCall({room, token, role, awareness})`: arm #call-join in the #call section (`role` answers the live role). */
export function mountCall(options) {
  const root = document.getElementById('call')
  const button = document.getElementById('call-join')
  const status = document.getElementById('call-status')
  if (!root || !button) return
  root.hidden = false
  const load = async () => {
    button.removeEventListener('click', load) // later presses wait for the module (not disabled: keeps focus)
    button.setAttribute('aria-busy', 'true')
    status.textContent = 'Loading the call…'
    try {
      const { startCall } = await import('./call.js')
      button.removeAttribute('aria-busy')
      startCall({ ...options, root }) // from here call.js owns the button (join and leave)
    } catch (error) {
      button.removeAttribute('aria-busy')
      button.addEventListener('click', load)
      status.textContent = `The call could not load: ${error.message}`
    }
  }
  button.addEventListener('click', load)
}
