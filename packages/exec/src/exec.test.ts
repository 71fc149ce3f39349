import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, chmod, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { CommandError, ExecCodes } from './errors.js';
import { isRoot, run, runStreamed, runSync, which } from './exec.js';

/** Privileged steps run directly only as root; elsewhere these tests are skipped, not passed. */
const root = isRoot();

describe('Exec.run', () => {
  it('resolves stdout, stderr, exit code and duration', async () => {
    const r = await run('sh', ['-c', 'echo out; echo err >&2']);
    expect(r).toMatchObject({ stdout: 'out\n', stderr: 'err\n', exitCode: 0 });
    expect(r.durationMs).toBeGreaterThan(0);
  });

  it('passes cwd, env and input', async () => {
    const r = await run('sh', ['-c', 'pwd; echo "$DAY11_X"; cat'], {
      cwd: '/tmp',
      env: { DAY11_X: 'hello' },
      input: 'from stdin',
    });
    expect(r.stdout).toBe('/tmp\nhello\nfrom stdin');
  });

  it('streams output line by line with the stream name', async () => {
    const lines: string[] = [];
    await run('sh', ['-c', 'echo a; echo b >&2; printf "c\\nd"'], {
      onOutput: (line, stream) => lines.push(`${stream}:${line}`),
    });
    expect(lines.sort()).toEqual(['stderr:b', 'stdout:a', 'stdout:c', 'stdout:d']);
  });

  it('onData streams output it does not keep, one chunk at a time per stream', async () => {
    const bytes = { stdout: 0, stderr: 0 };
    const inFlight = { stdout: 0, stderr: 0 };
    let overlapped = false;
    // 200 MB: more than execa's 100 MB buffer, which would have cut the command short.
    const r = await run('sh', ['-c', 'head -c 200000000 /dev/zero; echo done >&2; exit 4'], {
      allowNonZeroExit: true,
      onData: async (chunk, stream) => {
        if (inFlight[stream]++ > 0) overlapped = true;
        bytes[stream] += chunk.length;
        await new Promise((resolve) => setImmediate(resolve));
        inFlight[stream]--;
      },
    });
    expect(r).toMatchObject({ exitCode: 4, stdout: '', stderr: '' });
    expect(bytes).toEqual({ stdout: 200_000_000, stderr: 5 });
    expect(overlapped).toBe(false);
  });

  it('onData: a consumer that fails makes run reject once the command is done', async () => {
    const seen: number[] = [];
    const err = await run('sh', ['-c', 'head -c 1000000 /dev/zero; sleep 0.2; echo end'], {
      onData: (chunk) => {
        seen.push(chunk.length);
        throw new Error('disk on fire');
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ message: 'disk on fire' });
    expect(seen).toHaveLength(1);
  });

  it('rejects a non-zero exit with a CommandError carrying command, args, code and stderr tail', async () => {
    const err = await run('sh', ['-c', 'echo boom >&2; exit 3']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect(err).toMatchObject({
      code: ExecCodes.COMMAND_FAILED,
      command: 'sh',
      args: ['-c', 'echo boom >&2; exit 3'],
      exitCode: 3,
      stderrTail: 'boom\n',
      timedOut: false,
      aborted: false,
    });
    expect((err as Error).message).toContain('exited with code 3: boom');
    expect((err as Error).cause).toBeDefined();
  });

  it('keeps only the tail of a huge stderr', async () => {
    const err = (await run('sh', [
      '-c',
      'head -c 100000 /dev/zero | tr "\\0" x >&2; echo END >&2; exit 1',
    ]).catch((e: unknown) => e)) as CommandError;
    expect(err.stderrTail.length).toBeLessThanOrEqual(4096);
    expect(err.stderrTail).toContain('END');
  });

  it('resolves a non-zero exit when allowed', async () => {
    await expect(run('sh', ['-c', 'exit 7'], { allowNonZeroExit: true })).resolves.toMatchObject({
      exitCode: 7,
    });
  });

  it('reports a missing command with a hint', async () => {
    await expect(run('day11-no-such-command')).rejects.toMatchObject({
      code: ExecCodes.COMMAND_NOT_FOUND,
      exitCode: undefined,
      hint: expect.stringContaining('not installed') as unknown,
    });
  });

  it('kills on timeout, even when the command ignores SIGTERM', async () => {
    const started = Date.now();
    const err = await run('sh', ['-c', 'trap "" TERM; sleep 30'], {
      timeoutMs: 200,
      killGraceMs: 300,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: ExecCodes.TIMED_OUT, timedOut: true });
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('kills on abort', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    const err = await run('sleep', ['30'], { signal: controller.signal }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: ExecCodes.ABORTED, aborted: true });
  });

  it('reports death by signal even when non-zero exits are allowed', async () => {
    await expect(run('sh', ['-c', 'kill -9 $$'], { allowNonZeroExit: true })).rejects.toMatchObject(
      {
        signal: 'SIGKILL',
      },
    );
  });

  it.skipIf(!root)('runs privileged commands directly as root', async () => {
    await expect(run('id', ['-u'], { privileged: true })).resolves.toMatchObject({ stdout: '0\n' });
  });

  it.skipIf(!root)(
    'never prompts for a password when not root: a clear typed error instead',
    async () => {
      // Run a tiny program as `nobody` that asks for a privileged step.
      const dir = await mkdtemp(join(tmpdir(), 'day11-exec-'));
      try {
        await chmod(dir, 0o755);
        const entry = resolve(import.meta.dirname, '../dist/index.js');
        const script = `import('${entry}').then(({ Exec }) => Exec.run('id', [], { privileged: true }))
        .then(() => console.log('ran'), (e) => console.log(e.code + ' ' + e.message + ' ' + e.hint))`;
        const { stdout } = await promisify(execFile)(
          'runuser',
          ['-u', 'nobody', '--', process.execPath, '-e', script],
          {
            cwd: dir,
            timeout: 20_000,
          },
        );
        // With sudo installed it asks for a password; without it there is none to ask:
        // either way the missing piece is the privilege, as the README promises.
        expect(stdout).toMatch(/^EXEC_NO_PRIVILEGE /);
        expect(stdout).toMatch(/sudo/);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});

describe('Exec.runStreamed', () => {
  it('streams chunks one at a time per stream, keeps nothing, passes input', async () => {
    const bytes = { stdout: 0, stderr: 0 };
    const inFlight = { stdout: 0, stderr: 0 };
    let overlapped = false;
    const r = await runStreamed('sh', ['-c', 'head -c 20000000 /dev/zero; cat >&2; exit 4'], {
      allowNonZeroExit: true,
      input: 'abc',
      onData: async (chunk, stream) => {
        if (inFlight[stream]++ > 0) overlapped = true;
        bytes[stream] += chunk.length;
        await new Promise((resolve) => setImmediate(resolve));
        inFlight[stream]--;
      },
    });
    expect(r).toMatchObject({ exitCode: 4, stdout: '', stderr: '' });
    expect(bytes).toEqual({ stdout: 20_000_000, stderr: 3 });
    expect(overlapped).toBe(false);
  });

  it('lendChunks: every read lands in one buffer per stream, kept still until the consumer settles', async () => {
    // The consumer reads each chunk only after a delay: were the stream not
    // paused meanwhile, the next read would have overwritten it and the
    // digest would differ.
    const seq = 'seq 1 2000000; seq 1 5000 >&2';
    const { stdout: expected } = await run('sh', ['-c', 'seq 1 2000000 | sha256sum']);
    const hash = createHash('sha256');
    const buffers = { stdout: new Set<ArrayBufferLike>(), stderr: new Set<ArrayBufferLike>() };
    const bytes = { stdout: 0, stderr: 0 };
    let reads = 0;
    await runStreamed('sh', ['-c', seq], {
      lendChunks: true,
      onData: async (chunk, stream) => {
        buffers[stream].add(chunk.buffer);
        await new Promise((resolve) => setTimeout(resolve, ++reads % 20 === 0 ? 5 : 0));
        bytes[stream] += chunk.length;
        if (stream === 'stdout') hash.update(chunk);
      },
    });
    expect(hash.digest('hex')).toBe(expected.split(' ')[0]);
    expect(bytes.stderr).toBe((await run('sh', ['-c', 'seq 1 5000'])).stdout.length);
    expect(reads).toBeGreaterThan(100);
    // Lent: one buffer per stream for the whole run, none allocated per read.
    expect(buffers.stdout.size).toBe(1);
    expect(buffers.stderr.size).toBe(1);
    expect([...buffers.stdout][0]).not.toBe([...buffers.stderr][0]);
  });

  it('lendChunks: a consumer that throws makes it reject once the command is done', async () => {
    let seen = 0;
    const err = await runStreamed('sh', ['-c', 'head -c 1000000 /dev/zero; echo end'], {
      lendChunks: true,
      onData: () => {
        seen++;
        throw new Error('disk on fire');
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ message: 'disk on fire' });
    expect(seen).toBe(1);
  });

  it('rejects a non-zero exit unless allowed, and death by signal always', async () => {
    const onData = (): void => undefined;
    await expect(runStreamed('sh', ['-c', 'exit 3'], { onData })).rejects.toMatchObject({
      code: ExecCodes.COMMAND_FAILED,
      exitCode: 3,
    });
    await expect(
      runStreamed('sh', ['-c', 'kill -9 $$'], { onData, allowNonZeroExit: true }),
    ).rejects.toMatchObject({ code: ExecCodes.COMMAND_FAILED, signal: 'SIGKILL' });
  });

  it('reports a missing command as COMMAND_NOT_FOUND with a hint', async () => {
    await expect(
      runStreamed('day11-no-such-command', [], { onData: () => undefined }),
    ).rejects.toMatchObject({
      code: ExecCodes.COMMAND_NOT_FOUND,
      hint: expect.stringContaining('not installed') as unknown,
    });
  });

  it('kills the whole process group on abort, and on timeout past an ignored TERM', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    // The grandchild holds the pipes: only a group kill ends the output.
    const started = Date.now();
    const aborted = await runStreamed('sh', ['-c', 'sleep 30 & wait'], {
      signal: controller.signal,
      onData: () => undefined,
    }).catch((e: unknown) => e);
    expect(aborted).toMatchObject({ code: ExecCodes.ABORTED, aborted: true });
    const timedOut = await runStreamed('sh', ['-c', 'trap "" TERM; sleep 30'], {
      timeoutMs: 100,
      killGraceMs: 200,
      onData: () => undefined,
    }).catch((e: unknown) => e);
    expect(timedOut).toMatchObject({ code: ExecCodes.TIMED_OUT, timedOut: true });
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("rethrows the consumer's error once the command is done, draining the rest", async () => {
    const seen: number[] = [];
    const err = await runStreamed('sh', ['-c', 'head -c 1000000 /dev/zero; sleep 0.2; echo end'], {
      onData: (chunk) => {
        seen.push(chunk.length);
        throw new Error('disk on fire');
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ message: 'disk on fire' });
    expect(seen).toHaveLength(1);
  });
});

describe('Exec.runStreamed, started through posix_spawn or Node', () => {
  const collect = async (cmd: string, args: string[]) => {
    let out = '';
    const r = await runStreamed(cmd, args, {
      allowNonZeroExit: true,
      onData: (chunk) => void (out += chunk.toString()),
    });
    return { out, exitCode: r.exitCode };
  };
  const children = () =>
    readdirSync(`/proc/${process.pid}/task`)
      .map((t) => readFileSync(`/proc/${process.pid}/task/${t}/children`, 'utf8').trim())
      .filter((c) => c !== '');

  /** What a child sees of how it was started, with `DAY11_SPAWN` set to `spawner` meanwhile. */
  const probe = async (spawner: string | undefined) => {
    const before = process.env.DAY11_SPAWN;
    if (spawner === undefined) delete process.env.DAY11_SPAWN;
    else process.env.DAY11_SPAWN = spawner;
    try {
      const stat = await collect('sh', ['-c', 'cat /proc/$$/stat; echo; cat; ls /proc/$$/fd']);
      const [statLine, ...fds] = stat.out.trim().split('\n');
      const pid = Number(statLine!.split(' ')[0]);
      // Fields after "(comm)": state, ppid, pgrp, session.
      const [, , pgrp, session] = statLine!.slice(statLine!.lastIndexOf(')') + 2).split(' ');
      const status = (await collect('cat', ['/proc/self/status'])).out;
      return {
        leader: Number(pgrp) === pid && Number(session) === pid,
        fds: fds.filter((fd) => fd !== ''),
        ignored: /^SigIgn:\s+(\S+)$/m.exec(status)?.[1],
        blocked: /^SigBlk:\s+(\S+)$/m.exec(status)?.[1],
      };
    } finally {
      if (before === undefined) delete process.env.DAY11_SPAWN;
      else process.env.DAY11_SPAWN = before;
    }
  };

  it('posix_spawn starts a command as Node does: a session of its own, stdin from /dev/null (cat sees its end at once), no signal ignored or blocked, the same descriptors', async () => {
    const fds = readdirSync('/proc/self/fd').length;
    const viaPosix = await probe(undefined);
    const viaNode = await probe('node');
    expect(viaPosix).toEqual(viaNode);
    expect(viaPosix).toMatchObject({
      leader: true,
      ignored: '0000000000000000',
      blocked: '0000000000000000',
    });
    expect(viaPosix.fds).toEqual(expect.arrayContaining(['0', '1', '2']));
    expect(readdirSync('/proc/self/fd').length).toBe(fds);
    expect(children()).toEqual([]);
  });

  it('waits for a command that closes its output and runs on', async () => {
    const started = Date.now();
    const r = await collect('sh', ['-c', 'exec >&- 2>&-; sleep 0.3; exit 5']);
    expect(r.exitCode).toBe(5);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(children()).toEqual([]);
  });
});

describe('Exec.runSync', () => {
  it('returns stdout, stderr, exit code and duration', () => {
    const r = runSync('sh', ['-c', 'echo out; echo err >&2']);
    expect(r).toMatchObject({ stdout: 'out\n', stderr: 'err\n', exitCode: 0 });
    expect(r.durationMs).toBeGreaterThan(0);
  });

  it('passes cwd, env and input', () => {
    const r = runSync('sh', ['-c', 'pwd; echo "$DAY11_X"; cat'], {
      cwd: '/tmp',
      env: { DAY11_X: 'hello' },
      input: 'from stdin',
    });
    expect(r.stdout).toBe('/tmp\nhello\nfrom stdin');
  });

  it('throws a CommandError on a non-zero exit, with the stderr tail', () => {
    let err: unknown;
    try {
      runSync('sh', ['-c', 'echo boom >&2; exit 3']);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CommandError);
    expect(err).toMatchObject({
      code: ExecCodes.COMMAND_FAILED,
      command: 'sh',
      exitCode: 3,
      stderrTail: 'boom\n',
      timedOut: false,
      aborted: false,
    });
    expect((err as Error).message).toContain('exited with code 3: boom');
  });

  it('returns a non-zero exit when allowed', () => {
    expect(runSync('sh', ['-c', 'exit 7'], { allowNonZeroExit: true })).toMatchObject({
      exitCode: 7,
    });
  });

  it('reports a missing command with a hint', () => {
    expect(() => runSync('day11-no-such-command')).toThrow(
      expect.objectContaining({
        code: ExecCodes.COMMAND_NOT_FOUND,
        exitCode: undefined,
        hint: expect.stringContaining('not installed') as unknown,
      }),
    );
  });

  it('kills on timeout, even when the command ignores SIGTERM', () => {
    const started = Date.now();
    expect(() =>
      runSync('sh', ['-c', 'trap "" TERM; sleep 30'], { timeoutMs: 200, allowNonZeroExit: true }),
    ).toThrow(expect.objectContaining({ code: ExecCodes.TIMED_OUT, timedOut: true }));
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('reports death by signal even when non-zero exits are allowed', () => {
    expect(() => runSync('sh', ['-c', 'kill -9 $$'], { allowNonZeroExit: true })).toThrow(
      expect.objectContaining({ code: ExecCodes.COMMAND_FAILED, signal: 'SIGKILL' }),
    );
  });

  it.skipIf(!root)('runs privileged commands directly as root', () => {
    expect(runSync('id', ['-u'], { privileged: true })).toMatchObject({ stdout: '0\n' });
  });
});

describe('Exec.which', () => {
  it('finds a command on PATH as execvp would, without running it, and nothing that is not executable', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'day11-which-'));
    try {
      await mkdir(join(dir, 'a'));
      await mkdir(join(dir, 'b'));
      await mkdir(join(dir, 'b', 'tool-dir'));
      await writeFile(join(dir, 'a', 'tool'), 'not executable\n');
      await writeFile(join(dir, 'b', 'tool'), '#!/bin/sh\nexit 0\n');
      await chmod(join(dir, 'b', 'tool'), 0o755);
      const path = [join(dir, 'missing'), join(dir, 'a'), join(dir, 'b')].join(':');
      // a/tool is not executable (root too: no x bit at all); b/tool is the one.
      expect(which('tool', path)).toBe(join(dir, 'b', 'tool'));
      expect(which('tool-dir', path)).toBeUndefined(); // a directory is not a command
      expect(which('nope', path)).toBeUndefined();
      expect(which(join(dir, 'b', 'tool'), '')).toBe(join(dir, 'b', 'tool'));
      expect(which(join(dir, 'a', 'tool'), path)).toBeUndefined();
      expect(which('sh')).toMatch(/\/sh$/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
