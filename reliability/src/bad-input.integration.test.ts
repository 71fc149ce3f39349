/**
 * The bad-input corpus (issue 7): each case hands the library and/or the
 * `day11` binary one bad input — a damaged file in the cache or the layout,
 * a hostile tarball, an invalid tag, an awkward path, a bad plan, an absurd
 * number — and expects a typed error (a one-line message and a non-zero exit
 * from the CLI) that names the offending file, with everything already stored
 * unchanged: the world is checksummed before and after.
 *
 * Integration: importing a base keeps owners and devices, and the overlay
 * cases mount; both need root.
 */
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Overlay } from '@day11/container';
import { Exec } from '@day11/exec';
import { Layout } from '@day11/oci-export';
import { BIN, cliRejects, type Case } from './bad-input-case.js';
import { CASES } from './bad-input-cases.js';
import { checksum, makeWorld } from './bad-input-world.js';

let temp: string;

beforeAll(async () => {
  temp = await mkdtemp(join(tmpdir(), 'day11-reliability-bad-input-'));
});

afterAll(async () => {
  await Overlay.unmountAll(temp, { lazy: true }).catch(() => undefined);
  await rm(temp, { recursive: true, force: true });
});

/** Runs one case in a world of its own. */
async function runCase(c: Case, dir: string): Promise<void> {
  await mkdir(join(dir, 'world'), { recursive: true });
  await mkdir(join(dir, 'scratch'));
  const w = await makeWorld(join(dir, 'world'));
  const pristine = await checksum(w.root);
  const names = await c.arrange(w);
  const before = await checksum(w.root);
  if (c.lib) await c.lib(w, names, { dir: join(dir, 'scratch') });
  if (c.cli) {
    const args = c.cli(w, names);
    if (c.exit === 0) {
      const r = await Exec.run(process.execPath, [BIN, ...args], { allowNonZeroExit: true });
      expect(r.exitCode, r.stderr).toBe(0);
    } else await cliRejects(args, names, c.exit);
  }
  expect(await checksum(w.root)).toEqual(c.after === 'pristine' ? pristine : before);
  expect(await Overlay.listMounts(dir)).toEqual([]);
}

const total = Object.values(CASES).reduce((n, cases) => n + cases.length, 0);

it(`has at least 30 cases (${total})`, () => {
  expect(total).toBeGreaterThanOrEqual(30);
});

it('starts from a sound world', async () => {
  const dir = join(temp, 'sound');
  await mkdir(dir);
  const w = await makeWorld(dir);
  expect(await Layout.verify(w.layout)).toEqual([]);
  expect(await readFile(join(w.layers[1], 'fs/opt/pkg2/lib/v'), 'utf8')).toBe('version 2\n');
  expect(await checksum(w.root)).toEqual(await checksum(w.root));
});

let n = 0;
for (const [group, cases] of Object.entries(CASES)) {
  describe(group, () => {
    for (const c of cases) {
      const dir = `case-${++n}`;
      it(c.name, async () => {
        try {
          await runCase(c, join(temp, dir));
        } finally {
          await Overlay.unmountAll(join(temp, dir), { lazy: true }).catch(() => undefined);
          await rm(join(temp, dir), { recursive: true, force: true });
        }
      });
    }
  });
}
