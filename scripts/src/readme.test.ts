import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkReadmes, codeBlocks, importsOf } from './readme.js';

const ROOT = resolve(import.meta.dirname, '../..');
const temps: string[] = [];

afterEach(() => {
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('README examples', () => {
  it('import only what the packages export, and use only members that exist', async () => {
    expect(await checkReadmes(ROOT)).toEqual([]);
  });

  it('reads imports and namespace members out of ts blocks', () => {
    const md =
      "x\n```ts\nimport { Exec, type RunResult } from '@day11/exec';\nExec.run('x');\n```\n";
    const [block] = codeBlocks(md);
    expect(importsOf(block!)).toEqual([{ pkg: 'exec', names: ['Exec', 'RunResult'], code: block }]);
  });

  it('fails on an example that imports a missing name or member', async () => {
    const repo = mkdtempSync(join(tmpdir(), 'day11-readme-'));
    temps.push(repo);
    mkdirSync(join(repo, 'packages'));
    symlinkSync(join(ROOT, 'packages/exec'), join(repo, 'packages/exec'));
    writeFileSync(
      join(repo, 'README.md'),
      "```ts\nimport { Exec, Nope, type Proc } from '@day11/exec';\nExec.runTwice();\nExec.run('x');\n```\n",
    );
    expect(await checkReadmes(repo)).toEqual([
      'README.md: Exec.runTwice is not in @day11/exec',
      'README.md: @day11/exec does not export Nope',
    ]);
  });
});
