/**
 * The zod schemas of the OCI runtime spec day11 writes and of the options of
 * `OciSpec.make`. Built on first use, not when the module loads: a command
 * that runs no container (a fully cached build) would pay for ~50 of them.
 */
import { isAbsolute } from 'node:path';
import { z } from 'zod';

function build() {
  const noNul = (s: string): boolean => !s.includes('\0');
  const absolutePath = z
    .string()
    .refine((p) => isAbsolute(p) && noNul(p), { message: 'must be an absolute path' });
  /** uid/gid: a 32-bit id; 4294967295 is (uid_t)-1, "no change", never a real id. */
  const id32 = z.number().int().min(0).max(4294967294);

  const MountSchema = z.looseObject({
    destination: absolutePath,
    type: z.string().optional(),
    source: z.string().optional(),
    options: z.array(z.string()).optional(),
  });

  const CapabilitiesSchema = z.looseObject({
    bounding: z.array(z.string()).optional(),
    effective: z.array(z.string()).optional(),
    inheritable: z.array(z.string()).optional(),
    permitted: z.array(z.string()).optional(),
    ambient: z.array(z.string()).optional(),
  });

  const ProcessSchema = z.looseObject({
    terminal: z.boolean(),
    user: z.looseObject({
      uid: id32,
      gid: id32,
      additionalGids: z.array(id32).optional(),
    }),
    args: z.array(z.string()).min(1, 'must name the program to run'),
    env: z.array(z.string().regex(/^[^=\0]+=[^\0]*$/, 'must be KEY=VALUE')),
    cwd: absolutePath,
    capabilities: CapabilitiesSchema,
    rlimits: z.array(
      z.looseObject({ type: z.string(), hard: z.number().int(), soft: z.number().int() }),
    ),
    noNewPrivileges: z.boolean(),
  });

  const SeccompSchema = z.looseObject({
    defaultAction: z.string(),
    architectures: z.array(z.string()).optional(),
    syscalls: z.array(
      z.looseObject({
        names: z.array(z.string()).min(1),
        action: z.string(),
        errnoRet: z.number().int().nonnegative().optional(),
      }),
    ),
  });

  const ResourcesSchema = z.looseObject({
    devices: z
      .array(z.looseObject({ allow: z.boolean(), access: z.string().optional() }))
      .optional(),
    memory: z
      .looseObject({ limit: z.number().int().positive(), swap: z.number().int().optional() })
      .optional(),
    cpu: z
      .looseObject({
        cpus: z.string().optional(),
        mems: z.string().optional(),
        quota: z.number().int().optional(),
        period: z.number().int().positive().optional(),
      })
      .optional(),
    pids: z.looseObject({ limit: z.number().int().positive() }).optional(),
  });

  const LinuxSchema = z.looseObject({
    namespaces: z.array(z.looseObject({ type: z.string(), path: z.string().optional() })),
    maskedPaths: z.array(absolutePath),
    readonlyPaths: z.array(absolutePath),
    resources: ResourcesSchema.optional(),
    seccomp: SeccompSchema.optional(),
    cgroupsPath: z.string().min(1).optional(),
  });

  /** Schema of the spec we emit. Unknown keys pass through, so callers may add their own. */
  const Schema = z.looseObject({
    ociVersion: z.string(),
    process: ProcessSchema,
    root: z.looseObject({
      path: z.string().min(1).refine(noNul, { message: 'must not contain NUL' }),
      readonly: z.boolean(),
    }),
    hostname: z.string(),
    mounts: z.array(MountSchema),
    linux: LinuxSchema,
  });

  /** Schema of a {@link Template}: a spec with no rootfs and no cgroup of its own yet. */
  const TemplateSchema = Schema.extend({
    root: z.looseObject({ path: z.undefined().optional(), readonly: z.boolean() }),
    linux: LinuxSchema.extend({ cgroupsPath: z.undefined().optional() }),
  });

  const envKey = /^[^=\0]+$/;
  const cpuList = /^\d+(-\d+)?(,\d+(-\d+)?)*$/;

  const OptionsSchema = z.object({
    args: z
      .array(z.string().refine(noNul, { message: 'must not contain NUL' }))
      .min(1, 'must name the program to run'),
    cwd: absolutePath.optional(),
    env: z
      .record(
        z.string().regex(envKey, 'names must be non-empty and contain no "="'),
        z.string().refine(noNul, { message: 'must not contain NUL' }),
      )
      .optional(),
    hostname: z
      .string()
      .regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$/, 'must be a valid hostname')
      .optional(),
    uid: id32.optional(),
    gid: id32.optional(),
    additionalGids: z.array(id32).optional(),
    network: z.enum(['none', 'host']).optional(),
    mounts: z
      .array(
        z.object({
          source: absolutePath,
          destination: absolutePath,
          readonly: z.boolean().optional(),
        }),
      )
      .optional(),
    readonlyRoot: z.boolean().optional(),
    noNewPrivileges: z.boolean().optional(),
    seccomp: z.boolean().optional(),
    resources: z
      .object({
        cpus: z.string().regex(cpuList, 'must be a CPU list such as "0-3" or "0,2"').optional(),
        mems: z.string().regex(cpuList, 'must be a node list such as "0" or "0-1"').optional(),
        memoryBytes: z.number().int().positive('must be a positive number of bytes').optional(),
        cpuLimit: z.number().positive('must be a positive number of CPUs').max(4096).optional(),
        pidsLimit: z.number().int().positive('must be a positive integer').optional(),
      })
      .optional(),
    fastSync: z.boolean().optional(),
    tmpfsTmp: z.boolean().optional(),
    rootfs: z.string().min(1).refine(noNul, { message: 'must not contain NUL' }).optional(),
    arch: z.string().optional(),
  });
  return { Schema, TemplateSchema, OptionsSchema, MountSchema, ResourcesSchema };
}

type Schemas = ReturnType<typeof build>;
let built: Schemas | undefined;

/** The schemas, made on the first call. */
export function specSchemas(): Schemas {
  return (built ??= build());
}

/** An OCI runtime spec (`config.json`) as day11 writes it. Unknown keys pass through. */
export type Spec = z.infer<Schemas['Schema']>;
/** A spec with no `root.path` and no `linux.cgroupsPath`: one per layer, JSON-serialisable. */
export type Template = z.infer<Schemas['TemplateSchema']>;
/** One entry of `mounts`. */
export type Mount = z.infer<Schemas['MountSchema']>;
/** Options of `OciSpec.make`, validated. */
export type ValidOptions = z.infer<Schemas['OptionsSchema']>;
/** `linux.resources` of a spec. */
export type SpecResources = z.infer<Schemas['ResourcesSchema']>;
