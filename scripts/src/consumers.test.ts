/**
 * A CommonJS and an ESM consumer load every package of the workspace (its
 * built `dist`, so `pnpm build` first) through its package name and exports
 * map, as an installed package is loaded. `pnpm pack-check` runs the same
 * consumers against the packed and npm-installed packages.
 */
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { workspacePackages } from './workspace.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CONSUMER = join(ROOT, 'scripts/consumer');
const run = promisify(execFile);
const temps: string[] = [];

/** A project whose node_modules links each given package directory under its name. */
function projectWith(packages: { name: string; path: string }[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'day11-consumer-'));
  temps.push(dir);
  for (const { name, path } of packages) {
    mkdirSync(join(dir, 'node_modules', name, '..'), { recursive: true });
    symlinkSync(path, join(dir, 'node_modules', name));
  }
  return dir;
}

/** Runs a consumer script from inside the project, as an installed program; never rejects. */
async function load(script: string, project: string, names: string[]) {
  cpSync(join(CONSUMER, script), join(project, script));
  return run(process.execPath, [script, ...names], { cwd: project }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (err: { code: number; stdout: string; stderr: string }) => err,
  );
}

afterEach(() => {
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('consumers of the packages', () => {
  const packages = workspacePackages(ROOT)
    .filter((pkg) => pkg.manifest.private !== true)
    .map((pkg) => ({ name: pkg.manifest.name, path: pkg.path }));
  const names = packages.map((p) => p.name);

  it.each(['load-all.cjs', 'load-all.mjs'])('%s loads every package', async (script) => {
    const result = await load(script, projectWith(packages), names);
    expect(result.stderr).not.toMatch(/failed/);
    expect(result.code).toBe(0);
    const verb = script.endsWith('.cjs') ? 'require' : 'import';
    for (const name of names)
      expect(result.stdout).toMatch(new RegExp(`^${verb} ${name}: \\w`, 'm'));
  });

  it('load-all.cjs names a package that require() cannot load', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'day11-import-only-'));
    temps.push(dir);
    writeFileSync(
      join(dir, 'package.json'),
      JSON.stringify({
        name: '@day11/import-only',
        type: 'module',
        exports: { '.': { import: './i.js' } },
      }),
    );
    writeFileSync(join(dir, 'i.js'), 'export const x = 1;\n');
    const result = await load(
      'load-all.cjs',
      projectWith([{ name: '@day11/import-only', path: dir }]),
      ['@day11/import-only'],
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      /require @day11\/import-only failed: ERR_PACKAGE_PATH_NOT_EXPORTED/,
    );
  });
});
