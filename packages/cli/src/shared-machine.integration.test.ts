/**
 * A shared machine: another local user (here `nobody`) must not reach what
 * the cache holds — a layer's files, its setuid binaries, its world-writable
 * directories, its cached blob, the step's definition (its env may hold
 * tokens), its log — and must not be able to plant a symlink or a directory
 * of theirs where `day11 demo` puts its cache.
 */
import { spawnSync } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Exec } from '@day11/exec';

const BIN = resolve(import.meta.dirname, '../dist/bin/day11.js');
const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-shared-'));
  // Others may traverse the directory holding the cache, as /var/cache.
  await chmod(work, 0o755);
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function day11(...args: string[]) {
  return Exec.run(process.execPath, [BIN, ...args], { allowNonZeroExit: true, timeoutMs: 300_000 });
}

/** Whether `nobody` manages to do `script` (exit 0). */
function nobodyCan(script: string): boolean {
  const r = spawnSync('/bin/sh', ['-c', script], { uid: NOBODY, gid: NOBODY, stdio: 'ignore' });
  return r.status === 0;
}

const LEAKY = {
  base: 'busybox',
  steps: [
    {
      id: 'leaky',
      env: { TOKEN: 's3cr3t-token' },
      run: [
        'mkdir -p /opt/suid && cp /bin/busybox /opt/suid/id && chmod 4755 /opt/suid/id',
        'mkdir -p /srv/drop && chmod 1777 /srv/drop',
        'echo secret > /secret && chmod 600 /secret',
        'echo "log line with $TOKEN"',
      ].join(' && '),
    },
  ],
};

describe('a cache on a shared machine', () => {
  it.skipIf(!isRoot)(
    'gives another user nothing: no listing, no setuid binary, no 1777 dir, no blob, step.json or log',
    async () => {
      const cache = join(work, 'cache');
      const plan = join(work, 'leaky.json');
      await writeFile(plan, JSON.stringify(LEAKY));
      const r = await day11('build', plan, '--cache', cache, '--oci', join(work, 'oci'), '--json');
      expect(r.exitCode, r.stderr).toBe(0);
      const L = join(cache, await layerOfStep(cache));
      // What nobody tries, each of which worked before (root stays able to).
      const attempts: Record<string, string> = {
        'list the cache': `ls ${cache}`,
        "list a layer's fs/": `ls ${L}/fs/opt`,
        'run its setuid-root binary': `${L}/fs/opt/suid/id -u`,
        'write into its 1777 directory': `touch ${L}/fs/srv/drop/planted`,
        'read its 0600 file from layer.tar.gz': `tar -xzOf ${L}/layer.tar.gz secret | grep -q secret`,
        'read step.json (its env)': `grep -q s3cr3t ${L}/step.json`,
        'read layer.log': `grep -q s3cr3t ${L}/layer.log`,
        'read layer.json': `cat ${L}/layer.json`,
      };
      const succeeded = Object.entries(attempts)
        .filter(([, script]) => nobodyCan(script))
        .map(([what]) => what);
      expect(succeeded).toEqual([]);
      // Root still can: the attempts are not simply broken.
      expect(spawnSync('/bin/sh', ['-c', attempts['read layer.log']!]).status).toBe(0);

      // A second wall: even with the cache root opened, a layer's directory is its owner's.
      await chmod(cache, 0o755);
      const throughOpenRoot = Object.entries(attempts)
        .filter(([what]) => what !== 'list the cache')
        .filter(([, script]) => nobodyCan(script))
        .map(([what]) => what);
      expect(throughOpenRoot).toEqual([]);
      const { stdout: worldWritable } = await Exec.run('find', [
        cache,
        '-path',
        '*/fs',
        '-prune',
        '-o',
        '-perm',
        '-0002',
        '!',
        '-type',
        'l',
        '-print',
      ]);
      expect(worldWritable).toBe('');
      expect((await stat(L)).mode & 0o7777).toBe(0o700);
      for (const file of ['layer.json', 'layer.log', 'step.json', 'last_used']) {
        expect([file, (await stat(join(L, file))).mode & 0o777]).toEqual([file, 0o600]);
      }

      // The next command tightens the opened root again, and says so.
      const again = await day11('recover', '--cache', cache);
      expect(again.exitCode).toBe(0);
      expect(again.stderr).toContain(
        `the cache ${cache} was mode 0755, open to other users; it is now 0700`,
      );
      expect((await stat(cache)).mode & 0o7777).toBe(0o700);
      // The exported layout is the user's to publish: its blobs stay readable.
      const blobs = join(work, 'oci/blobs/sha256');
      for (const blob of await readdir(blobs)) {
        expect((await stat(join(blobs, blob))).mode & 0o777).toBe(0o644);
      }
    },
    300_000,
  );

  it.skipIf(!isRoot)(
    'refuses a cache directory another user made, or a symlink they planted, and writes nothing through it',
    async () => {
      const victim = join(work, 'victim');
      await mkdir(victim, { mode: 0o755 });
      const planted = join(work, 'planted-link');
      await Exec.run('ln', ['-s', victim, planted]);
      await Exec.run('chown', ['-h', `${NOBODY}:${NOBODY}`, planted]);
      const theirs = join(work, 'their-dir');
      await mkdir(theirs, { mode: 0o777 });
      await Exec.run('chown', [`${NOBODY}:${NOBODY}`, theirs]);
      const plan = join(work, 'tiny.json');
      await writeFile(plan, JSON.stringify({ base: 'busybox', steps: [{ id: 'x', run: 'true' }] }));

      const viaLink = await day11('build', plan, '--cache', planted);
      expect(viaLink.exitCode).toBe(1);
      expect(viaLink.stderr).toContain(
        `day11: Refusing the cache directory ${planted}: it is a symlink owned by uid ${NOBODY}, another user`,
      );
      expect(await readdir(victim)).toEqual([]);
      expect((await stat(victim)).mode & 0o7777).toBe(0o755);

      const inTheirs = await day11('build', plan, '--cache', theirs);
      expect(inTheirs.exitCode).toBe(1);
      expect(inTheirs.stderr).toContain(`it belongs to uid ${NOBODY}, not to this user`);
      expect(await readdir(theirs)).toEqual([]);
    },
    120_000,
  );
});

