import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './fixtures/cache.js';
import {
  MAX_SPARES,
  giveBack,
  makeRunDir,
  removeAllSparesSync,
  spareCount,
  takeSpare,
} from './scratch.js';
import { runPaths } from './temp.js';

let tmpDir: string;
beforeEach(async () => {
  tmpDir = await tempDir('scratch');
});
afterEach(async () => {
  removeAllSparesSync();
  await rm(tmpDir, { recursive: true, force: true });
});

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

function fresh(): string {
  const { runDir } = runPaths(tmpDir);
  makeRunDir(runDir);
  return runDir;
}

describe('spare run directories', () => {
  it('keeps a clean run directory for the next run in the same tmpDir only', async () => {
    const runDir = fresh();
    giveBack({ tmpDir, runDir, lingerMs: 60_000 });
    expect(spareCount()).toBe(1);
    expect(takeSpare(join(tmpDir, 'elsewhere'))).toBeUndefined();
    expect(takeSpare(tmpDir)).toBe(runDir);
    expect(takeSpare(tmpDir)).toBeUndefined();
    expect(await exists(join(runDir, 'work'))).toBe(true);
    await rm(runDir, { recursive: true });
  });

  it('removes it after lingerMs, or at once with lingerMs 0', async () => {
    const lingering = fresh();
    giveBack({ tmpDir, runDir: lingering, lingerMs: 100 });
    const now = fresh();
    giveBack({ tmpDir, runDir: now, lingerMs: 0 });
    expect(await exists(now)).toBe(false);
    expect(await exists(lingering)).toBe(true);
    await new Promise((r) => setTimeout(r, 250));
    expect(await exists(lingering)).toBe(false);
    expect(spareCount()).toBe(0);
  });

  it('keeps the bundle files (an empty runtime log) but nothing else', async () => {
    const bundle = fresh();
    await writeFile(join(bundle, 'config.json'), '{}');
    await writeFile(join(bundle, 'runtime.log'), '');
    giveBack({ tmpDir, runDir: bundle, lingerMs: 60_000 });
    expect(spareCount()).toBe(1);
    const extra = fresh();
    await writeFile(join(extra, 'stray'), '{}');
    const logged = fresh();
    await writeFile(join(logged, 'runtime.log'), '{"level":"error","msg":"old"}\n');
    const dirty = fresh();
    await mkdir(join(dirty, 'merged', 'x'));
    const odd = fresh();
    await mkdir(join(odd, 'config.json'));
    for (const runDir of [extra, logged, dirty, odd])
      giveBack({ tmpDir, runDir, lingerMs: 60_000 });
    expect(spareCount()).toBe(1);
    for (const runDir of [extra, logged, dirty, odd]) expect(await exists(runDir)).toBe(false);
  });

  it(`keeps at most ${MAX_SPARES} per tmpDir; removeAllSparesSync removes them all`, async () => {
    const dirs = Array.from({ length: MAX_SPARES + 2 }, fresh);
    for (const runDir of dirs) giveBack({ tmpDir, runDir, lingerMs: 60_000 });
    expect(spareCount()).toBe(MAX_SPARES);
    removeAllSparesSync();
    for (const d of dirs) expect(await exists(d)).toBe(false);
    expect(spareCount()).toBe(0);
  });
});
