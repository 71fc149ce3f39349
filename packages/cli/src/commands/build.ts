/** `day11 build PLAN.json --cache DIR [--jobs N] [--runtime R] [--oci LAYOUT] [--json]` */
import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { Runc } from '@day11/container';
import { DOCKER_MAX_LAYERS } from '@day11/oci-export';
import { recover } from '@day11/runner';
import { COMMON_OPTIONS, intOption, maxLayersOption, parse } from '../args.js';
import { build } from '../build.js';
import { cacheDir } from '../cache.js';
import { CliCodes, CliError } from '../errors.js';
import { loadPlan } from '../plan.js';
import { makeReporter } from '../progress.js';
import { checkRequirements, runtimeOption } from './common.js';

export const summary =
  "build a plan: a DAG of steps, each a command run over its dependencies' layers";

export const help = `Usage: day11 build PLAN.json --cache DIR [options]

Runs every step of PLAN.json in a container over an overlayfs stack of the
base and its dependencies' layers, and keeps what it wrote as a layer. Cached
steps are skipped; the rest run in parallel, each after its dependencies. A
failing step is recorded with its exit status and log; its dependents are
recorded with failed_dep and not run.

Options:
  --cache DIR        the layer cache (default $DAY11_CACHE)
  --jobs N           steps run at once (1-256, default 1)
  --runtime R        runc (default) or crun, or a path to a runc-compatible runtime
  --oci LAYOUT       also export one OCI image per successful step, tagged by step id
  --max-layers N     with --oci: at most N layers per image (2-500, or docker = 125); deeper
                     stacks merge contiguous runs of their least shared layers
  --timeout SECONDS  stop a step after this long (not cached)
  --json             newline-delimited JSON events instead of the live display
  --debug            stack traces on errors

Plan format:
  {
    "base": "busybox" | { "tarball": "rootfs.tar.gz" } | { "dir": "rootfs/" } | { "docker": "debian:12" },
    "steps": [
      { "id": "hello", "run": "echo hi > /hello.txt" },
      { "id": "app", "deps": ["hello"], "run": ["/bin/sh", "-c", "cat /hello.txt"],
        "env": { "A": "1" }, "user": "1000:1000", "network": "none", "cwd": "/" }
    ]
  }

Example:
  day11 build plan.json --cache /var/cache/day11 --jobs 4 --oci /srv/oci
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse('build', () =>
    parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        ...COMMON_OPTIONS,
        cache: { type: 'string' },
        jobs: { type: 'string' },
        runtime: { type: 'string' },
        oci: { type: 'string' },
        'max-layers': { type: 'string' },
        timeout: { type: 'string' },
        json: { type: 'boolean' },
      },
    }),
  );
  if (positionals.length !== 1)
    throw new CliError(CliCodes.USAGE, 'day11 build: give exactly one PLAN.json', {
      hint: 'See `day11 build --help`',
    });
  const osDir = cacheDir('build', values.cache);
  const jobs = intOption('build', 'jobs', values.jobs, { min: 1, max: 256, def: 1 });
  const timeout = intOption('build', 'timeout', values.timeout, {
    min: 1,
    max: 7 * 24 * 3600,
    def: 0,
  });
  const runtime = runtimeOption(values.runtime);
  const maxLayers = maxLayersOption('build', values['max-layers'], DOCKER_MAX_LAYERS);
  if (maxLayers !== undefined && values.oci === undefined)
    throw new CliError(CliCodes.USAGE, 'day11 build: --max-layers needs --oci LAYOUT', {
      hint: 'See `day11 build --help`',
    });
  const plan = await loadPlan(resolve(positionals[0]!));
  await checkRequirements(runtime);
  if (runtime === 'crun') await Runc.prepareCrunCgroups().catch(() => undefined);
  await recover({ osDir }).catch(() => undefined);
  const reporter = makeReporter({ json: values.json === true });
  try {
    // SIGINT/SIGTERM: the runner unmounts and deletes its containers, then the
    // process dies by the signal; committed layers are whole, the rest is swept next time.
    const result = await build({
      plan,
      osDir,
      jobs,
      runtime,
      reporter,
      ...(values.oci !== undefined && { oci: resolve(values.oci) }),
      ...(maxLayers !== undefined && { maxLayers }),
      ...(timeout > 0 && { timeoutMs: timeout * 1000 }),
    });
    return result.summary.failed + result.summary.skipped > 0 ? 1 : 0;
  } finally {
    reporter.close();
  }
}
