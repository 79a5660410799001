// The demo page: Uppy's Dashboard and tus plugin (from uppy.min.js, which defines
// globalThis.Uppy) uploading to rindle, and a list of the finished files.
;(() => {
  'use strict'

  const root = document.getElementById('demo')
  const finished = document.getElementById('finished')
  const { Uppy, Dashboard, Tus } = globalThis.Uppy

  // ?chunkSize=<bytes>: send PATCHes of at most that many bytes (tus-js-client's chunkSize);
  // without it each upload is one PATCH, which a pause cuts short.
  const chunkSize = Number.parseInt(new URLSearchParams(location.search).get('chunkSize'), 10)

  const uppy = new Uppy({ autoProceed: false })
    .use(Dashboard, {
      target: '#uppy',
      inline: true,
      width: '100%',
      height: 420,
      proudlyDisplayPoweredByUppy: false,
    })
    .use(Tus, {
      endpoint: root.dataset.endpoint,
      retryDelays: [0, 1000, 3000, 5000],
      removeFingerprintOnSuccess: true,
      ...(chunkSize > 0 ? { chunkSize } : {}),
    })
  globalThis.rindleUppy = uppy // for the browser's console (and the browser test)

  const mib = (bytes) => `${(bytes / 1048576).toFixed(1)} MiB`

  // GET on the upload URL answers 409 not_ready until the worker has assembled the
  // object; a redirect (not followed here) or a 200 means it can be downloaded.
  async function waitUntilReady(url, status) {
    for (;;) {
      const abort = new AbortController()
      let response
      try {
        response = await fetch(url, { redirect: 'manual', cache: 'no-store', signal: abort.signal })
      } catch (err) {
        status.textContent = `check failed: ${err.message}; retrying`
        await new Promise((resolve) => setTimeout(resolve, 2000))
        continue
      }
      abort.abort() // a streamed download: the headers are enough
      if (response.type === 'opaqueredirect' || response.ok) return true
      if (response.status !== 409) {
        status.textContent = `GET answered ${response.status}`
        return false
      }
      status.textContent = 'assembling…'
      await new Promise((resolve) => setTimeout(resolve, 1000))
    }
  }

  uppy.on('upload-success', async (file, response) => {
    const url = response.uploadURL
    const item = document.createElement('li')
    item.dataset.state = 'assembling'
    const name = document.createElement(root.dataset.download === 'off' ? 'span' : 'a')
    name.textContent = file.name
    if (name.tagName === 'A') name.href = url
    const status = document.createElement('span')
    status.className = 'status'
    item.append(name, ` (${mib(file.size)}) `, status)
    finished.append(item)
    if (root.dataset.download === 'off') {
      item.dataset.state = 'ready'
      status.textContent = 'uploaded'
      return
    }
    status.textContent = 'assembling…'
    const ready = await waitUntilReady(url, status)
    item.dataset.state = ready ? 'ready' : 'error'
    if (ready) status.textContent = 'ready'
  })
})()
