// The offline app shell: with the server out of reach, a room's page still opens, from this cache, and
// its document from y-indexeddb; edits made then reach the server when it is back (docs/frontend.md).
//
// - the room page (room.html, the same for every room) is network first: each online visit refreshes
//   the copy, and a visit the network cannot answer gets the copy;
// - /assets/ are cache first: their names carry a hash of their content, so a cached one is never stale;
// - anything else (the API, the websocket, the lobby) is left to the network.
//
// Each build keeps its files in a cache of its own, named after the build (the build writes its id
// below: a hash of its asset names, so the worker's bytes change with every build and the browser
// installs the new one); once the new worker is active, the caches of earlier builds are deleted, so
// the old hashed assets do not pile up across rebuilds.
const BUILD = '__PAIRROOM_BUILD__'
const PREFIX = 'pairroom-shell-'
const CACHE = PREFIX + BUILD

/** This build's cache, or null once a newer worker has replaced this one: a write still in flight
 * here (a page's list of chunks, a fetch) must not bring back the cache the new worker deleted. */
const openCache = () => (self.serviceWorker?.state === 'redundant' ? null : caches.open(CACHE))
const SHELL = '/r/_offline-shell' // the key room.html is kept under
const ROOM_PAGE = /^\/r\/[^/]+\/?$/

async function cacheShell() {
  const page = await fetch(SHELL, { cache: 'no-cache' })
  const cache = await openCache()
  if (!page.ok || !cache) return
  const html = await page.clone().text()
  await cache.put(SHELL, page)
  await cacheAssets([...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]))
}

/** Cache these /assets/ URLs (the page sends the chunks it loaded before this worker ran it). */
async function cacheAssets(urls) {
  const wanted = [...new Set(urls)].filter((u) => typeof u === 'string' && u.startsWith('/assets/'))
  if (!wanted.length) return
  const cache = await openCache()
  if (!cache) return
  await Promise.all(wanted.map(async (url) => {
    if (!(await cache.match(url))) await cache.add(url)
  }))
}

async function assetFirst(request) {
  const cached = await caches.match(request, { ignoreSearch: true })
  if (cached) return cached
  const response = await fetch(request)
  if (response.ok) (await openCache())?.put(request, response.clone())
  return response
}

async function pageFirst(request) {
  try {
    const response = await fetch(request)
    if (response.ok) (await openCache())?.put(SHELL, response.clone())
    return response
  } catch (error) {
    const cached = await caches.match(SHELL)
    if (cached) return cached
    throw error
  }
}

self.addEventListener('install', (event) => {
  self.skipWaiting()
  event.waitUntil(cacheShell())
})
/** Delete what earlier builds cached: only this build's cache stays. */
async function dropOldCaches() {
  const names = await caches.keys()
  await Promise.all(names.filter((name) => name.startsWith(PREFIX) && name !== CACHE).map((name) => caches.delete(name)))
}

self.addEventListener('activate', (event) => event.waitUntil(dropOldCaches().then(() => self.clients.claim())))
self.addEventListener('message', (event) => {
  if (Array.isArray(event.data?.assets)) event.waitUntil(cacheAssets(event.data.assets))
})
self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url)
  if (url.origin !== self.location.origin || event.request.method !== 'GET') return
  if (url.pathname.startsWith('/assets/')) event.respondWith(assetFirst(event.request))
  else if (event.request.mode === 'navigate' && ROOM_PAGE.test(url.pathname)) event.respondWith(pageFirst(event.request))
})
