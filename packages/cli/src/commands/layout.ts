/** `day11 layout ls | rm TAG... | gc | verify --oci LAYOUT` */
import { resolve } from 'node:path';
import { parseCommand, usage } from '../args.js';
import { formatBytes } from '../progress.js';

export const help = `Usage: day11 layout <ls|rm|gc|verify> --oci LAYOUT [options]

  ls                 every tag with its manifest digest
  rm TAG...          remove tags (their blobs stay until gc)
  gc                 delete the blobs no tag needs any more (rebuilt images leave
                     old ones behind) and temporary files of killed exporters
  verify             check every blob's presence, size and digest

Options:
  --oci LAYOUT       the OCI image layout (as given to day11 build --oci / export --oci)
  --json             machine-readable output

Examples:
  day11 layout ls --oci /srv/oci
  day11 layout rm --oci /srv/oci old-tag other-tag
  day11 layout gc --oci /srv/oci
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand('layout', argv, {
    oci: { type: 'string' },
    json: { type: 'boolean' },
  });
  const [sub, ...rest] = positionals;
  if (!values.oci) throw usage('layout', '--oci LAYOUT is required');
  const layout = resolve(values.oci);
  const json = values.json === true;
  switch (sub) {
    case 'ls': {
      const { Layout } = await import('@day11/oci-export');
      const tags = await Layout.tags(layout);
      if (json) for (const t of tags) console.log(JSON.stringify(t));
      else {
        for (const t of tags) console.log(`${t.digest.slice(0, 19)}  ${t.tag}`);
        console.log(`${tags.length} tags in ${layout}`);
      }
      return 0;
    }
    case 'rm': {
      if (rest.length === 0) throw usage('layout', 'rm takes one or more TAGs');
      const { Layout } = await import('@day11/oci-export');
      let missing = 0;
      for (const tag of rest) {
        const removed = await Layout.removeTag(layout, tag);
        if (!removed) missing++;
        if (json) console.log(JSON.stringify({ tag, removed }));
        else console.log(removed ? `removed ${tag}` : `no tag ${tag} in ${layout}`);
      }
      return missing > 0 ? 1 : 0;
    }
    case 'gc': {
      const { Layout } = await import('@day11/oci-export');
      const result = await Layout.gc(layout);
      if (json) console.log(JSON.stringify(result));
      else
        console.log(
          `Deleted ${result.removed.length} unreferenced blobs (${formatBytes(result.bytes)}) and ${result.temps.length} temporary files from ${layout}`,
        );
      return 0;
    }
    case 'verify': {
      const { Layout } = await import('@day11/oci-export');
      const problems = await Layout.verify(layout);
      if (json) for (const p of problems) console.log(JSON.stringify(p));
      else {
        for (const p of problems) console.log(`${p.path}: ${p.message}`);
        console.log(
          problems.length === 0
            ? `${layout}: every blob present with its digest`
            : `${problems.length} problems`,
        );
      }
      return problems.length === 0 ? 0 : 1;
    }
    default:
      throw usage(
        'layout',
        sub
          ? `unknown subcommand ${JSON.stringify(sub)}`
          : 'give a subcommand: ls, rm, gc or verify',
      );
  }
}
