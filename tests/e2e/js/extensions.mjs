// Upload one file to a tus server with tus-js-client, exercising the tus extensions the way a
// Node.js user would switch them on (driven by tests/e2e/test_tus_js_extensions.py).
//
//   node extensions.mjs --endpoint URL --file PATH [options]
//
//   --source file|stream|buffer   what tus-js-client gets: an fs.ReadStream (size known), a
//                                 plain Readable without a path (size unknown), or a Buffer
//   --chunk-size N|Infinity       tus-js-client's chunkSize (default Infinity)
//   --parallel N                  parallelUploads: N partial uploads, then a final one
//   --defer-length                uploadLengthDeferred: Upload-Defer-Length: 1 on the POST
//   --data-during-creation        uploadDataDuringCreation: the first chunk rides on the POST
//   --override-patch              overridePatchMethod: POST + X-HTTP-Method-Override: PATCH
//   --checksum ALG[,ALG...]       add a correct Upload-Checksum to every PATCH (tus-js-client
//                                 computes none itself), rotating through the algorithms
//   --bad-checksum-at N           the N-th PATCH (0-based) carries a wrong checksum, once
//   --retry-on-460                onShouldRetry also retries a 460 (by default tus-js-client
//                                 retries only network errors, 5xx, 409 and 423)
//   --restart-after-error         when the upload fails (onError), call start() once more
//   --hold-before-patch N         before sending the N-th PATCH (0-based), print a "hold"
//                                 event and wait for a line on stdin
//   --retry-delays JSON           retryDelays (default [0, 200, 500, 1000, 2000])
//   --metadata JSON               metadata of the upload (default {})
//
// Every line on stdout is one JSON event:
//   {"event": "request", ...}  one per request once it is answered (or failed): method,
//                              override, offset, status, uploadOffset (of the answer),
//                              uploadLength / deferLength / concat / checksum (sent), location
//   {"event": "hold", "url": ..., "offset": ...}   with --hold-before-patch
//   {"event": "error", "status": s, "message": ...} each time onError is called
//   {"event": "done", "ok": true|false, "uploadUrl": ..., "size": ..., "error": ...}
// Exit status 0 when the upload succeeded, 1 otherwise.

import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { PassThrough } from 'node:stream';
import { parseArgs } from 'node:util';

import * as tus from 'tus-js-client';

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    file: { type: 'string' },
    source: { type: 'string', default: 'file' },
    'chunk-size': { type: 'string', default: 'Infinity' },
    parallel: { type: 'string', default: '1' },
    'defer-length': { type: 'boolean', default: false },
    'data-during-creation': { type: 'boolean', default: false },
    'override-patch': { type: 'boolean', default: false },
    checksum: { type: 'string' },
    'bad-checksum-at': { type: 'string' },
    'retry-on-460': { type: 'boolean', default: false },
    'restart-after-error': { type: 'boolean', default: false },
    'hold-before-patch': { type: 'string' },
    'retry-delays': { type: 'string', default: '[0, 200, 500, 1000, 2000]' },
    metadata: { type: 'string', default: '{}' },
  },
});

if (!args.endpoint || !args.file) {
  console.error('usage: node extensions.mjs --endpoint URL --file PATH [options]');
  process.exit(2);
}

const size = statSync(args.file).size;
const chunkSize = args['chunk-size'] === 'Infinity' ? Infinity : Number(args['chunk-size']);
const algorithms = args.checksum ? args.checksum.split(',') : [];
const badChecksumAt = args['bad-checksum-at'] === undefined ? null : Number(args['bad-checksum-at']);
const holdBeforePatch =
  args['hold-before-patch'] === undefined ? null : Number(args['hold-before-patch']);
// The whole file, for computing the checksum of any chunk (the test files are small).
const content = algorithms.length > 0 ? readFileSync(args.file) : null;

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

// --- stdin lines, for --hold-before-patch ---------------------------------------------------

const stdinLines = [];
const stdinWaiters = [];
if (holdBeforePatch !== null) {
  createInterface({ input: process.stdin }).on('line', (line) => {
    const waiter = stdinWaiters.shift();
    if (waiter) waiter(line);
    else stdinLines.push(line);
  });
}

function nextStdinLine() {
  if (stdinLines.length > 0) return Promise.resolve(stdinLines.shift());
  return new Promise((resolve) => stdinWaiters.push(resolve));
}

// --- checksums ------------------------------------------------------------------------------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function digest(algorithm, data) {
  if (algorithm === 'crc32') {
    let crc = 0xffffffff;
    for (const byte of data) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
    const out = Buffer.alloc(4);
    out.writeUInt32BE((crc ^ 0xffffffff) >>> 0);
    return out;
  }
  return createHash(algorithm).update(data).digest();
}