describe("day11 demo's default cache in /var/tmp", () => {
  /**
   * Runs `day11 demo` (no --cache, no DAY11_CACHE) in a mount namespace of
   * its own whose /var/tmp is a fresh tmpfs prepared by `setup`, so the real
   * /var/tmp/day11-demo (and anyone's demo using it) is left alone.
   */
  function demoWithVarTmp(setup: string): { status: number | null; stderr: string; after: string } {
    const script = [
      'set -e',
      'mount -t tmpfs -o mode=1777 day11-test /var/tmp',
      setup,
      `set +e; ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} demo; echo "status=$?"`,
      'ls -la --time-style=+ /var/tmp /var/tmp/victim',
    ].join('\n');
    const env = { ...process.env };
    delete env['DAY11_CACHE'];
    const r = spawnSync(
      'unshare',
      ['--mount', '--propagation', 'private', '/bin/sh', '-c', script],
      {
        env,
        encoding: 'utf8',
        timeout: 120_000,
      },
    );
    const status = /status=(\d+)/.exec(r.stdout)?.[1];
    return {
      status: status === undefined ? null : Number(status),
      stderr: r.stderr,
      after: r.stdout,
    };
  }

  it.skipIf(!isRoot)('refuses a symlink another user planted there, and follows nothing', () => {
    const r = demoWithVarTmp(
      [
        'mkdir -m 755 /var/tmp/victim',
        'ln -s /var/tmp/victim /var/tmp/day11-demo',
        `chown -h ${NOBODY}:${NOBODY} /var/tmp/day11-demo`,
      ].join('\n'),
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(
      `day11: Refusing the cache directory /var/tmp/day11-demo: it is a symlink owned by uid ${NOBODY}`,
    );
    // The victim is untouched: still 0755 and empty.
    expect(r.after).toMatch(/\/var\/tmp\/victim:\ntotal 0\ndrwxr-xr-x +2 root root +40 +\.\n/);
  });

  it.skipIf(!isRoot)(
    'refuses a directory another user made there, and writes nothing into it',
    () => {
      const r = demoWithVarTmp(
        [
          'mkdir -m 777 /var/tmp/day11-demo /var/tmp/victim',
          `chown ${NOBODY}:${NOBODY} /var/tmp/day11-demo`,
        ].join('\n'),
      );
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`it belongs to uid ${NOBODY}, not to this user (uid 0)`);
      expect(r.after).toMatch(/drwxrwxrwx +2 nobody nogroup +40 +day11-demo\n/);
    },
  );
});

/** The layer of the `leaky` step (the one with a step.json). */
async function layerOfStep(cache: string): Promise<string> {
  for (const name of await readdir(cache)) {
    if (!name.startsWith('build-')) continue;
    if (await lstat(join(cache, name, 'step.json')).catch(() => undefined)) return name;
  }
  throw new Error(`no step layer in ${cache}`);
}
