/**
 * record-copy.wat's `place_pages` as 177 bytes of x86-64 machine code that write guest RAM with
 * non-temporal stores (`movntdq`), called through koffi: the destination's one copy of every
 * precopy page, from the read buffer (hot in cache) to RAM (cold), without first reading each
 * RAM line for ownership. WebAssembly has no such store and glibc's `memmove` uses them only
 * for copies of at least 16 KiB (`x86_non_temporal_threshold`'s floor), where a page is 4 KiB.
 *
 * Measured on this project's 2-core test machine (AMD EPYC, nested VM), 1 GiB copied 4 KiB at a
 * time from a hot buffer into touched huge-page RAM: 60–64 ms with these stores against 112–127
 * with `memcpy` and 124–130 with `rep movsb` (C, four alternating rounds).
 *
 * The code is {@link PLACE_PAGES_NT_ASM}, assembled by GNU `as` (then `objcopy -O binary -j
 * .text`); native-place.test.ts assembles it again where `as` exists and compares the bytes. It
 * is position-independent (relative jumps only), touches only caller-saved registers (System V:
 * rax, rcx, rdx, rsi, rdi, r8–r11, xmm0–xmm3) and keeps the WebAssembly version's rules exactly.
 *
 * RAM starts at `base`, which is page-aligned (a WebAssembly memory's), so every store is to a
 * 16-byte-aligned address, as `movntdq` needs. SSE2 only: every x86-64 processor has it.
 */
import { loadKoffiLibc } from './libc.js';

/** The machine code of `place_pages_nt` ({@link PLACE_PAGES_NT_ASM}), as GNU `as` assembles it. */
export const PLACE_PAGES_NT_HEX =
  '31c04881f9001000000f829e0000004881e9001000004801fe4989d04929c04981f8081000000f82810000004c8b04' +
  '06490fc84d89c149c1e92075714589c14181e1ff0f00004183f92875614981e000f0ffff4939c877554e8d0c074c8d' +
  '54060841bb40000000f3410f6f02f3410f6f4a10f3410f6f5220f3410f6f5a3066410fe70166410fe7491066410fe7' +
  '512066410fe759304983c2404983c14041ffcb75c5480508100000e96cffffff0faef8c3';

/** The assembly of {@link PLACE_PAGES_NT_HEX}, its only listing (native-place.test.ts assembles it). */
export const PLACE_PAGES_NT_ASM = `.intel_syntax noprefix
# place_pages_nt(base rdi, at rsi, len rdx, ram rcx) -> rax: bytes taken
  xor eax, eax              # taken = 0
  cmp rcx, 4096             # a RAM of less than a page takes nothing
  jb 9f
  sub rcx, 4096             # rcx = the last page's offset
  add rsi, rdi              # rsi = the first record
1:
  mov r8, rdx               # a whole record left?
  sub r8, rax
  cmp r8, 4104
  jb 9f
  mov r8, [rsi + rax]       # its big-endian header
  bswap r8
  mov r9, r8                # high word 0
  shr r9, 32
  jnz 9f
  mov r9d, r8d              # flags PAGE | CONTINUE, nothing else
  and r9d, 0xfff
  cmp r9d, 0x28
  jne 9f
  and r8, -4096             # the page inside RAM
  cmp r8, rcx
  ja 9f
  lea r9, [rdi + r8]        # to the page
  lea r10, [rsi + rax + 8]  # from the record's page
  mov r11d, 64              # 64 x 64 bytes
2:
  movdqu xmm0, [r10]
  movdqu xmm1, [r10 + 16]
  movdqu xmm2, [r10 + 32]
  movdqu xmm3, [r10 + 48]
  movntdq [r9], xmm0        # non-temporal: the RAM line is not read first
  movntdq [r9 + 16], xmm1
  movntdq [r9 + 32], xmm2
  movntdq [r9 + 48], xmm3
  add r10, 64
  add r9, 64
  dec r11d
  jnz 2b
  add rax, 4104
  jmp 1b
9:
  sfence                    # the stores are visible before the caller reads or hashes RAM
  ret
`;

/**
 * `place_pages(at, len, ram)` of record-copy.wat over the memory at address `base`: copies the
 * whole `PAGE | CONTINUE` records at `[base + at, base + at + len)` to `base + offset`, from the
 * first, up to the first that is not one whose page lies inside `[0, ram)`; returns the bytes taken.
 */
export type NativePlacePages = (base: number, at: number, len: number, ram: number) => number;

const PROT_READ = 1;
const PROT_WRITE = 2;
const PROT_EXEC = 4;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
const CODE_BYTES = 4096;

let loaded: NativePlacePages | null | undefined;

/**
 * The machine code mapped executable (written, then made read-and-execute: never writable and
 * executable at once) and callable, once per thread; null where it cannot be: not Linux on
 * x86-64, koffi missing, or a system that refuses executable mappings (SELinux's `execmem`, say).
 * Callers then keep the WebAssembly copy.
 */
export function loadNativePlacePages(): NativePlacePages | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  const koffiLibc = process.arch === 'x64' ? loadKoffiLibc() : null;
  if (koffiLibc === null) return loaded;
  try {
    const { koffi, lib } = koffiLibc;
    const mmap = lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)');
    const mprotect = lib.func('int mprotect(void *addr, size_t len, int prot)');
    const memcpy = lib.func('void *memcpy(void *dst, const void *src, size_t n)');
    const munmap = lib.func('int munmap(void *addr, size_t len)');
    const code = Buffer.from(PLACE_PAGES_NT_HEX, 'hex');
    const at: unknown = mmap(null, CODE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    // MAP_FAILED is (void *) -1.
    if (at === null || koffi.address(at) === 2n ** 64n - 1n) return loaded;
    memcpy(at, code, code.length);
    if (mprotect(at, CODE_BYTES, PROT_READ | PROT_EXEC) !== 0) {
      munmap(at, CODE_BYTES); // refused (no executable mappings here): nothing is left mapped
      return loaded;
    }
    const place = koffi.decode(
      at,
      koffi.proto('uint64_t place_pages_nt(uintptr_t base, uint64_t at, uint64_t len, uint64_t ram)'),
    ) as (base: number, at: number, len: number, ram: number) => number | bigint;
    loaded = (base, from, len, ram) => Number(place(base, from, len, ram));
  } catch {
    loaded = null;
  }
  return loaded;
}