// --- the request log ------------------------------------------------------------------------

const entries = new Map(); // request object -> its log entry (parallel requests interleave)
let patchCount = 0; // PATCH requests sent so far (including overridden ones)
let badChecksumSent = false;

function isPatch(req) {
  return (
    req.getMethod() === 'PATCH' ||
    (req.getMethod() === 'POST' && req.getHeader('X-HTTP-Method-Override') === 'PATCH')
  );
}

async function onBeforeRequest(req) {
  const entry = {
    event: 'request',
    method: req.getMethod(),
    override: req.getHeader('X-HTTP-Method-Override') ?? null,
    url: req.getURL(),
    offset: req.getHeader('Upload-Offset') === undefined ? null : Number(req.getHeader('Upload-Offset')),
    uploadLength: req.getHeader('Upload-Length') ?? null,
    deferLength: req.getHeader('Upload-Defer-Length') ?? null,
    concat: req.getHeader('Upload-Concat') ?? null,
    checksum: null,
    status: null,
    uploadOffset: null,
    location: null,
  };
  entries.set(req, entry);
  if (!isPatch(req)) return;

  const index = patchCount++;
  entry.index = index;
  if (algorithms.length > 0) {
    const algorithm = algorithms[index % algorithms.length];
    const start = entry.offset;
    const end = Math.min(size, start + chunkSize);
    let body = content.subarray(start, end);
    if (badChecksumAt === index && !badChecksumSent) {
      badChecksumSent = true;
      body = Buffer.concat([body, Buffer.from('not the body')]); // a digest of other bytes
      entry.badChecksum = true;
    }
    entry.checksum = `${algorithm} ${digest(algorithm, body).toString('base64')}`;
    req.setHeader('Upload-Checksum', entry.checksum);
  }
  if (holdBeforePatch === index) {
    emit({ event: 'hold', url: req.getURL(), offset: entry.offset });
    await nextStdinLine();
  }
}

async function onAfterResponse(req, res) {
  const entry = entries.get(req);
  if (!entry) return;
  entries.delete(req);
  entry.status = res.getStatus();
  entry.uploadOffset =
    res.getHeader('Upload-Offset') === undefined ? null : Number(res.getHeader('Upload-Offset'));
  entry.location = res.getHeader('Location') ?? null;
  emit(entry);
}

// --- the upload -----------------------------------------------------------------------------

function openSource() {
  switch (args.source) {
    case 'file':
      return createReadStream(args.file);
    case 'stream':
      // A Readable without a path: tus-js-client cannot know its size in advance.
      return createReadStream(args.file).pipe(new PassThrough());
    case 'buffer':
      return readFileSync(args.file);
    default:
      throw new Error(`unknown --source ${args.source}`);
  }
}

function statusOf(err) {
  return err && err.originalResponse ? err.originalResponse.getStatus() : null;
}

// tus-js-client's own rule (defaultOnShouldRetry): not a 4xx, or a 409 or 423.
function defaultRetry(status) {
  return !(status >= 400 && status < 500) || status === 409 || status === 423;
}

function run() {
  return new Promise((resolve, reject) => {
    let restarted = false;
    const options = {
      endpoint: args.endpoint,
      chunkSize,
      metadata: JSON.parse(args.metadata),
      retryDelays: JSON.parse(args['retry-delays']),
      parallelUploads: Number(args.parallel),
      uploadLengthDeferred: args['defer-length'],
      uploadDataDuringCreation: args['data-during-creation'],
      overridePatchMethod: args['override-patch'],
      onBeforeRequest,
      onAfterResponse,
      onSuccess: () => resolve(upload),
      onError(err) {
        emit({ event: 'error', status: statusOf(err), message: String(err && err.message) });
        if (args['restart-after-error'] && !restarted) {
          restarted = true;
          upload.start(); // what the documentation suggests after an error: start() again
          return;
        }
        reject(err);
      },
    };
    if (args['retry-on-460']) {
      options.onShouldRetry = (err) => {
        const status = statusOf(err);
        return status === 460 || defaultRetry(status ?? 0);
      };
    }
    const upload = new tus.Upload(openSource(), options);
    upload.start();
  });
}

// A promise tus-js-client never settles (e.g. a stream it waits on forever) lets the event
// loop drain: say so instead of exiting silently with status 0.
process.on('beforeExit', () => {
  emit({ event: 'done', ok: false, size, status: null, error: 'the upload never settled' });
  process.exit(1);
});

run().then(
  (upload) => {
    emit({ event: 'done', ok: true, uploadUrl: upload.url, size });
    process.exit(0);
  },
  (err) => {
    emit({
      event: 'done',
      ok: false,
      size,
      status: statusOf(err),
      error: String(err && err.stack ? err.stack : err),
    });
    process.exit(1);
  },
);
