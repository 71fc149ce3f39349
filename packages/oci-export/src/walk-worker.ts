/**
 * Worker-thread entry of the walk stage of a layer's tar (started by
 * `tar-worker.ts`): lists and stats the tree, reads xattrs and symlinks, and
 * encodes every header, in archive order. Entries go to the parent in
 * batches; the parent, which reads file contents into the archive, gives a
 * credit back for each batch it takes, so the walk runs at most `credits`
 * batches ahead of it.
 *
 * Messages, worker → parent: {@link WalkBatch} `entries`, `warning`, `end`,
 * `error`; parent → worker: `walk` (one at a time: the worker is reused
 * for the next layer), `credit`.
 */
import { parentPort } from 'node:worker_threads';
import { encodeEntries } from './layer-tar.js';
import { serializeError, type ThreadError } from './thread-error.js';
import { walk, type WalkWarning } from './walk.js';

/** What the walk worker is asked to walk (a `walk` message). */
export interface WalkJob {
  root: string;
  /** Batches sent and not yet taken. */
  credits: number;
}

/** A batch of encoded entries: headers back to back, with each one's length and content. */
export interface WalkBatch {
  type: 'entries';
  headers: Uint8Array;
  lengths: number[];
  /** The file each entry's content is read from, or `null`. */
  sources: Array<string | null>;
  sizes: number[];
}

/** Messages to the walk worker: a walk to run (one at a time), or a credit. */
export type ToWalker = ({ type: 'walk' } & WalkJob) | { type: 'credit' };

/** Messages from the walk worker. */
export type FromWalker =
  | WalkBatch
  | { type: 'warning'; warning: WalkWarning }
  | { type: 'end' }
  | ({ type: 'error' } & ThreadError);

/** Entries per batch. */
const BATCH = 1024;

const port = parentPort!;
let credits = 0;
let wake: (() => void) | undefined;
port.on('message', (message: ToWalker) => {
  if (message.type === 'credit') {
    credits++;
    wake?.();
    return;
  }
  credits = message.credits;
  run(message).then(
    () => send({ type: 'end' }),
    (err: unknown) => send({ type: 'error', ...serializeError(err) }),
  );
});
const send = (message: FromWalker) => port.postMessage(message);

async function run(job: WalkJob): Promise<void> {
  const onWarning = (warning: WalkWarning) => send({ type: 'warning', warning });
  let batch: WalkBatch = empty();
  const flush = async () => {
    while (credits === 0) await new Promise<void>((resolve) => (wake = resolve));
    credits--;
    send(batch);
    batch = empty();
  };
  const headers: Buffer[] = [];
  for (const { header, source, size } of encodeEntries(walk(job.root, { onWarning }))) {
    headers.push(header);
    batch.lengths.push(header.length);
    batch.sources.push(source ?? null);
    batch.sizes.push(size);
    if (headers.length === BATCH) {
      batch.headers = Buffer.concat(headers);
      headers.length = 0;
      await flush();
    }
  }
  if (headers.length > 0) {
    batch.headers = Buffer.concat(headers);
    await flush();
  }
}

function empty(): WalkBatch {
  return { type: 'entries', headers: new Uint8Array(0), lengths: [], sources: [], sizes: [] };
}
