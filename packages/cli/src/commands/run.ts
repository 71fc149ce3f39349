/** `day11 run --cache DIR [--layer HASH ...] -- CMD...` */
import { rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { parseCommand, usage } from '../args.js';
import { cacheDir, layerDirOf, prepareCache, stackOf } from '../cache.js';
import { checkRequirements, runtimeOption } from './common.js';

export const help = `Usage: day11 run --cache DIR [--layer HASH ...] [options] -- CMD [ARG...]

Runs CMD in a container whose root is the overlay of a layer and everything
it was built on (its base and the stack recorded when it was built), or the
busybox base when no layer is given. It runs as plan steps do: at most
4096 processes, the seccomp deny list and no_new_privs (see day11 build
--help). Output goes to this terminal; the exit status is CMD's.

Options:
  --layer LAYER      the top layer: a hash, build-xxxxxxxxxxxx or step id; repeat
                     to give the exact stack yourself, bottom to top (checked
                     against what the layers were built on)
  --runtime R        runc (default), crun, or a path
  --network N        none (default: loopback only) or host
  --commit           keep what CMD wrote as a new layer and print its name
  --cache DIR        the layer cache (default $DAY11_CACHE)

Example:
  day11 run --cache /var/cache/day11 --layer 0123456789ab -- /bin/sh -c 'ls -l /opt'
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand('run', argv, {
    cache: { type: 'string' },
    layer: { type: 'string', multiple: true },
    runtime: { type: 'string' },
    network: { type: 'string' },
    commit: { type: 'boolean' },
  });
  if (positionals.length === 0) throw usage('run', 'give the command after --');
  if (values.network !== undefined && values.network !== 'none' && values.network !== 'host') {
    throw usage('run', '--network must be none or host');
  }
  const osDir = cacheDir('run', values.cache);
  const runtime = runtimeOption(values.runtime);
  await checkRequirements(runtime);
  await prepareCache(osDir);
  const [
    { OciSpec },
    { Commit, Hash, LayerDir, LayerMeta },
    { runInLayers },
    { DEFAULT_PIDS, DEFAULT_SECURITY, resolveBase },
  ] = await Promise.all([
    import('@day11/container'),
    import('@day11/layer'),
    import('@day11/runner'),
    import('@day11/build'),
  ]);
  const named = await Promise.all((values.layer ?? []).map((h) => layerDirOf(osDir, h)));
  const { base, layers } =
    named.length > 0
      ? await stackOf(osDir, named)
      : { base: await resolveBase({ source: { kind: 'busybox' }, osDir }), layers: [] };
  const buildDirs = [...layers].reverse();
  const spec = OciSpec.template(
    OciSpec.make({
      args: positionals,
      network: values.network ?? 'none',
      // As plan steps run: a fork bomb here must not take the machine, and
      // what fails in a step under the filter fails here too.
      resources: { pidsLimit: DEFAULT_PIDS },
      seccomp: DEFAULT_SECURITY.seccomp,
      noNewPrivileges: DEFAULT_SECURITY.noNewPrivileges,
    }),
  );
  const result = await runInLayers({
    base,
    buildDirs,
    spec,
    runtime,
    onOutput: (line, stream) =>
      (stream === 'stderr' ? process.stderr : process.stdout).write(`${line}\n`),
  });
  const exitCode = result.run.exitCode ?? 128 + 9;
  if (!values.commit) {
    await rm(result.upper, { recursive: true, force: true });
    return exitCode;
  }
  const depHashes = await Promise.all(
    buildDirs.map(async (d) => (await LayerMeta.load(d)).hash ?? LayerDir.hashPrefix(basename(d))!),
  );
  const hash = Hash.layerHash({
    baseHash: base.hash,
    depHashes,
    pkg: `day11-run:${JSON.stringify(positionals)}`,
  });
  const { dir, committed } = await Commit.commit({
    osDir,
    hash,
    upper: result.upper,
    meta: {
      exit_status: exitCode,
      parent_hashes: depHashes,
      uid: 0,
      gid: 0,
      base_hash: base.hash,
      timing: result.timing,
      failed_dep: null,
    },
    sidecars: { 'run.json': { argv: positionals } },
  });
  process.stderr.write(`${committed ? 'committed' : 'already existed:'} ${join(dir)}\n`);
  return exitCode;
}
