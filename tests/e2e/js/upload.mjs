// Upload one file to a tus server with tus-js-client, the way a Node.js user would.
//
//   node upload.mjs --endpoint URL --file PATH [--chunk-size BYTES|Infinity]
//                   [--interrupt-at BYTES --url-storage PATH]
//
// Without --interrupt-at: one upload, straight through.
// With --interrupt-at: the upload is aborted (its socket destroyed mid-body) once at least
// that many bytes have left the client; then a second Upload object finds the first one
// in the URL storage (findPreviousUploads) and resumes it (resumeFromPreviousUpload).
//
// On success, prints one JSON line on stdout:
//   {"uploadUrl": ..., "size": ..., "patches": [{"offset": o, "status": s, "length": n}, ...],
//    "abortedAfter": n|null, "resumedUrl": ...|null, "resumedFrom": o|null}
// On failure, prints the error on stderr and exits 1.

import { createReadStream, statSync } from 'node:fs';
import { parseArgs } from 'node:util';

import * as tus from 'tus-js-client';

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    file: { type: 'string' },
    'chunk-size': { type: 'string', default: 'Infinity' },
    'interrupt-at': { type: 'string' },
    'url-storage': { type: 'string' },
  },
});

if (!args.endpoint || !args.file) {
  console.error('usage: node upload.mjs --endpoint URL --file PATH [--chunk-size N|Infinity]');
  process.exit(2);
}

const chunkSize = args['chunk-size'] === 'Infinity' ? Infinity : Number(args['chunk-size']);
const interruptAt = args['interrupt-at'] === undefined ? null : Number(args['interrupt-at']);
if (interruptAt !== null && !args['url-storage']) {
  console.error('--interrupt-at needs --url-storage (the resume looks the upload up there)');
  process.exit(2);
}
const size = statSync(args.file).size;
const urlStorage = args['url-storage'] ? new tus.FileUrlStorage(args['url-storage']) : undefined;
const patches = [];

function options(extra) {
  return {
    endpoint: args.endpoint,
    chunkSize,
    metadata: { filename: 'upload.bin', filetype: 'application/octet-stream' },
    // What a user would configure: retry on network errors, 409 and 423 (the server may
    // still hold the lease of a request whose client just went away).
    retryDelays: [0, 200, 500, 1000, 2000, 4000],
    ...(urlStorage ? { urlStorage, storeFingerprintForResuming: true } : {}),
    removeFingerprintOnSuccess: true,
    onBeforeRequest(req) {
      if (req.getMethod() === 'PATCH') {
        // status and length stay null when no response came (an aborted request)
        patches.push({ offset: Number(req.getHeader('Upload-Offset')), status: null, length: null });
      }
    },
    onAfterResponse(req, res) {
      if (req.getMethod() === 'PATCH' && patches.length > 0) {
        const last = patches[patches.length - 1];
        last.status = res.getStatus();
        if (last.status === 204) last.length = Number(res.getHeader('Upload-Offset')) - last.offset;
      }
    },
    ...extra,
  };
}

// Run one Upload to success; `prepare` may resume it before it starts.
function uploadOnce(prepare) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(
      createReadStream(args.file),
      options({ onError: reject, onSuccess: () => resolve(upload) }),
    );
    prepare(upload);
    upload.start();
  });
}

async function main() {
  if (interruptAt === null) {
    const upload = await uploadOnce(() => {});
    return { uploadUrl: upload.url, abortedAfter: null, resumedUrl: null, resumedFrom: null };
  }

  // First attempt: abort once enough bytes have left. abort() destroys the socket of the
  // PATCH in flight: a real connection drop from the server's point of view.
  let abortedAfter = null;
  let firstUrl = null;
  await new Promise((resolve, reject) => {
    const upload = new tus.Upload(
      createReadStream(args.file),
      options({
        onError: reject,
        onSuccess: () => reject(new Error(`the upload finished before ${interruptAt} bytes`)),
        onProgress(sent) {
          if (abortedAfter === null && sent >= interruptAt) {
            abortedAfter = sent;
            firstUrl = upload.url;
            upload.abort(false).then(resolve, reject);
          }
        },
      }),
    );
    upload.start();
  });

  // Second attempt: a new Upload object, as after a page reload or a process restart.
  const probe = new tus.Upload(createReadStream(args.file), options({}));
  const previous = await probe.findPreviousUploads();
  if (previous.length !== 1) {
    throw new Error(`expected 1 previous upload in the URL storage, found ${previous.length}`);
  }
  const firstPatchAfterResume = patches.length; // patches[i >= this] belong to the resume
  const resumed = await uploadOnce((u) => u.resumeFromPreviousUpload(previous[0]));
  const resumedFrom =
    patches.length > firstPatchAfterResume ? patches[firstPatchAfterResume].offset : null;
  return {
    uploadUrl: firstUrl,
    abortedAfter,
    resumedUrl: resumed.url,
    resumedFrom,
    firstPatchAfterResume,
  };
}

main().then(
  (result) => {
    process.stdout.write(`${JSON.stringify({ size, patches, ...result })}\n`);
  },
  (err) => {
    console.error(`upload failed: ${err && err.stack ? err.stack : err}`);
    process.exit(1);
  },
);
