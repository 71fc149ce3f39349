import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  below,
  canonical,
  canonicalSync,
  parse,
  read,
  readSync,
  under,
  underSync,
  unescape,
} from './mountinfo.js';

describe('Mountinfo', () => {
  const text = [
    '22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '45 22 0:40 / /tmp/day11\\040x/m\\012n rw,relatime shared:7 master:2 - overlay overlay rw,lowerdir+=/l/a\\054b:c\\134d,lowerdir+=/l/2,upperdir=/u,workdir=/w,uuid=on',
    '46 45 0:41 / /tmp/day11\\040x/m\\012n/proc rw - proc proc rw',
    '47 22 0:42 / /tmp/day11\\040x/m\\012n rw - tmpfs tmp\\011fs rw,size=4k',
    '48 22 0:43 / /tmp/day11\\040xy rw - tmpfs tmpfs rw',
    'garbage line',
  ].join('\n');

  it('unescapes octal sequences', () => {
    expect(unescape('a\\040b\\011c\\012d\\134e\\054f')).toBe('a b\tc\nd\\e,f');
  });

  it('parses fields, optional fields, and escaped option values', () => {
    const entries = parse(text);
    expect(entries).toHaveLength(5);
    expect(entries[1]).toEqual({
      id: 45,
      parentId: 22,
      root: '/',
      mountPoint: '/tmp/day11 x/m\nn',
      mountOptions: ['rw', 'relatime'],
      fstype: 'overlay',
      source: 'overlay',
      superOptions: [
        'rw',
        'lowerdir+=/l/a,b:c\\d',
        'lowerdir+=/l/2',
        'upperdir=/u',
        'workdir=/w',
        'uuid=on',
      ],
    });
    expect(entries[3]?.source).toBe('tmp\tfs');
  });

  it('lists mounts at or under a directory, deepest first, stacked ones newest first', () => {
    expect(below(parse(text), '/tmp/day11 x').map((e) => e.id)).toEqual([46, 47, 45]);
    expect(below(parse(text), '/tmp/day11 x/m\nn').map((e) => e.id)).toEqual([46, 47, 45]);
    expect(below(parse(text), '/').map((e) => e.id)).toEqual([46, 47, 45, 48, 22]);
  });

  it("reads this process's mounts, sync and async alike", async () => {
    const [async, sync] = [await read(), readSync()];
    expect(async.some((e) => e.mountPoint === '/')).toBe(true);
    expect(sync.map((e) => e.id)).toEqual(async.map((e) => e.id));
    expect((await under('/')).length).toBe(async.length);
    expect(underSync('/').length).toBe(sync.length);
  });

  it('finds nothing below a fresh directory, and spells paths as mountinfo does', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'day11-mountinfo-'));
    try {
      await symlink(dir, `${dir}-link`);
      expect(await canonical(`${dir}-link`)).toBe(await canonical(dir));
      expect(canonicalSync(`${dir}-link`)).toBe(await canonical(dir));
      expect(canonicalSync(join(dir, 'missing', '..', 'x'))).toBe(join(dir, 'x'));
      expect(await under(dir)).toEqual([]);
      expect(underSync(`${dir}-link`)).toEqual([]);
    } finally {
      await rm(`${dir}-link`, { force: true });
      await rm(dir, { recursive: true, force: true });
    }
  });
});
