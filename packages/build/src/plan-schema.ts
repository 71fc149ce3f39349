/**
 * The zod schemas of a plan file, made on first use: making them was ~20 ms
 * of every `day11 build`'s start-up, and a plan of the usual shape is checked
 * by hand (`quickStep`, `quickShell`) without them. zod decides, and words the
 * error, for everything else.
 */
import { TempName } from '@day11/exec';
import { z } from 'zod';
import { LAYER_HASH, MAX_ID, MAX_ID_BYTES } from './quick-step.js';
import { MAX_PIDS } from './resources.js';

function build() {
  /** Schema of `resources` as written in a plan. */
  const ResourcesSchema = z.strictObject({
    /** Memory (and swap) limit: bytes, or a size such as `"512M"`, `"4G"`. */
    memory: z.union([z.number().int().positive(), z.string().min(1)]).optional(),
    /** CPU time, in CPUs (e.g. 1.5): a CFS quota, not a cpuset. */
    cpus: z.number().positive().max(4096).optional(),
    /** Most processes (and threads) the step may have at once. */
    pids: z.number().int().min(1).max(MAX_PIDS).optional(),
  });

  /** Schema of `security` as written in a plan. */
  const SecuritySchema = z.strictObject({
    /** The deny-list seccomp filter (default true). */
    seccomp: z.boolean().optional(),
    /**
     * `no_new_privs` (default true): setuid binaries (`su`, `sudo`, `ping` on
     * some systems) and file capabilities do not raise privileges.
     */
    noNewPrivileges: z.boolean().optional(),
  });

  const UserSchema = z.union([
    z.number().int().min(0).max(MAX_ID),
    z.string().regex(/^\d+(:\d+)?$/, 'a user is "uid" or "uid:gid" (numbers)'),
  ]);

  const noNul = (what: string) => (s: string) =>
    !s.includes('\0') || `${what} must not contain NUL`;

  const StepIdSchema = z
    .string()
    .min(1, 'a step id must not be empty')
    .refine((s) => !s.includes('/') && !s.includes('\0'), 'a step id must not contain "/" or NUL')
    .refine((s) => s !== '.' && s !== '..', 'a step id must not be "." or ".."')
    .refine(
      (s) => !TempName.is(s),
      `a step id must not start with "${TempName.PREFIX}" (the cache's temporary names)`,
    )
    .refine(
      (s) => Buffer.byteLength(s) <= MAX_ID_BYTES,
      `a step id is at most ${MAX_ID_BYTES} bytes`,
    );

  const StepSchema = z.strictObject({
    id: StepIdSchema,
    /** The image tag of this step's export; derived from the id when absent (see `deriveTag`). */
    tag: z.string().min(1).optional(),
    deps: z.array(z.string()).default([]),
    run: z.union([
      z.string().min(1).refine(noNul('run'), 'run must not contain NUL'),
      z.array(z.string().refine((s) => !s.includes('\0'), 'no NUL in arguments')).min(1),
    ]),
    env: z
      .record(
        z.string().regex(/^[^=\0]+$/, 'no "=" or NUL in variable names'),
        z.string().refine((s) => !s.includes('\0'), 'no NUL in values'),
      )
      .default({}),
    user: UserSchema.default(0),
    network: z.enum(['none', 'host']).default('none'),
    cwd: z.string().startsWith('/', 'cwd must be an absolute path').default('/'),
    resources: ResourcesSchema.optional(),
    security: SecuritySchema.optional(),
  });

  const BaseSchema = z.union([
    z.literal('busybox'),
    z.strictObject({ busybox: z.literal(true) }),
    z.strictObject({ tarball: z.string().min(1) }),
    z.strictObject({ dir: z.string().min(1) }),
    z.strictObject({ docker: z.string().min(1) }),
    z.strictObject({ image: z.string().min(1) }),
    z.strictObject({ layer: z.string().regex(LAYER_HASH, 'a layer hash (hex)') }),
  ]);

  /** Schema of a plan file. */
  const PlanSchema = z.strictObject({
    base: BaseSchema,
    /** Defaults for every step's `resources`. */
    resources: ResourcesSchema.optional(),
    /** Defaults for every step's `security`. */
    security: SecuritySchema.optional(),
    steps: z.array(StepSchema).min(1, 'a plan needs at least one step'),
  });

  /** The plan around its steps: each step goes to `quickStep`, then to zod if need be. */
  const PlanShellSchema = PlanSchema.extend({
    steps: z.array(z.unknown()).min(1, 'a plan needs at least one step'),
  });

  return {
    PlanSchema,
    PlanShellSchema,
    StepSchema,
    BaseSchema,
    ResourcesSchema,
    SecuritySchema,
  };
}

type Schemas = ReturnType<typeof build>;
let built: Schemas | undefined;

/** The schemas, made on the first call. */
export function planSchemas(): Schemas {
  return (built ??= build());
}

/** A step as written in a plan, defaults filled in. */
export type StepInput = z.infer<Schemas['StepSchema']>;
/** `base` as written in a plan. */
export type BaseInput = z.infer<Schemas['BaseSchema']>;
/** `resources` as written in a plan. */
export type ResourcesInput = z.infer<Schemas['ResourcesSchema']>;
/** `security` as written in a plan. */
export type SecurityInput = z.infer<Schemas['SecuritySchema']>;
