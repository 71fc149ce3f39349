/**
 * The commands of `day11`: each one's summary for the main help, and its
 * module, loaded only when the command runs (or prints its help). Nothing
 * here imports a library, so `day11 --help` and a mistyped command cost no
 * more than Node's own start.
 */

/** What a command module exports. */
export interface CommandModule {
  /** The command's help: usage, options, examples. */
  help: string;
  /** Runs the command with its arguments; resolves to the exit status. */
  run(argv: string[]): Promise<number>;
}

/** One command: its one-line summary and how to load it. */
export interface Command {
  /** One line for `day11 --help`. */
  summary: string;
  /** Loads the command's module. */
  load(): Promise<CommandModule>;
}

/** Every command, in the order `day11 --help` lists them. */
export const COMMANDS: Readonly<Record<string, Command>> = {
  build: {
    summary: "build a plan: a DAG of steps, each a command run over its dependencies' layers",
    load: () => import('./commands/build.js'),
  },
  run: {
    summary: 'run a command over layers, for debugging (the upper is thrown away unless --commit)',
    load: () => import('./commands/run.js'),
  },
  layers: {
    summary: 'list, show, remove, measure and garbage-collect the layers of a cache',
    load: () => import('./commands/layers.js'),
  },
  layout: {
    summary: 'list, remove and garbage-collect the images of an OCI image layout',
    load: () => import('./commands/layout.js'),
  },
  export: {
    summary: 'export a layer with everything it was built on as an OCI image',
    load: () => import('./commands/export.js'),
  },
  import: {
    summary:
      'import a base layer from a registry, an OCI layout, a rootfs tarball, a directory or a Docker image',
    load: () => import('./commands/import.js'),
  },
  push: {
    summary: 'publish layers (with the stacks they were built on) to a registry cache',
    load: () => import('./commands/push.js'),
  },
  pull: {
    summary: 'bring layers (with the stacks they were built on) from a registry cache',
    load: () => import('./commands/pull.js'),
  },
  recover: {
    summary:
      'remove what killed day11 processes left: mounts, containers, cgroups, temp files, stale locks',
    load: () => import('./commands/recover.js'),
  },
  demo: {
    summary: 'build, export, validate and run a small example plan (run it twice: all cached)',
    load: () => import('./commands/demo.js'),
  },
};
