// The room's HTTP API (kernels, history): JSON in and out, the page's token as `Authorization: Bearer`.

export class ApiError extends Error {
  constructor(status, message) {
    super(message)
    this.status = status
  }
}

/** `api(room, token)('GET', 'versions')` -> the parsed JSON body; an ApiError with the server's reason otherwise. */
export function roomApi(room, token) {
  const base = `/api/rooms/${encodeURIComponent(room)}/`
  return async (method, path, body) => {
    const headers = token ? { authorization: `Bearer ${token}` } : {}
    if (body !== undefined) headers['content-type'] = 'application/json'
    let response
    try {
      response = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
    } catch (error) {
      throw new ApiError(0, `the server did not answer (${error.message})`)
    }
    const data = await response.json().catch(() => null)
    if (!response.ok) throw new ApiError(response.status, data?.error || `HTTP ${response.status}`)
    return data
  }
}
