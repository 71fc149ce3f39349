import { mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { OverlayMarks, Sys } from '@day11/exec';
import { treeDigest } from './tree-digest.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-tree-digest-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function tree(name: string): Promise<string> {
  const root = join(dir, name);
  await mkdir(join(root, 'opt'), { recursive: true });
  await writeFile(join(root, 'opt/id'), 'x\n');
  await utimes(join(root, 'opt/id'), 1_700_000_000, 1_700_000_000);
  await utimes(join(root, 'opt'), 1_700_000_000, 1_700_000_000);
  await utimes(root, 1_700_000_000, 1_700_000_000);
  return root;
}

describe('treeDigest', () => {
  it('is the same for equal trees and changes with content and times', async () => {
    const a = await tree('a');
    const b = await tree('b');
    expect(await treeDigest(a)).toBe(await treeDigest(b));
    await utimes(join(b, 'opt/id'), 1_700_000_001, 1_700_000_001);
    expect(await treeDigest(a)).not.toBe(await treeDigest(b));
  });

  it('counts xattrs, or only those the caller asks for', async () => {
    const a = await tree('a');
    const b = await tree('b');
    // user.* works unprivileged; the same name under trusted.* is bookkeeping too.
    Sys.setXattrSync(join(b, 'opt'), 'user.overlay.origin', 'handle');
    expect(await treeDigest(a)).not.toBe(await treeDigest(b));
    const xattr = (n: string): boolean => !OverlayMarks.isBookkeepingXattr(n);
    expect(await treeDigest(a, { xattr })).toBe(await treeDigest(b, { xattr }));
    Sys.setXattrSync(join(b, 'opt'), 'user.overlay.opaque', 'y');
    expect(await treeDigest(a, { xattr })).not.toBe(await treeDigest(b, { xattr }));
  });
});

describe('OverlayMarks.isBookkeepingXattr', () => {
  it('names what overlayfs records about the mount, not what hides lower layers', () => {
    for (const n of ['origin', 'impure', 'uuid', 'nlink', 'upper']) {
      expect(OverlayMarks.isBookkeepingXattr(`trusted.overlay.${n}`)).toBe(true);
      expect(OverlayMarks.isBookkeepingXattr(`user.overlay.${n}`)).toBe(true);
    }
    for (const n of [
      'trusted.overlay.opaque',
      'trusted.overlay.redirect',
      'user.origin',
      'security.capability',
    ])
      expect(OverlayMarks.isBookkeepingXattr(n)).toBe(false);
  });
});
