/**
 * Pass-through streams that check bytes as they flow: every download is
 * verified against its digest and size without holding it in memory.
 */
import { createHash, type Hash } from 'node:crypto';
import { once } from 'node:events';
import { Readable, Transform, type TransformCallback } from 'node:stream';

/**
 * `sha256:<hex>` of `bytes`.
 *
 * @example
 * ```ts
 * sha256Of(Buffer.from('{}')); // 'sha256:44136fa3...'
 * ```
 */
export function sha256Of(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** A pass-through that hashes and counts the bytes it sees. */
export class Sha256Tap extends Transform {
  private readonly hash: Hash = createHash('sha256');
  /** Bytes seen so far. */
  bytes = 0;
  private digestValue: string | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }

  /** `sha256:<hex>` of everything that passed; call once the stream has ended. */
  digest(): string {
    this.digestValue ??= `sha256:${this.hash.digest('hex')}`;
    return this.digestValue;
  }
}

/** What a {@link VerifiedStream} reports when the bytes are not the expected ones. */
export type VerifyFailure =
  | { kind: 'too-long'; bytes: number }
  | { kind: 'too-short'; bytes: number }
  | { kind: 'digest'; actual: string };

/**
 * A pass-through that fails the stream (with the error `fail` makes) when
 * the bytes exceed `size`, end short of it, or do not hash to `digest`.
 * Checked before the stream ends, so a consumer never sees a clean end of
 * wrong bytes.
 *
 * @example
 * ```ts
 * const checked = new VerifiedStream({ digest, size, fail: (f) => new Error(f.kind) });
 * await pipeline(download, checked, createWriteStream(file));
 * ```
 */
export class VerifiedStream extends Sha256Tap {
  private readonly expected: { digest: string; size: number | undefined };
  private readonly fail: (failure: VerifyFailure) => Error;

  constructor(opts: {
    digest: string;
    size?: number | undefined;
    fail: (failure: VerifyFailure) => Error;
  }) {
    super();
    this.expected = { digest: opts.digest, size: opts.size };
    this.fail = opts.fail;
  }

  override _transform(chunk: Buffer, enc: BufferEncoding, done: TransformCallback): void {
    const { size } = this.expected;
    if (size !== undefined && this.bytes + chunk.length > size) {
      done(this.fail({ kind: 'too-long', bytes: this.bytes + chunk.length }));
      return;
    }
    super._transform(chunk, enc, done);
  }

  override _flush(done: TransformCallback): void {
    const { size, digest } = this.expected;
    if (size !== undefined && this.bytes < size) {
      done(this.fail({ kind: 'too-short', bytes: this.bytes }));
      return;
    }
    const actual = this.digest();
    done(actual === digest ? null : this.fail({ kind: 'digest', actual }));
  }
}

/** Options of {@link verified}. */
export interface VerifiedOptions {
  digest: string;
  size?: number | undefined;
  /** The error for bytes that are not the expected ones. */
  fail: (failure: VerifyFailure) => Error;
  /** The error for a source that fails (a dropped connection, an unreadable file), given the bytes seen. */
  failSource: (err: unknown, bytes: number) => Error;
}

/**
 * `source` as a {@link VerifiedStream}, fed with backpressure; reading stops
 * when the stream is destroyed. Late errors (after the consumer gave up) are
 * never thrown at the process.
 *
 * @example
 * ```ts
 * const blob = verified(createReadStream(path), { digest, size, fail, failSource });
 * await pipeline(blob, createGunzip(), sink);
 * ```
 */
export function verified(
  source: AsyncIterable<Uint8Array> | null,
  opts: VerifiedOptions,
): VerifiedStream {
  const checked = new VerifiedStream(opts);
  checked.on('error', () => undefined);
  void feed(source, checked).catch((err: unknown) => {
    if (checked.destroyed) return;
    const name = (err as { name?: unknown } | null)?.name;
    const abort = name === 'AbortError' || name === 'TimeoutError';
    checked.destroy(abort ? (err as Error) : opts.failSource(err, checked.bytes));
  });
  return checked;
}

async function feed(source: AsyncIterable<Uint8Array> | null, into: VerifiedStream): Promise<void> {
  if (source instanceof Readable) return feedEvents(source, into);
  const closed = new Promise<void>((resolve) => into.once('close', resolve));
  for await (const chunk of source ?? []) {
    if (into.destroyed) return; // leaving the loop closes the source
    if (!into.write(chunk)) await Promise.race([once(into, 'drain'), closed]);
  }
  if (!into.destroyed) into.end();
}

/**
 * {@link feed} for a Node stream, with events rather than an async iterator:
 * no promise per chunk, which kept a 2 GiB download's young generation (and
 * so its RSS) about 10 MB larger.
 */
function feedEvents(source: Readable, into: VerifiedStream): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      if (!into.write(chunk)) source.pause();
    };
    const onDrain = () => source.resume();
    const done = () => {
      source.off('data', onData).off('end', onEnd).off('error', onError);
      into.off('drain', onDrain).off('close', onClose);
      source.on('error', () => undefined); // a late socket error has nobody to tell
    };
    const onEnd = () => {
      done();
      if (!into.destroyed) into.end();
      resolve();
    };
    const onError = (err: Error) => {
      done();
      reject(err);
    };
    const onClose = () => {
      done();
      source.destroy();
      resolve();
    };
    source.on('data', onData).once('end', onEnd).once('error', onError);
    into.on('drain', onDrain).once('close', onClose);
  });
}
