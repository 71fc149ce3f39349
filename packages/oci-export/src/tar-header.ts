/**
 * Tar headers, byte for byte: POSIX ustar, with a PAX extended header (type
 * `x`) in front only where ustar cannot say it — a name that does not fit the
 * 100 + 155 byte fields or is not ASCII, a long or non-ASCII link target, ids
 * above 2,097,151, sizes of 8 GiB and more, mtimes outside ustar's range, and
 * extended attributes (`SCHILY.xattr.*`, the key GNU tar, Go and umoci read).
 *
 * Nothing here reads the clock, the user database or the environment: equal
 * inputs give equal bytes. uname/gname are always empty (numeric ids only).
 */

/** Size of a tar block. */
export const BLOCK = 512;

/** Entry types written by day11 (ustar typeflags). */
export const TYPEFLAG = {
  file: '0',
  hardlink: '1',
  symlink: '2',
  char: '3',
  block: '4',
  directory: '5',
  fifo: '6',
  pax: 'x',
} as const;

/** The kind of a tar entry. */
export type TarKind = Exclude<keyof typeof TYPEFLAG, 'pax'>;

/** One entry's metadata, as it goes into the archive. */
export interface TarHeader {
  /** Path inside the archive, `/`-separated, no leading `./`; directories end with `/`. */
  name: string;
  kind: TarKind;
  /** Permission bits, including setuid/setgid/sticky (`st_mode & 0o7777`). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of content that follow; 0 for everything but regular files. */
  size: number;
  /** Modification time, whole seconds since the epoch. */
  mtime: number;
  /** Target of a symlink, or the earlier archive path of a hardlink. */
  linkname?: string | undefined;
  devmajor?: number | undefined;
  devminor?: number | undefined;
  /** Extended attributes to record, already filtered and sorted by name. */
  xattrs?: ReadonlyArray<readonly [name: string, value: Buffer]> | undefined;
}

const NAME_LEN = 100;
const PREFIX_LEN = 155;
/** Largest value of an 8-byte octal field (7 digits). */
export const MAX_OCTAL_8 = 0o7777777;
/** Largest value of a 12-byte octal field (11 digits). */
export const MAX_OCTAL_12 = 0o77777777777;

/** The two zero blocks that end an archive. */
export const END_OF_ARCHIVE: Buffer = Buffer.alloc(2 * BLOCK);

/**
 * Zero bytes needed after `size` bytes of content to reach a block boundary.
 *
 * @example
 * ```ts
 * padding(31); // 481
 * ```
 */
export function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/**
 * Encodes one entry's header: the ustar block, preceded by a PAX header and
 * its records when needed. Content (and its padding) is the caller's.
 *
 * @example
 * ```ts
 * const bytes = encodeHeader({ name: 'etc/passwd', kind: 'file', mode: 0o644, uid: 0, gid: 0, size: 31, mtime: 0 });
 * bytes.length; // 512
 * ```
 */
export function encodeHeader(h: TarHeader): Buffer {
  const { name, split, link, records } = prepare(h);
  const block = Buffer.alloc(BLOCK);
  ustarInto(block, 0, h, split ?? { prefix: EMPTY, name: name.subarray(0, NAME_LEN) }, link);
  if (records.length === 0) return block;
  const body = paxBody(records);
  const paxHeader = Buffer.alloc(BLOCK);
  ustarInto(
    paxHeader,
    0,
    { name: '', kind: 'file', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 0 },
    { prefix: EMPTY, name: paxName(name) },
    undefined,
    TYPEFLAG.pax,
  );
  return Buffer.concat([paxHeader, body, Buffer.alloc(padding(body.length)), block]);
}

/**
 * Writes `h` as one ustar block at `offset` in `target`, the same bytes as
 * {@link encodeHeader} gives, when one block can say everything; returns
 * false, having written nothing, when `h` needs a PAX header (or the block
 * does not fit). Spares the common entry a buffer of its own.
 *
 * @example
 * ```ts
 * if (!encodeHeaderInto(h, chunk, pos)) encodeHeader(h).copy(chunk, pos); // (when it fits)
 * ```
 */
export function encodeHeaderInto(h: TarHeader, target: Buffer, offset: number): boolean {
  if (target.length - offset < BLOCK) return false;
  const { split, link, records } = prepare(h);
  if (split === undefined || records.length > 0) return false;
  target.fill(0, offset, offset + BLOCK);
  ustarInto(target, offset, h, split, link);
  return true;
}

const EMPTY = Buffer.alloc(0);

/** What a header needs: its name split for ustar (when it fits), its link, its PAX records. */
function prepare(h: TarHeader): {
  name: Buffer;
  split: { prefix: Buffer; name: Buffer } | undefined;
  link: Buffer | undefined;
  records: Array<[string, Buffer]>;
} {
  const records: Array<[string, Buffer]> = [];
  const name = Buffer.from(h.name, 'utf8');
  const split = isAscii(name) ? splitName(name) : undefined;
  if (!split) records.push(['path', name]);
  const link = h.linkname === undefined ? undefined : Buffer.from(h.linkname, 'utf8');
  if (link && (link.length > NAME_LEN || !isAscii(link))) records.push(['linkpath', link]);
  numberRecord(records, 'uid', h.uid, MAX_OCTAL_8);
  numberRecord(records, 'gid', h.gid, MAX_OCTAL_8);
  numberRecord(records, 'size', h.size, MAX_OCTAL_12);
  if (h.mtime < 0 || h.mtime > MAX_OCTAL_12) records.push(['mtime', ascii(String(h.mtime))]);
  for (const [key, value] of h.xattrs ?? []) records.push([`SCHILY.xattr.${key}`, value]);
  return { name, split, link, records };
}

