// Upload one file with tus-js-client in the protocol of the user's choice, by default the
// IETF draft (`protocol: 'ietf-draft-05'`, interop version 6), with one interruption
// (driven by tests/e2e/test_draft_tus_js.py).
//
//   node draft.mjs --endpoint URL --file PATH [options]
//
//   --protocol P           tus-js-client's protocol option (default ietf-draft-05; tus-v1)
//   --source file|stream   an fs.ReadStream (size known, resumable from the URL storage) or
//                          a plain Readable without a path (size unknown)
//   --defer-length         uploadLengthDeferred (with --source stream)
//   --chunk-size N         chunkSize (default 5 MiB)
//   --interrupt-at N       once at least N bytes have left the client, abort() (the socket of
//                          the request in flight is destroyed), then resume: from the URL
//                          storage with a new Upload (--url-storage, file source), or by
//                          start() on the same Upload (stream source)
//   --url-storage PATH     FileUrlStorage for the resume of a file source
//
// Every line on stdout is one JSON event:
//   {"event": "request", "method", "offset", "status", "uploadOffset", "headers": [...]}
//       one per answered request; headers: the answer's header names, lower case
//   {"event": "aborted", "after": bytes}
//   {"event": "done", "ok": true|false, "uploadUrl": ..., "size": ..., "error": ...}
// Exit status 0 when the upload succeeded, 1 otherwise.

import { createReadStream, statSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { parseArgs } from 'node:util';

import * as tus from 'tus-js-client';

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    file: { type: 'string' },
    protocol: { type: 'string', default: 'ietf-draft-05' },
    source: { type: 'string', default: 'file' },
    'defer-length': { type: 'boolean', default: false },
    'chunk-size': { type: 'string', default: String(5 * 1024 * 1024) },
    'interrupt-at': { type: 'string' },
    'url-storage': { type: 'string' },
  },
});

if (!args.endpoint || !args.file) {
  console.error('usage: node draft.mjs --endpoint URL --file PATH [options]');
  process.exit(2);
}

const size = statSync(args.file).size;
const interruptAt = args['interrupt-at'] === undefined ? null : Number(args['interrupt-at']);
const urlStorage = args['url-storage'] ? new tus.FileUrlStorage(args['url-storage']) : undefined;
const entries = new Map(); // request -> its event, until answered

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function openSource() {
  if (args.source === 'file') return createReadStream(args.file);
  // A Readable without a path: tus-js-client reads it as a generic stream.
  return createReadStream(args.file).pipe(new PassThrough());
}

function options(extra) {
  return {
    endpoint: args.endpoint,
    protocol: args.protocol,
    chunkSize: Number(args['chunk-size']),
    uploadLengthDeferred: args['defer-length'],
    metadata: { filename: 'draft.bin', filetype: 'application/octet-stream' },
    // Retry on network errors, 409 and 423 (the server may still hold the lease of a
    // request whose client just went away).
    retryDelays: [0, 200, 500, 1000, 2000, 4000],
    ...(urlStorage ? { urlStorage, storeFingerprintForResuming: true } : {}),
    removeFingerprintOnSuccess: true,
    onBeforeRequest(req) {
      const offset = req.getHeader('Upload-Offset');
      entries.set(req, {
        event: 'request',
        method: req.getMethod(),
        offset: offset === undefined ? null : Number(offset),
        status: null,
      });
    },
    onAfterResponse(req, res) {
      const entry = entries.get(req);
      if (!entry) return;
      entries.delete(req);
      entry.status = res.getStatus();
      const uploadOffset = res.getHeader('Upload-Offset');
      entry.uploadOffset = uploadOffset === undefined ? null : Number(uploadOffset);
      entry.headers = Object.keys(res.getUnderlyingObject().headers);
      emit(entry);
    },
    ...extra,
  };
}

function runUpload(upload, prepare = () => {}) {
  return new Promise((resolve, reject) => {
    upload.options.onSuccess = () => resolve(upload);
    upload.options.onError = reject;
    prepare(upload);
    upload.start();
  });
}

async function main() {
  const upload = new tus.Upload(openSource(), options({}));
  if (interruptAt === null) {
    return runUpload(upload);
  }
  // First attempt: abort once enough bytes have left (a real connection drop).
  await new Promise((resolve, reject) => {
    let aborted = false;
    upload.options.onError = reject;
    upload.options.onSuccess = () =>
      reject(new Error(`the upload finished before ${interruptAt} bytes`));
    upload.options.onProgress = (sent) => {
      if (!aborted && sent >= interruptAt) {
        aborted = true;
        emit({ event: 'aborted', after: sent });
        upload.abort(false).then(resolve, reject);
      }
    };
    upload.start();
  });
  upload.options.onProgress = null;
  if (args.source !== 'file') {
    return runUpload(upload); // the same Upload: a HEAD, then on from its offset
  }
  // A new Upload object, as after a page reload: it finds the first in the URL storage.
  const again = new tus.Upload(openSource(), options({}));
  const previous = await again.findPreviousUploads();
  if (previous.length !== 1) {
    throw new Error(`expected 1 previous upload in the URL storage, found ${previous.length}`);
  }
  return runUpload(again, (u) => u.resumeFromPreviousUpload(previous[0]));
}

main().then(
  (upload) => {
    emit({ event: 'done', ok: true, uploadUrl: upload.url, size });
    process.exit(0);
  },
  (err) => {
    emit({ event: 'done', ok: false, size, error: String(err && err.stack ? err.stack : err) });
    process.exit(1);
  },
);
