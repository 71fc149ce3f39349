import { describe, expect, it } from 'vitest';
import { BLOCK, encodeHeader, MAX_OCTAL_8, padding, type TarHeader } from './tar-header.js';
import { parseTar } from './fixtures/layers.js';

const file = (over: Partial<TarHeader> = {}): TarHeader => ({
  name: 'etc/passwd',
  kind: 'file',
  mode: 0o644,
  uid: 0,
  gid: 0,
  size: 0,
  mtime: 1_700_000_000,
  ...over,
});

function archive(...headers: TarHeader[]): Buffer {
  return Buffer.concat([...headers.map(encodeHeader), Buffer.alloc(2 * BLOCK)]);
}

function field(block: Buffer, offset: number, width: number): string {
  return block.subarray(offset, offset + width).toString('latin1');
}

describe('encodeHeader', () => {
  it('writes a plain ustar block: octal fields, no uname/gname, a valid checksum', () => {
    const b = encodeHeader(file({ size: 31 }));
    expect(b.length).toBe(BLOCK);
    expect(field(b, 0, 10)).toBe('etc/passwd');
    expect(field(b, 100, 8)).toBe('0000644\0');
    expect(field(b, 124, 12)).toBe('00000000037\0');
    expect(field(b, 257, 8)).toBe('ustar\x0000');
    expect(b.subarray(265, 329).every((x) => x === 0)).toBe(true); // uname, gname
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : b[i]!;
    expect(parseInt(field(b, 148, 6), 8)).toBe(sum);
  });

  it('is a pure function of its input', () => {
    const h = file({ xattrs: [['user.a', Buffer.from('1')]], uid: MAX_OCTAL_8 + 1 });
    expect(encodeHeader(h).equals(encodeHeader({ ...h }))).toBe(true);
  });

  it('splits names of 101–255 bytes into prefix and name, without PAX', async () => {
    const name = `${'d'.repeat(150)}/${'f'.repeat(99)}`;
    const b = encodeHeader(file({ name }));
    expect(b.length).toBe(BLOCK);
    expect(field(b, 345, 150)).toBe('d'.repeat(150));
    expect((await parseTar(archive(file({ name }))))[0]!.name).toBe(name);
  });

  it('uses a PAX path for names that cannot be split and for non-ASCII names', async () => {
    const long = `${'a'.repeat(120)}/${'b'.repeat(200)}`;
    const unicode = 'opt/héllo/文件.txt';
    const entries = await parseTar(archive(file({ name: long }), file({ name: unicode })));
    expect(entries.map((e) => e.name)).toEqual([long, unicode]);
    expect(entries.every((e) => e.pax?.['path'] !== undefined)).toBe(true);
  });

  it('computes PAX record lengths across a digit boundary', async () => {
    // Records whose length is right at 99/100 bytes exercise the self-counting length.
    for (let n = 85; n < 100; n++) {
      const name = 'é' + 'x'.repeat(n);
      const [entry] = await parseTar(archive(file({ name })));
      expect(entry!.name).toBe(name);
    }
  });

  it('puts ids above 2,097,151 and big sizes in PAX records', async () => {
    const h = file({ uid: 3_000_000, gid: 4_000_000 });
    const [entry] = await parseTar(archive(h));
    expect(entry!.pax).toMatchObject({ uid: '3000000', gid: '4000000' });
    const big = encodeHeader(file({ size: 2 ** 33 + 5 }));
    expect(big.toString('latin1')).toContain(`size=${2 ** 33 + 5}\n`);
  });

  it('records xattrs as SCHILY.xattr with binary values intact', () => {
    const value = Buffer.from([1, 0, 0, 2, 0xff, 0x20, 0, 0]);
    const b = encodeHeader(file({ xattrs: [['security.capability', value]] }));
    const record = Buffer.concat([
      Buffer.from(' SCHILY.xattr.security.capability='),
      value,
      Buffer.from('\n'),
    ]);
    expect(b.indexOf(record)).toBeGreaterThan(BLOCK - 1);
    const len = Number(b.subarray(BLOCK, b.indexOf(0x20, BLOCK)).toString());
    expect(len).toBe(String(len).length + record.length);
  });

  it('writes hardlinks, symlinks with long targets, devices and fifos', async () => {
    const target = 't'.repeat(150);
    const entries = await parseTar(
      archive(
        file({ name: 'a' }),
        file({ name: 'b', kind: 'hardlink', linkname: 'a' }),
        file({ name: 'c', kind: 'symlink', linkname: target, mode: 0o777 }),
        file({ name: 'null', kind: 'char', devmajor: 1, devminor: 3 }),
        file({ name: 'loop0', kind: 'block', devmajor: 7, devminor: 0 }),
        file({ name: 'pipe', kind: 'fifo' }),
      ),
    );
    expect(entries.map((e) => [e.name, e.type, e.linkname])).toEqual([
      ['a', 'file', null],
      ['b', 'link', 'a'],
      ['c', 'symlink', target],
      ['null', 'character-device', null],
      ['loop0', 'block-device', null],
      ['pipe', 'fifo', null],
    ]);
    expect(entries[3]).toMatchObject({ devmajor: 1, devminor: 3 });
  });

  it('names the PAX header deterministically (no pid, unlike GNU tar)', () => {
    const b = encodeHeader(file({ name: 'dir/ü' }));
    expect(field(b, 0, 15)).toBe('PaxHeaders.0/_\0');
  });
});

describe('padding', () => {
  it('pads content to whole blocks', () => {
    expect([0, 1, 511, 512, 513].map(padding)).toEqual([0, 511, 1, 0, 511]);
  });
});