function numberRecord(records: Array<[string, Buffer]>, key: string, value: number, max: number) {
  if (value > max) records.push([key, ascii(String(value))]);
}

/**
 * Splits a name into ustar's prefix (≤ 155 bytes) and name (≤ 100 bytes) at a
 * `/`, or `undefined` when no split fits.
 */
function splitName(name: Buffer): { prefix: Buffer; name: Buffer } | undefined {
  if (name.length <= NAME_LEN) return { prefix: EMPTY, name };
  if (name.length > PREFIX_LEN + 1 + NAME_LEN) return undefined;
  // The rightmost slash that leaves a prefix that fits; a trailing slash (a
  // directory) cannot be the split point, the name part must not be empty.
  for (let i = Math.min(PREFIX_LEN, name.length - 2); i > 0; i--) {
    if (name[i] !== 0x2f) continue;
    if (name.length - i - 1 > NAME_LEN) return undefined;
    return { prefix: name.subarray(0, i), name: name.subarray(i + 1) };
  }
  return undefined;
}

/**
 * The PAX header's own name: `PaxHeaders.0/<basename>` (Go's convention; GNU
 * puts its pid there, which would break determinism), ASCII, ≤ 100 bytes.
 */
function paxName(name: Buffer): Buffer {
  const text = name.toString('utf8').replace(/\/$/, '');
  const base = text.slice(text.lastIndexOf('/') + 1).replace(/[^\x20-\x7e]/g, '_');
  return ascii(`PaxHeaders.0/${base}`.slice(0, NAME_LEN));
}

/** PAX records `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, itself included. */
function paxBody(records: Array<[string, Buffer]>): Buffer {
  records.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const parts: Buffer[] = [];
  for (const [key, value] of records) {
    const rest = Buffer.byteLength(key) + value.length + 3; // ' ', '=', '\n'
    let len = rest + String(rest).length;
    if (String(len).length !== String(rest).length) len = rest + String(len).length;
    parts.push(ascii(`${len} ${key}=`), value, ascii('\n'));
  }
  return Buffer.concat(parts);
}

/** Writes a ustar block at `o` in `b`, whose 512 bytes from `o` are zero. */
function ustarInto(
  b: Buffer,
  o: number,
  h: TarHeader,
  names: { prefix: Buffer; name: Buffer },
  link: Buffer | undefined,
  typeflag: string = TYPEFLAG[h.kind],
): void {
  names.name.copy(b, o, 0, NAME_LEN);
  octal(b, o + 100, 8, h.mode & 0o7777);
  octal(b, o + 108, 8, h.uid > MAX_OCTAL_8 ? 0 : h.uid);
  octal(b, o + 116, 8, h.gid > MAX_OCTAL_8 ? 0 : h.gid);
  octal(b, o + 124, 12, h.size > MAX_OCTAL_12 ? 0 : h.size);
  octal(b, o + 136, 12, Math.min(Math.max(h.mtime, 0), MAX_OCTAL_12));
  b[o + 156] = typeflag.charCodeAt(0);
  link?.copy(b, o + 157, 0, NAME_LEN);
  MAGIC.copy(b, o + 257);
  // uname (265) and gname (297) stay empty: numeric ids only.
  if (h.kind === 'char' || h.kind === 'block') {
    devField(b, o + 329, h.devmajor ?? 0);
    devField(b, o + 337, h.devminor ?? 0);
  }
  names.prefix.copy(b, o + 345, 0, PREFIX_LEN);
  checksum(b, o);
}

/** ustar's magic and version. */
const MAGIC = Buffer.from('ustar\x0000', 'latin1');

/** A zero-padded, NUL-terminated octal field of `width` bytes (`value` fits `width - 1` digits). */
function octal(b: Buffer, offset: number, width: number, value: number): void {
  b[offset + width - 1] = 0;
  let v = value;
  for (let i = offset + width - 2; i >= offset; i--) {
    b[i] = 0x30 + (v % 8);
    v = Math.floor(v / 8);
  }
}

/** Device numbers beyond 7 octal digits use GNU's base-256 form (PAX has no key for them). */
function devField(b: Buffer, offset: number, value: number): void {
  if (value <= MAX_OCTAL_8) return octal(b, offset, 8, value);
  b[offset] = 0x80;
  let v = value;
  for (let i = offset + 7; i > offset; i--) {
    b[i] = v % 256;
    v = Math.floor(v / 256);
  }
}

/** The checksum field of the block at `o`: six octal digits, NUL, space. */
function checksum(b: Buffer, o: number): void {
  b.fill(0x20, o + 148, o + 156);
  let sum = 0;
  for (let i = o; i < o + BLOCK; i++) sum += b[i]!;
  octal(b, o + 148, 7, sum);
  b[o + 155] = 0x20;
}

function isAscii(bytes: Buffer): boolean {
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    if (byte > 0x7e || byte === 0) return false;
  }
  return true;
}

function ascii(text: string): Buffer {
  return Buffer.from(text, 'latin1');
}
