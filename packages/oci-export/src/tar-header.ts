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

  const block = ustarBlock(
    h,
    split ?? { prefix: Buffer.alloc(0), name: name.subarray(0, NAME_LEN) },
    link,
  );
  if (records.length === 0) return block;
  const body = paxBody(records);
  const paxHeader = ustarBlock(
    { name: '', kind: 'file', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 0 },
    { prefix: Buffer.alloc(0), name: paxName(name) },
    undefined,
    TYPEFLAG.pax,
  );
  return Buffer.concat([paxHeader, body, Buffer.alloc(padding(body.length)), block]);
}

function numberRecord(records: Array<[string, Buffer]>, key: string, value: number, max: number) {
  if (value > max) records.push([key, ascii(String(value))]);
}

/**
 * Splits a name into ustar's prefix (≤ 155 bytes) and name (≤ 100 bytes) at a
 * `/`, or `undefined` when no split fits.
 */
function splitName(name: Buffer): { prefix: Buffer; name: Buffer } | undefined {
  if (name.length <= NAME_LEN) return { prefix: Buffer.alloc(0), name };
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

function ustarBlock(
  h: TarHeader,
  names: { prefix: Buffer; name: Buffer },
  link: Buffer | undefined,
  typeflag: string = TYPEFLAG[h.kind],
): Buffer {
  const b = Buffer.alloc(BLOCK);
  names.name.copy(b, 0, 0, NAME_LEN);
  octal(b, 100, 8, h.mode & 0o7777);
  octal(b, 108, 8, h.uid > MAX_OCTAL_8 ? 0 : h.uid);
  octal(b, 116, 8, h.gid > MAX_OCTAL_8 ? 0 : h.gid);
  octal(b, 124, 12, h.size > MAX_OCTAL_12 ? 0 : h.size);
  octal(b, 136, 12, Math.min(Math.max(h.mtime, 0), MAX_OCTAL_12));
  b.write(typeflag, 156, 'latin1');
  link?.copy(b, 157, 0, NAME_LEN);
  b.write('ustar\x0000', 257, 'latin1');
  // uname (265) and gname (297) stay empty: numeric ids only.
  if (h.kind === 'char' || h.kind === 'block') {
    devField(b, 329, h.devmajor ?? 0);
    devField(b, 337, h.devminor ?? 0);
  }
  names.prefix.copy(b, 345, 0, PREFIX_LEN);
  checksum(b);
  return b;
}

/** A zero-padded, NUL-terminated octal field of `width` bytes. */
function octal(b: Buffer, offset: number, width: number, value: number): void {
  b.write(value.toString(8).padStart(width - 1, '0') + '\0', offset, width, 'latin1');
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

function checksum(b: Buffer): void {
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i]!;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
}

function isAscii(bytes: Buffer): boolean {
  for (const byte of bytes) if (byte > 0x7e || byte === 0) return false;
  return true;
}

function ascii(text: string): Buffer {
  return Buffer.from(text, 'latin1');
}
