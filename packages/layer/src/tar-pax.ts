/**
 * Raw PAX extended attributes of a tar stream.
 *
 * tar-stream decodes PAX record values as UTF-8, which mangles binary xattr
 * values such as `security.capability`. {@link PaxXattrTap} sits in front of
 * the tar-stream extractor, passes every byte through unchanged, follows the
 * tar block framing itself, and keeps the raw bytes of each entry's
 * `SCHILY.xattr.*` records. The extractor emits entries in the same order, so
 * `tap.next()` for each entry it emits gives that entry's xattrs.
 */
import { Transform, type TransformCallback } from 'node:stream';

const BLOCK = 512;
/** Same bound as tar-stream: a larger PAX header fails there anyway. */
const MAX_META_BYTES = 4 * 1024 * 1024;
/** Prefix of the PAX records that carry extended attributes (GNU tar, Docker, libarchive). */
export const XATTR_PREFIX = 'SCHILY.xattr.';

const TYPE_PAX = 0x78; // 'x'
const TYPE_PAX_GLOBAL = 0x67; // 'g'
const TYPE_GNU_LONG_NAME = 0x4c; // 'L'
const TYPE_GNU_LONG_LINK = 0x4b; // 'K'
const TYPE_DIR = 0x35; // '5'
const TYPE_FILE = 0x30; // '0'

/** Extended attributes of one entry: name → raw value. */
export type Xattrs = Map<string, Buffer>;

/** What {@link parsePaxRecords} keeps of a PAX header. */
export interface PaxRecords {
  /** `SCHILY.xattr.<name>` records: name → raw value bytes. */
  xattrs: Xattrs;
  /** The `size` record, which overrides the header's size field. */
  size: number | undefined;
}

/**
 * Parses the records of a PAX header body, keeping values as bytes.
 *
 * @example
 * ```ts
 * const { xattrs } = parsePaxRecords(Buffer.from('26 SCHILY.xattr.user.a=\xff\x00\n', 'latin1'));
 * xattrs.get('user.a'); // <Buffer ff 00>
 * ```
 */
export function parsePaxRecords(body: Buffer): PaxRecords {
  const out: PaxRecords = { xattrs: new Map(), size: undefined };
  let at = 0;
  while (at < body.length) {
    const space = body.indexOf(0x20, at);
    const len = space < 0 ? NaN : parseInt(body.toString('latin1', at, space), 10);
    // tar-stream stops at the first malformed record; stopping here too keeps us in step.
    if (!(len > 0) || at + len > body.length) break;
    const record = body.subarray(space + 1, at + len - 1); // drop the trailing "\n"
    const eq = record.indexOf(0x3d);
    if (eq < 0) break;
    const key = record.toString('utf8', 0, eq);
    const value = record.subarray(eq + 1);
    if (key.startsWith(XATTR_PREFIX)) out.xattrs.set(key.slice(XATTR_PREFIX.length), value);
    else if (key === 'size') out.size = sizeValue(value);
    at += len;
  }
  return out;
}

function sizeValue(value: Buffer): number | undefined {
  const n = parseInt(value.toString('latin1'), 10);
  return Number.isNaN(n) ? undefined : n;
}

/** A numeric header field: octal text, or base-256 when the top bit is set (as tar-stream reads it). */
function numericField(block: Buffer, offset: number, length: number): number {
  const field = block.subarray(offset, offset + length);
  if ((field[0] ?? 0) & 0x80) return base256(field);
  const text = field.toString('latin1').replace(/\0.*$/s, '').trim();
  return text === '' ? 0 : parseInt(text, 8);
}

function base256(field: Buffer): number {
  const negative = field[0] === 0xff;
  let sum = 0;
  for (let i = 1; i < field.length; i++) {
    const byte = field[i] ?? 0;
    sum = sum * 256 + (negative ? 0xff - byte : byte);
  }
  return negative ? -sum : sum;
}

function isZeroBlock(block: Buffer): boolean {
  return block.every((b) => b === 0);
}

/** tar-stream treats a file entry whose name ends in `/` as a directory (old tars). */
function isDirectory(block: Buffer, type: number): boolean {
  if (type === TYPE_DIR) return true;
  if (type !== TYPE_FILE && type !== 0) return false;
  const end = block.indexOf(0);
  const nameEnd = end < 0 || end > 100 ? 100 : end;
  return nameEnd > 0 && block[nameEnd - 1] === 0x2f;
}

