/**
 * A syscall probe for tests: a static x86-64 ELF of a few dozen bytes that
 * makes one system call with three fixed arguments and exits with its errno
 * (0 on success). No compiler needed: the machine code is written out here.
 * With it a test sees exactly what a seccomp filter does to one call, which
 * busybox applets cannot show (most of them fail without their capability
 * anyway).
 */

/** x86-64 system call numbers used by the tests. */
export const NR = {
  keyctl: 250,
  userfaultfd: 323,
  bpf: 321,
  io_uring_setup: 425,
  clone: 56,
  clone3: 435,
  unshare: 272,
  fsync: 74,
} as const;

/** `clone` flags. */
export const CLONE_NEWUSER = 0x10000000;
export const SIGCHLD = 17;

const BASE = 0x400000n;
const HEADERS = 64 + 56;

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}
function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, n));
  return b;
}

/**
 * The ELF for `syscall(nr, a0, a1, a2)` (other arguments 0), exiting with
 * the errno it returns, or 0.
 *
 * @example
 * ```ts
 * await writeFile(join(rootfs, 'probe'), syscallProbe(NR.unshare, CLONE_NEWUSER), { mode: 0o755 });
 * ```
 */
export function syscallProbe(
  nr: number,
  a0 = 0n as bigint | number,
  a1: bigint | number = 0,
  a2: bigint | number = 0,
): Buffer {
  const code = Buffer.concat([
    Buffer.from([0xb8]),
    u32(nr), // mov eax, nr
    Buffer.from([0x48, 0xbf]),
    u64(BigInt(a0)), // mov rdi, a0
    Buffer.from([0x48, 0xbe]),
    u64(BigInt(a1)), // mov rsi, a1
    Buffer.from([0x48, 0xba]),
    u64(BigInt(a2)), // mov rdx, a2
    Buffer.from([0x45, 0x31, 0xd2]), // xor r10d, r10d
    Buffer.from([0x45, 0x31, 0xc0]), // xor r8d, r8d
    Buffer.from([0x45, 0x31, 0xc9]), // xor r9d, r9d
    Buffer.from([0x0f, 0x05]), // syscall
    Buffer.from([0x48, 0x85, 0xc0]), // test rax, rax
    Buffer.from([0x78, 0x04]), // js error
    Buffer.from([0x31, 0xff]), // xor edi, edi
    Buffer.from([0xeb, 0x05]), // jmp out
    Buffer.from([0x48, 0xf7, 0xd8]), // error: neg rax
    Buffer.from([0x89, 0xc7]), // mov edi, eax
    Buffer.from([0xb8]),
    u32(60), // out: mov eax, exit
    Buffer.from([0x0f, 0x05]), // syscall
  ]);
  const size = BigInt(HEADERS + code.length);
  const elf = Buffer.concat([
    Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]),
    Buffer.alloc(8), // ELF64, little-endian
    u16(2),
    u16(0x3e),
    u32(1), // ET_EXEC, x86-64, version
    u64(BASE + BigInt(HEADERS)),
    u64(64n),
    u64(0n), // entry, phoff, shoff
    u32(0),
    u16(64),
    u16(56),
    u16(1),
    u16(0),
    u16(0),
    u16(0), // flags, sizes, 1 phdr
    u32(1),
    u32(5),
    u64(0n),
    u64(BASE),
    u64(BASE),
    u64(size),
    u64(size),
    u64(0x1000n), // PT_LOAD r-x
  ]);
  return Buffer.concat([elf, code]);
}
