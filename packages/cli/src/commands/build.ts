/** `day11 build PLAN.json --cache DIR [--jobs N] [--oci LAYOUT] [--cache-from REF] [--cache-to REF] [--shard K/N] ...` */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import {
  gzipLevelOption,
  intOption,
  logCapOption,
  maxLayersOption,
  parseCommand,
  REGISTRY_OPTIONS,
} from '../args.js';
import { cacheDir, prepareCache } from '../cache.js';
import { CliCodes, CliError } from '../errors.js';
import { checkRequirements, runtimeOption } from './common.js';

export const help = `Usage: day11 build PLAN.json --cache DIR [options]

Runs every step of PLAN.json in a container over an overlayfs stack of the
base and its dependencies' layers, and keeps what it wrote as a layer. Cached
steps are skipped; the rest run in parallel, each after its dependencies. A
failing step is recorded with its exit status and log; its dependents are
recorded with failed_dep and not run. A step stopped by --timeout or a signal,
and anything downstream of it, is not recorded: it runs again next time.

Options:
  --cache DIR        the layer cache (default $DAY11_CACHE)
  --jobs N           steps (containers) run at once (1-256, default 1)
  --runtime R        runc (default) or crun, or a path to a runc-compatible runtime
  --oci LAYOUT       export one OCI image per successful step as soon as it is
                     built, tagged with the step's tag
  --max-layers N     with --oci: at most N layers per image (2-500, or docker = 125); deeper
                     stacks merge contiguous runs of their least shared layers
  --gzip-level N     with --oci: gzip level of the layer blobs, 0-9 (default 6)
  --timeout SECONDS  stop a step after this long (not recorded)
  --log-cap SIZE     most bytes of a step's output kept in its layer.log (default 64M;
                     none keeps all): past it the log keeps the first and the last half
                     with a marker between; the output never fails the step
  --retry-failed     run again the steps whose recorded outcome is a failure
  --cache-from REF   a registry cache repository (HOST[:PORT]/REPO, repeatable): a step
                     found there is pulled instead of built
  --cache-to REF     publish every step built (failures too, with their logs) to this
                     cache repository; the same REF as --cache-from is the usual setup
  --shard K/N        build only shard K of N: the plan's targets dealt out among N
                     workers, the same split on every worker (steps several shards
                     need are built by whichever worker gets there first)
  --insecure         plain http to a registry that is not on this machine
  --json             newline-delimited JSON events instead of the live display
  --debug            stack traces on errors

Plan format:
  {
    "base": "busybox" | { "tarball": "rootfs.tar.gz" } | { "dir": "rootfs/" }
          | { "docker": "debian:12" } | { "image": "debian:12" } | { "layer": "HASH" }
          | { "image": "docker://HOST/REPO:TAG" } | { "image": "oci:DIR:TAG" },
    "resources": { "memory": "4G", "cpus": 2, "pids": 4096 },
    "security": { "seccomp": true, "noNewPrivileges": true },
    "steps": [
      { "id": "libstdc++6", "run": "echo hi > /hello.txt" },
      { "id": "app", "deps": ["libstdc++6"], "run": ["/bin/sh", "-c", "cat /hello.txt"],
        "env": { "A": "1" }, "user": "1000:1000", "network": "none", "cwd": "/",
        "tag": "app-1", "resources": { "memory": "512M" },
        "security": { "seccomp": false } }
    ]
  }

  A step id is any name without "/" or NUL (package names such as g++ or
  pkg~rc1+dfsg are fine). Its image tag is "tag", or the id with "+" made "p"
  and every other character but letters, digits, ".", "_" and "-" made "-",
  runs of those collapsed, and the ends trimmed (g++ → gpp, 1.0~rc1 → 1.0-rc1);
  two steps with one tag are refused before anything runs. Later deps lie
  above earlier ones in the stack. "base": { "image": NAME } is a base already
  imported (day11 import), { "layer": HASH } a base layer by hash;
  { "image": "docker://…" } or { "image": "oci:DIR:TAG" } is pulled once and
  pinned to its manifest digest (a moved tag is another base).

  "resources" (plan-wide defaults, or per step): "memory" in bytes or
  512M/4G (past it the step is OOM-killed: exit 137), "cpus" as CPU time
  (1.5 = one and a half CPUs), "pids" the most processes at once. Steps run
  with at most 4096 processes unless "pids" says otherwise.

  "security" (plan-wide defaults, or per step): steps run with a seccomp
  filter refusing (EPERM) system calls builds do not need (keyctl, bpf,
  perf_event_open, userfaultfd, io_uring, mount, unshare, setns, clone into
  new namespaces, kexec, modules, reboot, the clock, swap) and with
  no_new_privs (setuid programs such as su and sudo do not raise
  privileges). "seccomp": false or "noNewPrivileges": false turns one off
  for a build that needs it; either setting changes the step's hash.

Examples:
  day11 build plan.json --cache /var/cache/day11 --jobs 4 --oci /srv/oci
  # worker 2 of 4 in a CI matrix, sharing layers through a registry:
  day11 build plan.json --cache /var/cache/day11 --shard 2/4 \
    --cache-from registry.example/ci/day11-cache --cache-to registry.example/ci/day11-cache
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand('build', argv, {
    cache: { type: 'string' },
    jobs: { type: 'string' },
    runtime: { type: 'string' },
    oci: { type: 'string' },
    'max-layers': { type: 'string' },
    'gzip-level': { type: 'string' },
    timeout: { type: 'string' },
    'log-cap': { type: 'string' },
    'retry-failed': { type: 'boolean' },
    'cache-from': { type: 'string', multiple: true },
    'cache-to': { type: 'string', multiple: true },
    shard: { type: 'string' },
    ...REGISTRY_OPTIONS,
    json: { type: 'boolean' },
  });
  if (positionals.length !== 1)
    throw new CliError(CliCodes.USAGE, 'day11 build: give exactly one PLAN.json', {
      hint: 'See `day11 build --help`',
    });
  const osDir = cacheDir('build', values.cache);
  const [
    { createBuilder, loadPlan, shardOf },
    { Runc },
    ociExport,
    { recover },
    { makeReporter },
    { imageResolver, openCaches, printWarning },
  ] = await Promise.all([
    import('@day11/build'),
    import('@day11/container'),
    // Loaded for an export only: most builds (and every cached one without --oci) start faster.
    values.oci === undefined ? undefined : import('@day11/oci-export'),
    import('@day11/runner'),
    import('../progress.js'),
    import('../registry.js'),
  ]);
  const jobs = intOption('build', 'jobs', values.jobs, { min: 1, max: 256, def: 1 });
  const timeout = intOption('build', 'timeout', values.timeout, {
    min: 1,
    max: 7 * 24 * 3600,
    def: 0,
  });
  const runtime = runtimeOption(values.runtime);
  const logCap = logCapOption('build', values['log-cap'], Runc.MIN_LOG_CAP);
  if (values['max-layers'] !== undefined && ociExport === undefined)
    throw new CliError(CliCodes.USAGE, 'day11 build: --max-layers needs --oci LAYOUT', {
      hint: 'See `day11 build --help`',
    });
  const maxLayers =
    ociExport && maxLayersOption('build', values['max-layers'], ociExport.DOCKER_MAX_LAYERS);
  const gzipLevel = gzipLevelOption('build', values['gzip-level']);
  if (gzipLevel !== undefined && values.oci === undefined)
    throw new CliError(CliCodes.USAGE, 'day11 build: --gzip-level needs --oci LAYOUT', {
      hint: 'See `day11 build --help`',
    });
  const shard = shardOption(values.shard);
  const prepare = async (): Promise<void> => {
    await prepareCache(osDir);
    if (runtime === 'crun') await Runc.prepareCrunCgroups().catch(() => undefined);
    // What killed processes left goes first (a killed build's upper may hold
    // the room this one needs); the layer directories are left to `day11
    // recover`: nothing there stops a build, and reading them all is most of a
    // sweep's cost in a large cache.
    await recover({ osDir, layers: false }).catch(() => undefined);
    if (ociExport && values.oci !== undefined)
      await ociExport.Layout.recover(resolve(values.oci)).catch(() => undefined);
  };
  // The machine is checked and an existing cache prepared and swept while the
  // plan is read and checked (most of a cached build's start is these); a new
  // cache is made for a valid plan only. The plan's error comes first.
  const requirements = quiet(checkRequirements(runtime));
  const prepared = existsSync(osDir) ? quiet(requirements.then(prepare)) : undefined;
  const whole = await loadPlan(resolve(positionals[0]!));
  const plan = shard ? shardOf(whole, shard) : whole;
  await requirements;
  await (prepared ?? prepare());
  const reporter = makeReporter({ json: values.json === true });
  const flags = { insecure: values.insecure === true };
  const caches = await openCaches({
    from: values['cache-from'] ?? [],
    to: values['cache-to'] ?? [],
    flags,
    onWarning: printWarning,
  });
  try {
    const builder = createBuilder({
      osDir,
      jobs,
      runtime,
      retryFailed: values['retry-failed'] === true,
      ...(values.oci !== undefined && { layout: resolve(values.oci) }),
      ...(maxLayers !== undefined && { maxLayers }),
      ...(gzipLevel !== undefined && { gzipLevel }),
      ...(timeout > 0 && { timeoutMs: timeout * 1000 }),
      ...(logCap !== undefined && { logCap }),
      sources: caches.sources,
      publishers: caches.publishers,
      resolveImage: imageResolver(flags),
    });
    try {
      // SIGINT/SIGTERM/SIGHUP: the runner unmounts and deletes its containers,
      // then the process dies by the signal; committed layers are whole.
      const result = await builder.build(plan, { onEvent: (event) => reporter.emit(event) });
      return result.ok ? 0 : 1;
    } finally {
      await builder.close();
    }
  } finally {
    reporter.close();
    await caches.close();
  }
}

/** `promise`, with its rejection handled until it is awaited. */
function quiet<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** `--shard K/N`: 1 ≤ K ≤ N. */
function shardOption(value: string | undefined): { index: number; count: number } | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d{1,6})\/(\d{1,6})$/.exec(value);
  const index = Number(m?.[1]);
  const count = Number(m?.[2]);
  if (!m || index < 1 || count < 1 || index > count)
    throw new CliError(CliCodes.USAGE, `day11 build: --shard ${value} is not K/N with 1 ≤ K ≤ N`, {
      hint: 'e.g. --shard 2/4 for the second of four workers (in an Indexed Job: $((JOB_COMPLETION_INDEX+1))/N)',
    });
  return { index, count };
}
