/**
 * How a step is hardened against itself (`security` in a plan, per step or
 * plan-wide): a seccomp filter refusing the system calls a build never needs
 * (`DENIED_SYSCALLS` of `@day11/container`: the kernel keyring, modules,
 * mounts and namespaces, eBPF, perf, userfaultfd, io_uring, file handles,
 * the clock, reboot), and `no_new_privs`. Both are on unless a plan turns
 * them off.
 */
import type { SecurityInput } from './plan-schema.js';

/** Hardening explicitly set for a step; absent means the default (on). */
export type Security = SecurityInput;

/** What a step runs with when its plan says nothing. */
export const DEFAULT_SECURITY: Readonly<Required<Security>> = {
  seccomp: true,
  noNewPrivileges: true,
};
