// Upload one file with tus-js-client through interruptions, reporting every step as it
// happens (driven by tests/e2e/test_any_node.py, where a router in front of several
// nodes also cuts connections).
//
//   node resumable.mjs --endpoint URL --file PATH --url-storage PATH
//                      [--chunk-size N] [--abort-at N[,N...]] [--retry-delays JSON]
//
// --abort-at: each time at least that many bytes have left the client, the upload is
// aborted (abort() destroys the socket of the PATCH in flight) and a new Upload object
// finds it in the URL storage and resumes it, as after a page reload. Network errors met
// on the way (a cut connection, a node that went away) and 409/423/5xx answers are left
// to tus-js-client's own retries (retryDelays).
//
// Every line on stdout is one JSON event:
//   {"event": "created", "url": ...}                      the POST was answered
//   {"event": "request", "method", "offset", "status", "uploadOffset"}   once answered
//   {"event": "retry", "status": s|null, "attempt": n, "retry": bool}   onShouldRetry
//   {"event": "aborted", "after": bytes}                  an --abort-at happened
//   {"event": "resumed", "url": ...}                      a new Upload found it again
//   {"event": "done", "ok": true|false, "uploadUrl": ..., "error": ...}
// Exit status 0 when the upload succeeded, 1 otherwise.

import { createReadStream, statSync } from 'node:fs';
import { parseArgs } from 'node:util';

import * as tus from 'tus-js-client';

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    file: { type: 'string' },
    'url-storage': { type: 'string' },
    'chunk-size': { type: 'string', default: 'Infinity' },
    'abort-at': { type: 'string', default: '' },
    'retry-delays': { type: 'string', default: '[0, 200, 500, 1000, 2000, 3000, 5000]' },
  },
});

if (!args.endpoint || !args.file || !args['url-storage']) {
  console.error('usage: node resumable.mjs --endpoint URL --file PATH --url-storage PATH');
  process.exit(2);
}

const size = statSync(args.file).size;
const chunkSize = args['chunk-size'] === 'Infinity' ? Infinity : Number(args['chunk-size']);
const abortAt = args['abort-at'] ? args['abort-at'].split(',').map(Number) : [];
const urlStorage = new tus.FileUrlStorage(args['url-storage']);

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function statusOf(err) {
  return err && err.originalResponse ? err.originalResponse.getStatus() : null;
}

const pending = new Map(); // request -> its entry, until answered

function options(extra) {
  return {
    endpoint: args.endpoint,
    chunkSize,
    metadata: { filename: 'upload.bin', filetype: 'application/octet-stream' },
    retryDelays: JSON.parse(args['retry-delays']),
    urlStorage,
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onBeforeRequest(req) {
      const offset = req.getHeader('Upload-Offset');
      pending.set(req, {
        event: 'request',
        method: req.getMethod(),
        offset: offset === undefined ? null : Number(offset),
      });
    },
    onAfterResponse(req, res) {
      const entry = pending.get(req);
      if (!entry) return;
      pending.delete(req);
      entry.status = res.getStatus();
      const uploadOffset = res.getHeader('Upload-Offset');
      entry.uploadOffset = uploadOffset === undefined ? null : Number(uploadOffset);
      if (entry.method === 'POST' && entry.status === 201) {
        emit({ event: 'created', url: res.getHeader('Location') });
      }
      emit(entry);
    },
    // tus-js-client's own rule (defaultOnShouldRetry), reported: not a 4xx, or 409/423.
    onShouldRetry(err, attempt) {
      const status = statusOf(err);
      const retry =
        status === null || !(status >= 400 && status < 500) || status === 409 || status === 423;
      const message = String(err && err.message).slice(0, 200);
      emit({ event: 'retry', status, attempt, retry, message });
      return retry;
    },
    ...extra,
  };
}

// Run one Upload until it succeeds, or until `abortAfter` bytes have left (then abort it).
function runOnce(prepare, abortAfter) {
  return new Promise((resolve, reject) => {
    let aborted = false;
    const upload = new tus.Upload(
      createReadStream(args.file),
      options({
        onError: reject,
        onSuccess: () => resolve({ upload, aborted: false }),
        onProgress(sent) {
          if (abortAfter !== undefined && !aborted && sent >= abortAfter) {
            aborted = true;
            emit({ event: 'aborted', after: sent });
            upload.abort(false).then(() => resolve({ upload, aborted: true }), reject);
          }
        },
      }),
    );
    prepare(upload);
    upload.start();
  });
}

async function main() {
  let prepare = () => {};
  for (let round = 0; ; round++) {
    const { upload, aborted } = await runOnce(prepare, abortAt[round]);
    if (!aborted) return upload.url;
    // A new Upload object, as after a page reload: it finds the upload in the URL storage.
    const probe = new tus.Upload(createReadStream(args.file), options({}));
    const previous = await probe.findPreviousUploads();
    if (previous.length !== 1) {
      throw new Error(`expected 1 previous upload in the URL storage, found ${previous.length}`);
    }
    emit({ event: 'resumed', url: previous[0].uploadUrl });
    prepare = (u) => u.resumeFromPreviousUpload(previous[0]);
  }
}

main().then(
  (uploadUrl) => {
    emit({ event: 'done', ok: true, uploadUrl, size });
    process.exit(0);
  },
  (err) => {
    const error = String(err && err.stack ? err.stack : err);
    emit({ event: 'done', ok: false, status: statusOf(err), error });
    process.exit(1);
  },
);
