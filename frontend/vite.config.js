import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { gzipSync } from 'node:zlib'
import { createHash } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'

const here = dirname(fileURLToPath(import.meta.url))
const outDir = resolve(here, '../pairroom/static')

/** Write a .gz beside every built script and stylesheet; the server sends it to clients that take gzip. */
const precompress = {
  name: 'pairroom-precompress',
  apply: 'build',
  closeBundle() {
    const assets = join(outDir, 'assets')
    for (const name of readdirSync(assets)) {
      if (!/\.(js|css)$/.test(name)) continue
      writeFileSync(join(assets, name + '.gz'), gzipSync(readFileSync(join(assets, name)), { level: 9 }))
    }
  },
}

/** Stamp the service worker with this build's id (a hash of the asset names): sw.js then differs
 * from the last build's, the browser installs it, and it drops the caches of earlier builds. */
const stampServiceWorker = {
  name: 'pairroom-sw-build',
  apply: 'build',
  closeBundle() {
    const names = readdirSync(join(outDir, 'assets')).filter((n) => !n.endsWith('.gz')).sort()
    const id = createHash('sha256').update(names.join('\n')).digest('hex').slice(0, 12)
    const path = join(outDir, 'sw.js')
    writeFileSync(path, readFileSync(path, 'utf8').replace('__PAIRROOM_BUILD__', id))
  },
}

// Two pages: the lobby (index.html, no editor code at all) and the room app (room.html), which the
// server answers for /r/{room} and /r/{room}/replay. The build lands in the Python package so that
// pairroom serves it (pairroom/server/static.py); hashed assets under /assets/ are cached for a year.
export default defineConfig({
  base: '/',
  build: {
    outDir,
    emptyOutDir: true,
    target: 'es2022',
    // The room's entry chunk holds CodeMirror's core and the Yjs stack (about 165 kB gzipped, see
    // docs/frontend.md); languages are split off and loaded on demand.
    chunkSizeWarningLimit: 600,
    rolldownOptions: {
      input: {
        lobby: resolve(here, 'index.html'),
        room: resolve(here, 'room.html'),
      },
      output: {
        // Lazily loaded chunks are named after the language (or package) they hold: by default
        // every one of them is called "dist", after the folder of its first module.
        chunkFileNames: (chunk) => {
          for (const id of [chunk.facadeModuleId ?? '', ...chunk.moduleIds]) {
            const lang = id.match(/node_modules[\\/]@codemirror[\\/]lang-([a-z]+)[\\/]/)
            if (lang) return `assets/lang-${lang[1]}-[hash].js`
          }
          const pkg = chunk.moduleIds[0]?.match(/node_modules[\\/](?:@([^\\/]+)[\\/])?([^\\/]+)[\\/]/)
          return pkg ? `assets/${[pkg[1], pkg[2]].filter(Boolean).join('-')}-[hash].js` : 'assets/[name]-[hash].js'
        },
      },
    },
  },
  server: {
    // `npm run dev` next to `make run`: the page comes from Vite, the websocket from pairroom.
    proxy: { '/yjs': { target: 'ws://127.0.0.1:8000', ws: true } },
  },
  plugins: [
    precompress,
    stampServiceWorker,
    {
      name: 'pairroom-room-pages',
      // Mirror the server's routing in the dev server: /r/{room}[/replay] answers room.html.
      configureServer(server) {
        server.middlewares.use((req, _res, next) => {
          if (req.url && /^\/r\/[^/?]+(\/replay)?\/?(\?.*)?$/.test(req.url)) {
            const query = req.url.includes('?') ? req.url.slice(req.url.indexOf('?')) : ''
            req.url = '/room.html' + query
          }
          next()
        })
      },
    },
  ],
})
