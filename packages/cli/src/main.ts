#!/usr/bin/env node
/**
 * The `day11` command. Composed only of the libraries' public APIs, each
 * loaded by the command that uses it when it runs (see `commands.ts`).
 */
import { COMMANDS } from './commands.js';

function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  const lines = Object.entries(COMMANDS).map(
    ([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`,
  );
  return `Usage: day11 <command> [options]

Content-addressed build layers: run build steps in runc/crun containers over
overlayfs stacks of cached layers, and export them as OCI images.

Commands:
${lines.join('\n')}

Every command takes --help (its options, with an example) and --debug
(stack traces on errors).

Example:
  day11 demo
  day11 build plan.json --cache /var/cache/day11 --jobs 4 --oci /srv/oci
`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(mainHelp());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') {
    console.log('day11 0.1.0');
    return 0;
  }
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!command) {
    const { CliCodes, CliError } = await import('./errors.js');
    throw new CliError(CliCodes.USAGE, `day11: unknown command ${JSON.stringify(name)}`, {
      hint: 'See `day11 --help`',
    });
  }
  // Only now is the command's module, and what it imports, loaded.
  const module = await command.load();
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(module.help);
    return 0;
  }
  return module.run(rest);
}

// A reader that went away (\`day11 layers ls | head -1\`) ends the command
// quietly, as SIGPIPE ends a C program: status 141 (128 + SIGPIPE).
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(141);
    throw err;
  });
}

const debug = process.argv.includes('--debug');
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  async (err: unknown) => {
    // Loaded only on this path: `day11 --help` needs none of it.
    const { exitCodeOf, formatError } = await import('./errors.js');
    console.error(debug ? err : formatError(err));
    process.exitCode = exitCodeOf(err);
  },
);