type State =
  | { kind: 'header' }
  | { kind: 'meta'; type: number; remaining: number; padding: number; chunks: Buffer[] }
  | { kind: 'skip'; remaining: number };

/**
 * A pass-through Transform that records the raw `SCHILY.xattr.*` PAX values
 * of every tar entry, in entry order.
 *
 * @example
 * ```ts
 * const tap = new PaxXattrTap();
 * const extract = tar.extract();
 * const piping = pipeline(createReadStream('rootfs.tar'), tap, extract);
 * for await (const entry of extract) {
 *   const xattrs = tap.next(); // Map<string, Buffer> of this entry
 *   entry.resume();
 * }
 * await piping;
 * ```
 */
export class PaxXattrTap extends Transform {
  private state: State = { kind: 'header' };
  private partial: Buffer = Buffer.alloc(0);
  private pending: PaxRecords | undefined;
  private globalXattrs: Xattrs = new Map();
  private readonly queue: Xattrs[] = [];

  /** The xattrs of the next entry the extractor emits (empty when it has none). */
  next(): Xattrs {
    return this.queue.shift() ?? new Map<string, Buffer>();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    try {
      this.scan(chunk);
    } catch (err) {
      done(err as Error);
      return;
    }
    done(null, chunk);
  }

  private scan(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.state.kind === 'skip') {
        const n = Math.min(this.state.remaining, chunk.length - at);
        this.state.remaining -= n;
        at += n;
        if (this.state.remaining === 0) this.state = { kind: 'header' };
      } else if (this.state.kind === 'meta') {
        at = this.scanMeta(this.state, chunk, at);
      } else {
        const need = BLOCK - this.partial.length;
        const take = chunk.subarray(at, at + need);
        at += take.length;
        this.partial = this.partial.length ? Buffer.concat([this.partial, take]) : take;
        if (this.partial.length === BLOCK) {
          const block = Buffer.from(this.partial);
          this.partial = Buffer.alloc(0);
          this.onHeader(block);
        }
      }
    }
  }

  private scanMeta(state: Extract<State, { kind: 'meta' }>, chunk: Buffer, at: number): number {
    const n = Math.min(state.remaining, chunk.length - at);
    state.chunks.push(Buffer.from(chunk.subarray(at, at + n)));
    state.remaining -= n;
    if (state.remaining === 0) {
      this.onMetaBody(state.type, Buffer.concat(state.chunks));
      this.state = state.padding ? { kind: 'skip', remaining: state.padding } : { kind: 'header' };
    }
    return at + n;
  }

  private onMetaBody(type: number, body: Buffer): void {
    const records = parsePaxRecords(body);
    if (type === TYPE_PAX_GLOBAL) {
      this.globalXattrs = records.xattrs;
      return;
    }
    // Like tar-stream: global records apply only to entries that also have a local PAX header.
    records.xattrs = new Map([...this.globalXattrs, ...records.xattrs]);
    this.pending = records;
  }

  private onHeader(block: Buffer): void {
    if (isZeroBlock(block)) return;
    const type = block[156] ?? 0;
    const headerSize = numericField(block, 124, 12);
    if (isMetaType(type)) {
      this.startMeta(type, headerSize);
      return;
    }
    const records = this.pending;
    this.pending = undefined;
    this.queue.push(records?.xattrs ?? new Map<string, Buffer>());
    const size = isDirectory(block, type) ? 0 : (records?.size ?? headerSize);
    this.skipData(size);
  }

  private startMeta(type: number, size: number): void {
    const padding = pad(size);
    // PAX bodies are read; GNU long names are skipped without copying.
    const isPax = type === TYPE_PAX || type === TYPE_PAX_GLOBAL;
    if (isPax && size > 0 && size <= MAX_META_BYTES) {
      this.state = { kind: 'meta', type, remaining: size, padding, chunks: [] };
    } else {
      this.skipData(size);
    }
  }

  private skipData(size: number): void {
    const total = size > 0 ? size + pad(size) : 0;
    if (total > 0) this.state = { kind: 'skip', remaining: total };
  }
}

function isMetaType(type: number): boolean {
  return (
    type === TYPE_PAX ||
    type === TYPE_PAX_GLOBAL ||
    type === TYPE_GNU_LONG_NAME ||
    type === TYPE_GNU_LONG_LINK
  );
}

function pad(size: number): number {
  const rest = size % BLOCK;
  return rest === 0 ? 0 : BLOCK - rest;
}
