/** `day11 demo [--cache DIR]`: the main job, end to end, on the busybox base. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Runc } from '@day11/container';
import { parseCommand } from '../args.js';
import { prepareCache } from '../cache.js';
import { CliCodes, CliError } from '../errors.js';
import type { Reporter } from '../progress.js';
import { checkRequirements, hasCommand, runtimeOption } from './common.js';

export const help = `Usage: day11 demo [--cache DIR] [--runtime R] [--json]

Builds an embedded plan on the busybox base: five steps with a diamond
dependency, a deleted file, a replaced (opaque) directory, hardlinks and
symlinks. Exports one OCI image per step, validates the layout (and with
umoci, skopeo and oci-image-tool when installed), unpacks the top image with
umoci and runs its check with the runtime, then prints a summary. A second
run finds every step cached.

Options:
  --cache DIR        the cache (default /var/tmp/day11-demo, made private to you; a
                     symlink or a directory another user made there is refused; the
                     layout goes in DIR/oci)
  --runtime R        runc (default) or crun

Example:
  day11 demo && day11 demo
`;

/** A diamond (base → hello, base → tools, hello + tools → app) and a check on top. */
export const DEMO_PLAN = {
  base: 'busybox',
  steps: [
    {
      id: 'hello',
      run: 'mkdir -p /opt/hello && echo "hello from a layer" > /opt/hello/greeting.txt && ln -s greeting.txt /opt/hello/link',
    },
    {
      id: 'tools',
      run: 'mkdir -p /opt/tools && echo "#!/bin/sh" > /opt/tools/tool && ln /opt/tools/tool /opt/tools/tool-hardlink && rm /etc/group',
    },
    {
      id: 'app',
      deps: ['hello', 'tools'],
      // Replacing a directory makes it opaque: the lower greeting.txt must vanish.
      run: 'rm -rf /opt/hello && mkdir /opt/hello && echo replaced > /opt/hello/new.txt && ls /opt/tools > /opt/app.txt',
    },
    {
      id: 'check',
      deps: ['app'],
      run: 'test ! -e /etc/group && test ! -e /opt/hello/greeting.txt && cat /opt/hello/new.txt /opt/app.txt > /opt/check.txt',
    },
    { id: 'report', deps: ['check'], run: 'wc -l < /opt/check.txt > /opt/lines.txt' },
  ],
};

const EXPECTED_CHECK = 'replaced\ntool\ntool-hardlink\n';

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommand('demo', argv, {
    cache: { type: 'string' },
    runtime: { type: 'string' },
    json: { type: 'boolean' },
  });
  const osDir = resolve(values.cache ?? process.env['DAY11_CACHE'] ?? '/var/tmp/day11-demo');
  const layout = join(osDir, 'oci');
  const runtime = runtimeOption(values.runtime);
  await checkRequirements(runtime);
  const [{ Runc }, { createBuilder, parsePlan }, { makeReporter }] = await Promise.all([
    import('@day11/container'),
    import('@day11/build'),
    import('../progress.js'),
  ]);
  // The default is a predictable name in a shared directory: a symlink or a
  // directory another user put there first is refused, never followed or used.
  await prepareCache(osDir);
  if (runtime === 'crun') await Runc.prepareCrunCgroups().catch(() => undefined);
  const reporter = makeReporter({ json: values.json === true });
  const builder = createBuilder({ osDir, jobs: 2, runtime, layout });
  try {
    reporter.note(`day11 demo: cache ${osDir}, images in ${layout}`);
    const plan = parsePlan(DEMO_PLAN, '(embedded demo plan)');
    const { summary, ok } = await builder.build(plan, { onEvent: (e) => reporter.emit(e) });
    if (!ok) {
      throw new CliError(CliCodes.DEMO_FAILED, `The demo plan failed (${summary.failed} failed)`, {
        hint: 'See `day11 layers ls --cache ' + osDir + "` and the failed layer's layer.log",
      });
    }
    await validate(layout, reporter);
    await roundTrip(layout, runtime, reporter);
    if (summary.built === 0)
      reporter.note(`Every step was a cache hit (${summary.cached} cached).`);
    return 0;
  } finally {
    reporter.close();
    await builder.close();
  }
}

async function validate(layout: string, reporter: Reporter): Promise<void> {
  const [{ Exec }, { Layout }] = await Promise.all([
    import('@day11/exec'),
    import('@day11/oci-export'),
  ]);
  const problems = await Layout.verify(layout);
  if (problems.length > 0) {
    throw new CliError(
      CliCodes.DEMO_FAILED,
      `The image layout ${layout} does not verify: ${JSON.stringify(problems[0])}`,
    );
  }
  const tags = await Layout.tags(layout);
  reporter.note(`Layout.verify: ${tags.length} tags, every blob present with its digest`);
  if (await hasCommand('skopeo')) {
    const { stdout } = await Exec.run('skopeo', ['inspect', `oci:${layout}:report`]);
    const layers = (JSON.parse(stdout) as { Layers: string[] }).Layers.length;
    reporter.note(`skopeo inspect oci:${layout}:report → ${layers} layers`);
  }
  if (await hasCommand('oci-image-tool')) {
    // Without --ref it validates every tag. (Its --ref filter, in Debian's
    // 1.0.0-rc1, reports "not unique" for any layout holding 3 or more tags.)
    await Exec.run('oci-image-tool', ['validate', '--type', 'image', layout]);
    reporter.note('oci-image-tool validate: every tag ok');
  }
}

/** Unpacks the `check` image with umoci and runs a command in it with the runtime. */
async function roundTrip(layout: string, runtime: Runc.Runtime, reporter: Reporter): Promise<void> {
  if (!(await hasCommand('umoci'))) {
    reporter.note('umoci not installed: skipping the unpack-and-run round trip');
    return;
  }
  const [{ Exec }, { OciSpec, Runc }] = await Promise.all([
    import('@day11/exec'),
    import('@day11/container'),
  ]);
  const work = await mkdtemp(join(tmpdir(), 'day11-demo-unpack-'));
  try {
    const bundle = join(work, 'bundle');
    await Exec.run('umoci', ['unpack', '--image', `${layout}:report`, bundle]);
    const spec = OciSpec.make({
      args: ['/bin/sh', '-c', 'cat /opt/check.txt; cat /opt/lines.txt'],
    });
    await OciSpec.write(
      bundle,
      OciSpec.instantiate(OciSpec.template(spec), { rootfs: join(bundle, 'rootfs') }),
    );
    let output = '';
    const result = await Runc.run({
      bundle,
      id: Runc.newId(),
      runtime,
      onOutput: (line) => (output += `${line}\n`),
    });
    if (result.exitCode !== 0 || output !== `${EXPECTED_CHECK}3\n`) {
      throw new CliError(
        CliCodes.DEMO_FAILED,
        `The unpacked image did not show what the build saw (exit ${result.exitCode}): ${JSON.stringify(output)}`,
      );
    }
    reporter.note(
      `umoci unpack + ${runtime} run: the image shows what the build saw (${output.split('\n').length - 1} lines)`,
    );
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
