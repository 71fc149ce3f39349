/** Argument parsing on `node:util` parseArgs, with errors a user can act on. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { CliCodes, CliError } from './errors.js';

/** Options every command accepts. */
export const COMMON_OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  debug: { type: 'boolean' },
} as const satisfies ParseArgsConfig['options'];

/** Options every registry-using command takes. */
export const REGISTRY_OPTIONS = {
  insecure: { type: 'boolean' },
} as const;

/** What the registry options set. */
export interface RegistryFlags {
  /** Plain http to a registry not on this machine (loopback always is). */
  insecure: boolean;
}

/** Option definitions of a command, besides {@link COMMON_OPTIONS}. */
export type CommandOptions = NonNullable<ParseArgsConfig['options']>;

/** What {@link parseCommand} returns for options `O`. */
export type ParsedCommand<O extends CommandOptions> = ReturnType<
  typeof parseArgs<{ args: string[]; allowPositionals: true; options: typeof COMMON_OPTIONS & O }>
>;

/**
 * Parses a command's arguments (positionals allowed; `--help` and `--debug`
 * always accepted); a parse error is a usage error pointing at `--help`.
 */
export function parseCommand<const O extends CommandOptions>(
  command: string,
  argv: string[],
  options: O,
): ParsedCommand<O> {
  return parse(command, () =>
    parseArgs({ args: argv, allowPositionals: true, options: { ...COMMON_OPTIONS, ...options } }),
  );
}

/**
 * Runs a `parseArgs` call for `command`, turning its errors into usage errors
 * that point at `--help`. (The call stays at the caller so option types infer.)
 */
export function parse<R>(command: string, parseCall: () => R): R {
  try {
    return parseCall();
  } catch (cause) {
    throw usage(command, (cause as Error).message.replace(/\. To specify a positional.*$/s, ''));
  }
}

/** A usage error for `command`. */
export function usage(command: string, message: string): CliError {
  return new CliError(CliCodes.USAGE, `day11 ${command}: ${message}`, {
    hint: `See \`day11 ${command} --help\``,
  });
}

/** A positive integer option within bounds. */
export function intOption(
  command: string,
  name: string,
  value: string | undefined,
  bounds: { min: number; max: number; def: number },
): number {
  if (value === undefined) return bounds.def;
  const n = Number(value);
  if (!Number.isInteger(n) || n < bounds.min || n > bounds.max) {
    throw usage(
      command,
      `--${name} must be an integer from ${bounds.min} to ${bounds.max}, got ${JSON.stringify(value)}`,
    );
  }
  return n;
}

/** A non-negative number option (e.g. days), within bounds. */
export function numberOption(
  command: string,
  name: string,
  value: string | undefined,
  max: number,
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > max) {
    throw usage(
      command,
      `--${name} must be a number from 0 to ${max}, got ${JSON.stringify(value)}`,
    );
  }
  return n;
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
};

/** `500M`, `10G`, `1.5t`, `4096` → bytes. */
export function sizeOption(
  command: string,
  name: string,
  value: string | undefined,
): number | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?$/i.exec(value.trim());
  const bytes = match ? Number(match[1]) * SIZE_UNITS[match[2]!.toLowerCase()]! : NaN;
  if (!Number.isSafeInteger(Math.round(bytes))) {
    throw usage(
      command,
      `--${name} must be a size like 4096, 500M or 10G, got ${JSON.stringify(value)}`,
    );
  }
  return Math.round(bytes);
}

/**
 * `--log-cap SIZE|none`: most bytes of a step's output kept in its log, at
 * least `min`; `none` keeps all of it (`Infinity`).
 */
export function logCapOption(
  command: string,
  value: string | undefined,
  min: number,
): number | undefined {
  if (value === undefined) return undefined;
  if (value === 'none') return Infinity;
  const bytes = sizeOption(command, 'log-cap', value)!;
  if (bytes < min) {
    throw usage(
      command,
      `--log-cap must be at least ${min} bytes (or none), got ${JSON.stringify(value)}`,
    );
  }
  return bytes;
}

/** The most layers the kernel's overlayfs stacks (and so any engine) can use. */
const MAX_LAYERS_LIMIT = 500;

/**
 * `--gzip-level N`: 0 (store) to 9 (smallest); `undefined` when not given (the default, 6).
 *
 * @example
 * ```ts
 * gzipLevelOption('export', '4'); // 4
 * ```
 */
export function gzipLevelOption(command: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  return intOption(command, 'gzip-level', value, { min: 0, max: 9, def: 6 });
}

/** `--max-layers N|docker`: a layer budget of 2 to 500, `docker` being Docker's 125. */
export function maxLayersOption(
  command: string,
  value: string | undefined,
  docker: number,
): number | undefined {
  if (value === undefined) return undefined;
  if (value === 'docker') return docker;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 2 || n > MAX_LAYERS_LIMIT) {
    throw usage(
      command,
      `--max-layers must be docker (${docker}) or an integer from 2 to ${MAX_LAYERS_LIMIT}, got ${JSON.stringify(value)}`,
    );
  }
  return n;
}
