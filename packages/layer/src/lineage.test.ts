import { rm } from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commit } from './commit.js';
import { LayerCodes } from './errors.js';
import { META, makeUpper, tempDir } from './fixtures/cache.js';
import { SIDECAR } from './import.js';
import { name, path as layerPath } from './layer-dir.js';
import * as LayerMeta from './layer-meta.js';
import * as Lineage from './lineage.js';
import type { Base } from './types.js';

let osDir: string;
let base: Base;
beforeEach(async () => {
  osDir = await tempDir('lineage');
  base = await layer('a'.repeat(64), [], { base: true });
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

/** A 64-hex hash from a short label: `hex('1')` is 111…1. */
const hex = (digit: string): string => digit.repeat(64);

/**
 * Commits layer `hash` recording `parents` (topmost first) on the base. A
 * base records itself as its base and has a `base.json`.
 */
async function layer(
  hash: string,
  parents: string[],
  opts: { base?: boolean; baseHash?: string } = {},
): Promise<Base> {
  const upper = await makeUpper(osDir, { [`f-${hash.slice(0, 4)}`]: hash });
  const { dir } = await commit({
    osDir,
    hash,
    upper,
    meta: {
      ...META,
      parent_hashes: parents,
      base_hash: opts.base ? hash : (opts.baseHash ?? base.hash),
    },
    ...(opts.base && { sidecars: { [SIDECAR]: { image: `img-${hash[0]}`, kind: 'directory' } } }),
  });
  return { hash, dir, image: `img-${hash[0]}` };
}

const dirOf = (hash: string): string => layerPath({ osDir, hash });

describe('Lineage.stackFor', () => {
  it("expands a diamond's deps into the builder's order: by height, then by hash", async () => {
    const [libc, zlib, openssl] = [hex('3'), hex('2'), hex('1')];
    await layer(libc, []);
    await layer(zlib, [libc]);
    await layer(openssl, [libc]);
    for (const deps of [
      [zlib, openssl],
      [openssl, zlib],
    ]) {
      const stack = await Lineage.stackFor({ osDir, deps });
      expect(stack.base).toEqual({ hash: base.hash, dir: base.dir, image: 'img-a' });
      // Height 1 (libc), then height 2 in hash order (openssl 111… before zlib 222…).
      expect(stack.layers).toEqual([dirOf(libc), dirOf(openssl), dirOf(zlib)]);
      await Lineage.check(stack);
    }
    // A layer recorded with that stack (topmost first) checks against it, and expands to it.
    const curl = hex('4');
    await layer(curl, [zlib, openssl, libc]);
    expect((await Lineage.stackFor({ osDir, deps: [curl] })).layers).toEqual([
      dirOf(libc),
      dirOf(openssl),
      dirOf(zlib),
      dirOf(curl),
    ]);
    expect(await Lineage.stackOf({ osDir, hash: curl })).toEqual(
      await Lineage.stackFor({ osDir, deps: [curl] }),
    );
  });

  it('keeps the order a layer recorded, over the hash order', async () => {
    const [low, high] = [hex('9'), hex('1')];
    await layer(low, []);
    await layer(high, []);
    // top was built with `high` (111…) above `low` (999…): hash order alone would swap them.
    const top = hex('5');
    await layer(top, [high, low]);
    expect((await Lineage.stackFor({ osDir, deps: [top] })).layers).toEqual([
      dirOf(low),
      dirOf(high),
      dirOf(top),
    ]);
  });

  it('follows parents transitively when a record lists only the direct ones', async () => {
    const [a, b, c] = [hex('1'), hex('2'), hex('3')];
    await layer(a, []);
    await layer(b, [a]);
    await layer(c, [b]); // an old hand-made record: a is missing from it
    expect((await Lineage.stackFor({ osDir, deps: [c] })).layers).toEqual([
      dirOf(a),
      dirOf(b),
      dirOf(c),
    ]);
  });

  it('takes a base among deps as the base, not as a layer', async () => {
    const a = hex('1');
    await layer(a, []);
    const stack = await Lineage.stackFor({ osDir, deps: [base.hash, a] });
    expect(stack).toMatchObject({ base: { hash: base.hash }, layers: [dirOf(a)] });
  });

  it('refuses no deps, deps on different bases, contradicting records; names a missing parent', async () => {
    await expect(Lineage.stackFor({ osDir, deps: [] })).rejects.toMatchObject({
      code: LayerCodes.BAD_STACK,
    });
    const other = await layer(hex('b'), [], { base: true });
    const [onA, onB] = [hex('1'), hex('2')];
    await layer(onA, []);
    await layer(onB, [], { baseHash: other.hash });
    await expect(Lineage.stackFor({ osDir, deps: [onA, onB] })).rejects.toThrow(
      /were built on different bases/,
    );

    const [x, y] = [hex('3'), hex('4')];
    await layer(x, []);
    await layer(y, []);
    await layer(hex('5'), [x, y]);
    await layer(hex('6'), [y, x]);
    const err = await Lineage.stackFor({ osDir, deps: [hex('5'), hex('6')] }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: LayerCodes.BAD_STACK });
    expect((err as Error).message).toMatch(/order some of them both ways/);

    await layer(hex('7'), [hex('8')]);
    const missing = await Lineage.stackFor({ osDir, deps: [hex('7')] }).catch((e: unknown) => e);
    expect(missing).toMatchObject({ code: LayerCodes.NOT_FOUND, path: dirOf(hex('8')) });
    expect((missing as Error).message).toContain(`which ${name(hex('7'))} was built on`);
  });
});

describe('Lineage.check', () => {
  it('refuses a list that lacks a layer one of them was built on, naming both', async () => {
    const [a, b] = [hex('1'), hex('2')];
    await layer(a, []);
    await layer(b, [a]);
    await Lineage.check({ base, layers: [dirOf(a), dirOf(b)] });
    const err = await Lineage.check({ base, layers: [dirOf(b)] }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: LayerCodes.BAD_STACK });
    expect((err as Error).message).toContain(
      `${name(b)} was built on ${name(a)}, which is not in the list`,
    );
    await expect(Lineage.check({ base, layers: [dirOf(b), dirOf(a)] })).rejects.toThrow(
      /not below it/,
    );
  });

  it("reads records through metaOf when given (a lessee's memo): no file is read", async () => {
    const [a, b] = [hex('1'), hex('2')];
    await layer(a, []);
    await layer(b, [a]);
    const known = new Map<string, LayerMeta.LayerMeta>();
    for (const hash of [a, b]) known.set(dirOf(hash), await LayerMeta.load(dirOf(hash)));
    for (const hash of [a, b]) await rm(LayerMeta.file(dirOf(hash)));
    const metaOf = (dir: string) => known.get(dir)!;
    await Lineage.check({ base, layers: [dirOf(a), dirOf(b)], metaOf });
    await expect(Lineage.check({ base, layers: [dirOf(b)], metaOf })).rejects.toMatchObject({
      code: LayerCodes.BAD_STACK,
    });
    expect((await Lineage.stackFor({ osDir, deps: [b], metaOf })).layers).toEqual([
      dirOf(a),
      dirOf(b),
    ]);
  });
});
