import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { access, lstat, mkdir, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LayerCodes, type LayerError } from './errors.js';
import { DEAD_PID, hashOf, tempDir } from './fixtures/cache.js';
import { layerLockPath, ORPHAN_GRACE_MS, owner, staleness, withLayer, withPath } from './lock.js';
import { layers } from './scan.js';
import { Proc } from '@day11/exec';

let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('lock');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

const hash = hashOf(1);
const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('Lock.withLayer', () => {
  it('holds {osDir}/.locks/build-*.lock, a file naming its owner, invisible to Scan, gone after', async () => {
    const lockPath = layerLockPath({ osDir, hash });
    expect(lockPath).toBe(join(osDir, '.locks', 'build-000000000001.lock'));
    const result = await withLayer({ osDir, hash }, async (held) => {
      expect(held.path).toBe(lockPath);
      expect((await lstat(lockPath)).isFile()).toBe(true);
      expect(JSON.parse(await readFile(lockPath, 'utf8'))).toEqual(await Proc.self());
      expect(await owner(lockPath)).toEqual(await Proc.self());
      expect(await layers(osDir)).toEqual([]);
      held.assertHeld();
      return 42;
    });
    expect(result).toBe(42);
    expect(await readdir(join(osDir, '.locks'))).toEqual([]);
  });

  it('serialises holders of the same layer, not of different layers', async () => {
    const events: string[] = [];
    const hold = (h: string, tag: string) =>
      withLayer({ osDir, hash: h }, async () => {
        events.push(`${tag}+`);
        await sleep(100);
        events.push(`${tag}-`);
      });
    await Promise.all([hold(hash, 'a'), hold(hash, 'b')]);
    expect(['a+a-b+b-', 'b+b-a+a-']).toContain(events.join(''));

    events.length = 0;
    await Promise.all([hold(hash, 'a'), hold(hashOf(2), 'c')]);
    expect(events.slice(0, 2).sort()).toEqual(['a+', 'c+']);
  });

  it('calls onWait once when it starts waiting for a held lock, and never for a free one', async () => {
    const waits: string[] = [];
    const onWait = (tag: string) => () => waits.push(tag);
    await withLayer({ osDir, hash, onWait: onWait('free') }, async () => undefined);
    expect(waits).toEqual([]);
    let holding!: () => void;
    const held = new Promise<void>((r) => (holding = r));
    const first = withLayer({ osDir, hash }, async () => {
      holding();
      await sleep(300); // several of the waiter's polls
    });
    await held;
    let acquired = false;
    await withLayer({ osDir, hash, onWait: onWait('waiter') }, async () => {
      acquired = true;
      // Called before the lock was had, not after.
      expect(waits).toEqual(['waiter']);
    });
    await first;
    expect(acquired).toBe(true);
    expect(waits).toEqual(['waiter']);
  });

  it('makes no inode per lock: the locks held with another in a directory are names of one file', async () => {
    const hashes = [1, 2, 3].map(hashOf);
    const inodes: number[][] = [];
    const holdAll = async (rest: string[]): Promise<void> => {
      if (rest.length === 0) {
        const st = await Promise.all(hashes.map((h) => lstat(layerLockPath({ osDir, hash: h }))));
        inodes.push(
          st.map((s) => s.ino),
          st.map((s) => s.nlink),
        );
        return;
      }
      await withLayer({ osDir, hash: rest[0]! }, () => holdAll(rest.slice(1)));
    };
    await holdAll(hashes);
    const [ino, nlink] = inodes;
    // The first, alone when taken, is a file of its own; the others share one.
    expect(ino![1]).toBe(ino![2]);
    expect(ino![0]).not.toBe(ino![1]);
    expect(nlink).toEqual([1, 2, 2]);
    expect(await readdir(join(osDir, '.locks'))).toEqual([]);
  });

  it('is re-entrant within one call chain', async () => {
    const inner = await withLayer({ osDir, hash }, () =>
      withLayer({ osDir, hash, timeoutMs: 100 }, async () => 'nested'),
    );
    expect(inner).toBe('nested');
  });

  it('times out with LAYER_LOCK_TIMEOUT naming the lock and what to do', async () => {
    let release!: () => void;
    const holding = withLayer({ osDir, hash }, () => new Promise<void>((r) => (release = r)));
    await sleep(50);
    const err = await withLayer({ osDir, hash, timeoutMs: 150 }, async () => 'never').catch(
      (e: unknown) => e,
    );
    release();
    await holding;
    expect(err).toMatchObject({
      code: LayerCodes.LOCK_TIMEOUT,
      path: layerLockPath({ osDir, hash }),
    });
    expect((err as Error).message).toContain(layerLockPath({ osDir, hash }));
    expect((err as LayerError).hint).toContain(
      `\`day11 recover --cache ${osDir}\` (Recover.sweep)`,
    );
  });

  it('stops waiting when the signal aborts', async () => {
    let release!: () => void;
    const holding = withLayer({ osDir, hash }, () => new Promise<void>((r) => (release = r)));
    await sleep(50);
    const waiting = withLayer({ osDir, hash, signal: AbortSignal.timeout(100) }, async () => 'x');
    await expect(waiting).rejects.toMatchObject({ name: 'TimeoutError' });
    release();
    await holding;
  });

  it('takes over a stale lock (not refreshed within staleMs)', async () => {
    const lockPath = layerLockPath({ osDir, hash });
    await mkdir(lockPath, { recursive: true });
    await writeFile(join(lockPath, 'owner'), JSON.stringify({ pid: DEAD_PID }));
    const old = new Date(Date.now() - 60_000);
    await utimes(lockPath, old, old);
    await expect(withLayer({ osDir, hash, timeoutMs: 2000 }, async () => 'mine')).resolves.toBe(
      'mine',
    );
    expect(await exists(lockPath)).toBe(false);
  });

  it('takes over at once a lock file whose owner is dead', async () => {
    const lockPath = layerLockPath({ osDir, hash });
    await mkdir(join(osDir, '.locks'));
    await writeFile(lockPath, JSON.stringify({ pid: DEAD_PID, start: '1' }));
    const started = Date.now();
    await expect(withLayer({ osDir, hash, timeoutMs: 2000 }, async () => 'mine')).resolves.toBe(
      'mine',
    );
    expect(Date.now() - started).toBeLessThan(1000);
    expect(await readdir(join(osDir, '.locks'))).toEqual([]);
  });

  it('fails with LAYER_LOCK_COMPROMISED when another process took the lock over', async () => {
    const lockPath = layerLockPath({ osDir, hash });
    const err = await withLayer({ osDir, hash, staleMs: 2000 }, async (held) => {
      await rm(lockPath);
      await writeFile(lockPath, JSON.stringify(await Proc.self())); // another file
      await sleep(1500);
      held.assertHeld();
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: LayerCodes.LOCK_COMPROMISED, path: lockPath });
    expect((err as LayerError).message).toMatch(/took it over/);
    // Not ours: left to its holder.
    expect(await exists(lockPath)).toBe(true);
  });

  it('is removed when the process holding it dies of SIGTERM', async () => {
    const lockModule = fileURLToPath(new URL('../dist/lock.js', import.meta.url));
    const script = `const { withLayer } = await import(${JSON.stringify(lockModule)});
      await withLayer({ osDir: process.argv[1], hash: '${hash}' }, async () => {
        console.log('held');
        await new Promise((r) => setTimeout(r, 60_000));
      });`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, osDir], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('held') && resolve());
      child.on('exit', (code) => reject(new Error(`the holder exited early (${code})`)));
    });
    expect(await exists(layerLockPath({ osDir, hash }))).toBe(true);
    const ended = new Promise((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    child.kill('SIGTERM');
    expect(await ended).toBe('SIGTERM');
    expect(await readdir(join(osDir, '.locks'))).toEqual([]);
  });

  it.skipIf(process.getuid?.() !== 0)(
    'makes a file of its own per lock where the owner record cannot be linked (no /proc; root only)',
    () => {
      const lockModule = fileURLToPath(new URL('../dist/lock.js', import.meta.url));
      // In a mount namespace of its own without /proc, linkat through
      // /proc/self/fd fails: each lock is then written aside and linked into place.
      const script = `const { withLayer } = await import(${JSON.stringify(lockModule)});
        const { lstatSync, readFileSync, readdirSync } = await import('node:fs');
        const seen = await withLayer({ osDir: process.argv[1], hash: '${hashOf(1)}' }, () =>
          withLayer({ osDir: process.argv[1], hash: '${hashOf(2)}' }, async (held) => {
            const a = lstatSync(held.path.replace('${hashOf(2).slice(0, 12)}', '${hashOf(1).slice(0, 12)}'));
            const b = lstatSync(held.path);
            return { distinct: a.ino !== b.ino, nlink: [a.nlink, b.nlink], owner: JSON.parse(readFileSync(held.path, 'utf8')).pid, names: readdirSync(process.argv[1] + '/.locks').length };
          }));
        console.log(JSON.stringify({ ...seen, left: readdirSync(process.argv[1] + '/.locks') }));`;
      const node = JSON.stringify(process.execPath);
      const r = spawnSync(
        'unshare',
        [
          '--mount',
          '--propagation',
          'private',
          'sh',
          '-c',
          `umount -l /proc && exec ${node} --input-type=module -e "$0" "$1"`,
          script,
          osDir,
        ],
        { encoding: 'utf8' },
      );
      expect(r.stderr).toBe('');
      expect(JSON.parse(r.stdout)).toMatchObject({
        distinct: true,
        nlink: [1, 1],
        names: 2,
        left: [],
      });
      expect(r.stdout).toMatch(/"owner":\d+/);
    },
  );

  it('fails cleanly with LAYER_LOCK_COMPROMISED when the lock is removed while held', async () => {
    const lockPath = layerLockPath({ osDir, hash });
    let aborted = false;
    const err = await withLayer({ osDir, hash, staleMs: 2000 }, async (held) => {
      await rm(lockPath, { recursive: true });
      // Noticed at the next refresh (staleMs / 2).
      await sleep(1500);
      aborted = held.signal.aborted;
      expect(() => held.assertHeld()).toThrow(/Lost the lock/);
    }).catch((e: unknown) => e);
    expect(aborted).toBe(true);
    expect(err).toMatchObject({ code: LayerCodes.LOCK_COMPROMISED, path: lockPath });
  });

  it('releases the lock when the function throws, and passes the error on', async () => {
    await expect(
      withLayer({ osDir, hash }, async () => {
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(await readdir(join(osDir, '.locks'))).toEqual([]);
  });

  it('rejects a bad hash and a bad timeout with typed errors', async () => {
    await expect(withLayer({ osDir, hash: 'xyz' }, async () => 1)).rejects.toMatchObject({
      code: LayerCodes.BAD_HASH,
    });
    await expect(withLayer({ osDir, hash, timeoutMs: -1 }, async () => 1)).rejects.toMatchObject({
      code: LayerCodes.BAD_ARGUMENT,
    });
  });
});

describe('Lock.withPath', () => {
  it('locks `${path}.lock` (the path need not exist) and removes it after', async () => {
    const target = join(osDir, 'index.json');
    await withPath(target, async (held) => {
      expect(held.path).toBe(`${target}.lock`);
      expect(await exists(`${target}.lock`)).toBe(true);
    });
    expect(await exists(`${target}.lock`)).toBe(false);
  });

  it('fails with LAYER_WRITE_FAILED when the lock cannot be created', async () => {
    await expect(withPath(join(osDir, 'no', 'such', 'file'), async () => 1)).rejects.toMatchObject({
      code: LayerCodes.WRITE_FAILED,
    });
  });
});

describe('lock creation', () => {
  it('never shows a lock without its owner, and leaves nothing behind', async () => {
    const lockPath = join(osDir, 'x.lock');
    const torn: string[] = [];
    let polling = true;
    // Runs between every I/O completion of the takers below: a lock made by a
    // create then a write would be seen empty.
    const poll = (): void => {
      if (!polling) return;
      try {
        const text = readFileSync(lockPath, 'utf8');
        if (Proc.parse(JSON.parse(text || 'null')) === undefined) torn.push(text);
      } catch {
        // No lock at this moment.
      }
      setImmediate(poll);
    };
    poll();
    for (let i = 0; i < 30; i++) {
      await Promise.all([1, 2, 3].map(() => withPath(join(osDir, 'x'), async () => sleep(1))));
    }
    polling = false;
    expect(torn).toEqual([]);
    expect(await readdir(osDir)).toEqual([]); // no lock, no temp left
  });

  it('fails as mkdir does on an existing lock, even an empty one, and leaves no temp', async () => {
    const lockPath = join(osDir, 'x.lock');
    await mkdir(lockPath); // an owner-less lock (older versions): not taken over while fresh
    await expect(
      withPath(join(osDir, 'x'), async () => 1, { timeoutMs: 100 }),
    ).rejects.toMatchObject({
      code: LayerCodes.LOCK_TIMEOUT,
    });
    expect(await readdir(osDir)).toEqual(['x.lock']);
    expect(await readdir(lockPath)).toEqual([]);
    // A lock file of a live holder is waited for as well.
    await rm(lockPath, { recursive: true });
    await writeFile(lockPath, JSON.stringify(await Proc.self()));
    await expect(
      withPath(join(osDir, 'x'), async () => 1, { timeoutMs: 100 }),
    ).rejects.toMatchObject({ code: LayerCodes.LOCK_TIMEOUT });
    expect(await readdir(osDir)).toEqual(['x.lock']);
  });
});

describe('Lock.staleness', () => {
  it('calls a lock without owner orphaned only after the grace period', async () => {
    const lockPath = join(osDir, 'x.lock');
    await mkdir(lockPath);
    expect(await staleness(lockPath)).toBeUndefined();
    await writeFile(join(lockPath, 'owner'), ''); // half-written
    expect(await staleness(lockPath)).toBeUndefined();
    await sleep(ORPHAN_GRACE_MS + 100);
    expect(await staleness(lockPath)).toBe('orphaned');
  });

  it('says expired, owner-dead, or nothing for a live or missing lock', async () => {
    const lockPath = join(osDir, 'x.lock');
    expect(await staleness(lockPath)).toBeUndefined();
    await mkdir(lockPath);
    expect(await staleness(lockPath)).toBeUndefined(); // fresh, owner not written yet
    await writeFile(join(lockPath, 'owner'), JSON.stringify(await Proc.self()));
    expect(await staleness(lockPath)).toBeUndefined();
    await writeFile(join(lockPath, 'owner'), JSON.stringify({ pid: DEAD_PID, start: '1' }));
    expect(await staleness(lockPath)).toBe('owner-dead');
    const old = new Date(Date.now() - 30_000);
    await utimes(lockPath, old, old);
    expect(await staleness(lockPath, { staleMs: 10_000 })).toBe('expired');
    expect(JSON.parse(await readFile(join(lockPath, 'owner'), 'utf8'))).toMatchObject({
      pid: DEAD_PID,
    });
  });

  it('reads the owner of a lock file', async () => {
    const lockPath = join(osDir, 'x.lock');
    await writeFile(lockPath, JSON.stringify(await Proc.self()));
    expect(await staleness(lockPath)).toBeUndefined();
    await writeFile(lockPath, JSON.stringify({ pid: DEAD_PID, start: '1' }));
    expect(await staleness(lockPath)).toBe('owner-dead');
    expect(await owner(lockPath)).toMatchObject({ pid: DEAD_PID });
  });
});
