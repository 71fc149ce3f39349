import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { OciSpec } from '@day11/container';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RunnerCodes, RunnerError } from './errors.js';
import { tempDir } from './fixtures/cache.js';
import { runInLayers } from './run-in-layers.js';
import type { RunInLayersOptions } from './run.js';

let osDir: string;
let options: RunInLayersOptions;
beforeEach(async () => {
  osDir = await tempDir('opts');
  options = {
    base: { hash: 'a'.repeat(64), dir: join(osDir, 'build-aaaaaaaaaaaa'), image: 'x' },
    buildDirs: [],
    spec: OciSpec.template(OciSpec.make({ args: ['true'] })),
  };
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

describe('runInLayers option checks', () => {
  it.each([
    ['base', { base: undefined }],
    ['base', { base: { hash: 'a', image: 'x' } }],
    ['buildDirs', { buildDirs: 'build-x' }],
    ['buildDirs', { buildDirs: [''] }],
    ['buildDirs', { buildDirs: undefined }],
    ['buildDirs', { deps: [] }],
    ['deps', { buildDirs: undefined, deps: 'build-x' }],
    ['deps', { buildDirs: undefined, deps: ['/elsewhere/build-000000000000'] }],
    ['timeoutMs', { timeoutMs: 0 }],
    ['prepUpper', { prepUpper: 'not a function' }],
    ['tmpDir', { tmpDir: '' }],
    ['lingerMs', { lingerMs: -1 }],
  ])('refuses a bad %s with RUNNER_BAD_ARGUMENT, touching nothing', async (option, bad) => {
    const err = await runInLayers({ ...options, ...(bad as object) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RunnerError);
    expect(err).toMatchObject({ code: RunnerCodes.BAD_ARGUMENT });
    expect((err as Error).message).toContain(option);
    expect(await readdir(osDir)).toEqual([]);
  });

  it('refuses a tmpDir on another filesystem than the cache, before leasing anything', async () => {
    await mkdir(options.base.dir);
    const err = await runInLayers({ ...options, tmpDir: '/dev/shm' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: RunnerCodes.BAD_ARGUMENT, path: '/dev/shm' });
    expect((err as Error).message).toMatch(/another filesystem/);
    expect((await readdir('/dev/shm')).filter((n) => n.startsWith('.day11-tmp-'))).toEqual([]);
  });

  it('takes a spec from OciSpec.make as its template; a bad one is CONTAINER_BAD_SPEC', async () => {
    // Past the spec, to the missing base: the spec was accepted.
    const spec = OciSpec.make({ args: ['true'], rootfs: '/elsewhere' });
    await expect(runInLayers({ ...options, spec })).rejects.toMatchObject({
      code: 'LAYER_NOT_FOUND',
    });
    const bad = { ...spec, process: { ...spec.process, args: [] } };
    await expect(runInLayers({ ...options, spec: bad })).rejects.toMatchObject({
      code: 'CONTAINER_BAD_SPEC',
    });
    await rm(join(osDir, '.locks'), { recursive: true, force: true });
    expect(await readdir(osDir)).toEqual([]);
  });

  it('rejects an already aborted signal with RUNNER_ABORTED before making anything', async () => {
    await expect(runInLayers({ ...options, signal: AbortSignal.abort() })).rejects.toMatchObject({
      code: RunnerCodes.ABORTED,
    });
    expect(await readdir(osDir)).toEqual([]);
  });

  it('fails on a base that is not a layer, leaving nothing behind', async () => {
    await expect(runInLayers(options)).rejects.toMatchObject({ code: 'LAYER_NOT_FOUND' });
    expect(await readdir(osDir)).toEqual(['.locks']);
  });
});
