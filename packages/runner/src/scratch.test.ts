import { access, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './fixtures/cache.js';
import { MAX_SPARES, SparePool, makeRunDir } from './scratch.js';
import { runPaths } from './temp.js';

let tmpDir: string;
const pools: SparePool[] = [];
/** A pool as a runner makes one; `lingerMs` as the runner's option. */
function pool(lingerMs = Infinity): SparePool {
  const p = new SparePool({ lingerMs, onChange: () => undefined });
  pools.push(p);
  return p;
}
beforeEach(async () => {
  tmpDir = await tempDir('scratch');
});
afterEach(async () => {
  for (const p of pools.splice(0)) p.removeAllSync();
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
    const p = pool();
    p.giveBack({ tmpDir, runDir });
    expect(p.size).toBe(1);
    expect(p.take(join(tmpDir, 'elsewhere'))).toBeUndefined();
    expect(p.take(tmpDir)).toBe(runDir);
    expect(p.take(tmpDir)).toBeUndefined();
    expect(await exists(join(runDir, 'work'))).toBe(true);
    await rm(runDir, { recursive: true });
  });

  it('removes it after lingerMs, or at once with lingerMs 0', async () => {
    const lingering = fresh();
    const p = pool(100);
    p.giveBack({ tmpDir, runDir: lingering });
    const now = fresh();
    pool(0).giveBack({ tmpDir, runDir: now });
    expect(await exists(now)).toBe(false);
    expect(await exists(lingering)).toBe(true);
    await new Promise((r) => setTimeout(r, 250));
    expect(await exists(lingering)).toBe(false);
    expect(p.size).toBe(0);
  });

  it('keeps the bundle files (an empty runtime log) but nothing else', async () => {
    const bundle = fresh();
    await writeFile(join(bundle, 'config.json'), '{}');
    await writeFile(join(bundle, 'runtime.log'), '');
    const p = pool();
    p.giveBack({ tmpDir, runDir: bundle });
    expect(p.size).toBe(1);
    const extra = fresh();
    await writeFile(join(extra, 'stray'), '{}');
    const logged = fresh();
    await writeFile(join(logged, 'runtime.log'), '{"level":"error","msg":"old"}\n');
    const dirty = fresh();
    await mkdir(join(dirty, 'merged', 'x'));
    const odd = fresh();
    await mkdir(join(odd, 'config.json'));
    for (const runDir of [extra, logged, dirty, odd]) p.giveBack({ tmpDir, runDir });
    expect(p.size).toBe(1);
    for (const runDir of [extra, logged, dirty, odd]) expect(await exists(runDir)).toBe(false);
  });

  it(`keeps at most ${MAX_SPARES} per tmpDir; removeAllSync removes them all`, async () => {
    const dirs = Array.from({ length: MAX_SPARES + 2 }, fresh);
    const p = pool();
    for (const runDir of dirs) p.giveBack({ tmpDir, runDir });
    expect(p.size).toBe(MAX_SPARES);
    p.removeAllSync();
    for (const d of dirs) expect(await exists(d)).toBe(false);
    expect(p.size).toBe(0);
  });
});
