/**
 * The sandbox: what the builder needs to run one step (OBuilder's SANDBOX).
 * The builder decides what to run over which layers and what to do with the
 * result; the sandbox only runs it and hands back the upper. The real one
 * runs containers with `@day11/runner`; tests give the builder a fake.
 */
import { rm } from 'node:fs/promises';
import { OciSpec, type Runc } from '@day11/container';
import { isDay11Error } from '@day11/exec';
import type { Base, Timing } from '@day11/layer';
import { createRunner, RunnerCodes } from '@day11/runner';
import { DEFAULT_PIDS, type Resources } from './resources.js';
import { DEFAULT_SECURITY, type Security } from './security.js';

/** The process a step runs, fully resolved. */
export interface StepProcess {
  argv: readonly string[];
  env: Readonly<Record<string, string>>;
  cwd: string;
  uid: number;
  gid: number;
  network: 'none' | 'host';
  /** Limits explicitly set; the sandbox applies its defaults for the rest. */
  resources: Resources;
  /** Hardening explicitly set; the sandbox applies its defaults (all on) for the rest. */
  security: Security;
}

/** Options of {@link Sandbox.run}. */
export interface SandboxRunOptions {
  base: Base;
  /** The layer directories of the step's stack, topmost first (the base not included). */
  lowers: readonly string[];
  process: StepProcess;
  /** Where the step's output goes. */
  logFile: string;
  /** Most bytes of output kept in `logFile` (head and tail, a marker between); `Infinity`: all. */
  logCap?: number | undefined;
  signal?: AbortSignal | undefined;
  timeoutMs?: number | undefined;
  /**
   * The builder's limit on containers running at once, given to a sandbox
   * that says it takes it ({@link Sandbox.takesContainerSlot}): awaited just
   * before the container starts; the function it resolves to is called as
   * soon as the container is gone.
   */
  containerSlot?: (() => Promise<() => void>) | undefined;
}

/** How a step's run ended. */
export type SandboxResult =
  /** It ran to an exit status (128 + n when killed by signal n); `upper` is the caller's now. */
  | { status: 'exited'; exitCode: number; upper: string; timing: Timing }
  /** It was stopped (timeout or abort): nothing about the step is known, and nothing is left. */
  | { status: 'interrupted'; reason: 'timeout' | 'aborted' };

/**
 * Runs steps. `run` rejects only for a failure of the machine (a mount, the
 * runtime, a missing layer): the builder reports it and caches nothing.
 */
export interface Sandbox {
  run(options: SandboxRunOptions): Promise<SandboxResult>;
  /**
   * True when `run` waits for `containerSlot` before it starts its container
   * and gives it back once the container is gone. The builder then prepares
   * and commits up to `jobs` more steps (their mounts, leases, commits) while
   * `jobs` containers run; otherwise `jobs` bounds whole runs.
   */
  readonly takesContainerSlot?: boolean;
  /** Releases what the sandbox keeps between runs. Idempotent. */
  close(): Promise<void>;
}

/** Options of {@link runnerSandbox}. */
export interface RunnerSandboxOptions {
  /** The layer cache. */
  osDir: string;
  /** `runc` (default), `crun`, or the path of a runc-compatible runtime. */
  runtime?: Runc.Runtime | undefined;
}

/**
 * The real sandbox: each step in a runc/crun container over an overlay of
 * its stack, run by a runner of `@day11/runner` (which keeps the leases on
 * the layers steps share until the sandbox is closed), with a pids limit
 * unless the step sets its own, and hardened (seccomp deny list,
 * `no_new_privs`) unless the step turns that off.
 *
 * @example
 * ```ts
 * const builder = createBuilder({ osDir, sandbox: runnerSandbox({ osDir, runtime: 'crun' }) });
 * ```
 */
export function runnerSandbox(options: RunnerSandboxOptions): Sandbox {
  const runner = createRunner({ osDir: options.osDir, runtime: options.runtime });
  return {
    takesContainerSlot: true,
    async run(o) {
      const p = o.process;
      const spec = OciSpec.template(
        OciSpec.make({
          args: p.argv,
          env: p.env,
          cwd: p.cwd,
          uid: p.uid,
          gid: p.gid,
          network: p.network,
          seccomp: p.security.seccomp ?? DEFAULT_SECURITY.seccomp,
          noNewPrivileges: p.security.noNewPrivileges ?? DEFAULT_SECURITY.noNewPrivileges,
          resources: {
            pidsLimit: p.resources.pids ?? DEFAULT_PIDS,
            ...(p.resources.memoryBytes !== undefined && {
              memoryBytes: p.resources.memoryBytes,
            }),
            ...(p.resources.cpus !== undefined && { cpuLimit: p.resources.cpus }),
          },
        }),
      );
      let result;
      try {
        result = await runner.run({
          base: o.base,
          buildDirs: o.lowers,
          spec,
          logFile: o.logFile,
          ...(o.logCap !== undefined && { logCap: o.logCap }),
          ...(o.signal !== undefined && { signal: o.signal }),
          ...(o.timeoutMs !== undefined && { timeoutMs: o.timeoutMs }),
          ...(o.containerSlot !== undefined && { containerSlot: o.containerSlot }),
        });
      } catch (err) {
        // Aborted before the container started: as interrupted as after.
        if (isDay11Error(err, RunnerCodes.ABORTED))
          return { status: 'interrupted', reason: 'aborted' };
        throw err;
      }
      const { run } = result;
      if (run.aborted || run.timedOut) {
        await rm(result.upper, { recursive: true, force: true });
        return { status: 'interrupted', reason: run.timedOut ? 'timeout' : 'aborted' };
      }
      return {
        status: 'exited',
        // No status at all means the runtime itself had to be killed.
        exitCode: run.exitCode ?? 128 + 9,
        upper: result.upper,
        timing: result.timing,
      };
    },
    close: () => runner.close(),
  };
}
