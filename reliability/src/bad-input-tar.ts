/**
 * Hostile tarballs, written byte for byte with `Tar.encodeHeader` (which
 * writes any name it is given: the import, not the writer, must refuse them).
 */
import { gzipSync } from 'node:zlib';
import { Tar } from '@day11/oci-export';

/** One entry of {@link tarball}. */
export interface Entry {
  name: string;
  kind?: Tar.TarKind;
  body?: string;
  linkname?: string;
}

/** A plain tar of `entries` (gzip-compressed when `gzip`). */
export function tarball(entries: readonly Entry[], { gzip = false } = {}): Buffer {
  const pieces: Buffer[] = [];
  for (const e of entries) {
    const kind = e.kind ?? 'file';
    const body = Buffer.from(e.body ?? '');
    const size = kind === 'file' ? body.length : 0;
    const mode = kind === 'directory' ? 0o755 : 0o644;
    pieces.push(
      Tar.encodeHeader({
        name: e.name,
        kind,
        mode,
        uid: 0,
        gid: 0,
        size,
        mtime: 0,
        linkname: e.linkname,
      }),
    );
    if (size > 0) pieces.push(body, Buffer.alloc((Tar.BLOCK - (size % Tar.BLOCK)) % Tar.BLOCK));
  }
  const tar = Buffer.concat([...pieces, Buffer.alloc(2 * Tar.BLOCK)]);
  return gzip ? gzipSync(tar) : tar;
}

/** A harmless rootfs tarball: what the hostile ones start from. */
export const HARMLESS: readonly Entry[] = [
  { name: 'etc/', kind: 'directory' },
  { name: 'etc/hostname', body: 'box\n' },
];
