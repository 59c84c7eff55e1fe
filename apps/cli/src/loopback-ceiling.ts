import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DirtytrackError } from '@dirtytrack/core';

const run = promisify(execFile);

/**
 * `bench migrate`'s C ceiling: what this machine's kernel gives two processes that do nothing but
 * move bytes over loopback TCP, written in C so that no runtime of ours is in the figure. Two
 * modes, each a sender (the parent) and a receiver (a forked child, its own process as a
 * destination is):
 *
 * - `raw`: `bytes` written in 4 MiB `writev`s from one pre-filled buffer and read into one 4 MiB
 *   buffer that is thrown away — the C twin of the bench's `loopback-mbps`.
 * - `records`: `bytes` of guest RAM (advised huge pages, every page different) sent as QEMU's page
 *   records, each page after its 8-byte big-endian header (`offset | flags`), 512 records per
 *   `writev` straight from the RAM; read into one 4 MiB buffer, each whole record's page copied to
 *   its offset in a second RAM (advised huge pages, touched before), the header's flags and offset
 *   checked — the stream precopy sends of an idle guest and the copy its destination makes. After
 *   the clock stops, every page of the receiving RAM is compared with the sender's pattern.
 *
 * The clock runs from just before the first write to the receiver's last byte (CLOCK_MONOTONIC,
 * one clock for both processes). Prints one JSON line: `{"mbps":…,"pages":…,"verified":…}`.
 */
export const LOOPBACK_CEILING_C = String.raw`
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define CHUNK (4UL << 20)
#define RECORD (8 + PAGE)
#define BATCH 512

static void die(const char *what) { fprintf(stderr, "%s: %s\n", what, strerror(errno)); exit(1); }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static char *ram(size_t n) {
  char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  madvise(p, n, MADV_HUGEPAGE);
  for (size_t i = 0; i < n; i += PAGE) p[i] = 1;
  return p;
}
/* The sender's RAM: word w of the RAM is a function of w alone, so the receiver can check it. */
static uint64_t pattern(uint64_t w) { w += 0x9e3779b97f4a7c15ULL; w = (w ^ (w >> 30)) * 0xbf58476d1ce4e5b9ULL; return w ^ (w >> 27); }

/* Reads until every byte is in; buf and dst (records) allocated and touched before the clock. */
static void receive(int s, int records, char *buf, char *dst, size_t bytes, uint64_t flags, int report) {
  size_t got = 0, have = 0, pages = 0, want = records ? bytes / PAGE * RECORD : bytes;
  while (got < want) {
    ssize_t k = recv(s, buf + have, CHUNK - have, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) die(k == 0 ? "recv: the sender ended early" : "recv");
    got += (size_t)k;
    if (!records) continue;
    have += (size_t)k;
    size_t p = 0;
    for (; have - p >= RECORD; p += RECORD, pages++) {
      uint64_t h = __builtin_bswap64(*(uint64_t *)(buf + p));
      uint64_t at = h & ~(PAGE - 1);
      if ((h & (PAGE - 1)) != flags || at > bytes - PAGE) { errno = EPROTO; die("a record that is not a page of RAM"); }
      memcpy(dst + at, buf + p + 8, PAGE);
    }
    memmove(buf, buf + p, have - p);
    have -= p;
  }
  double end = now();
  int verified = 1;
  if (records)
    for (size_t w = 0; w < bytes / 8 && verified; w++) verified = ((uint64_t *)dst)[w] == pattern(w);
  if (write(report, &end, sizeof end) != sizeof end) die("write");
  if (write(report, &pages, sizeof pages) != sizeof pages) die("write");
  if (write(report, &verified, sizeof verified) != sizeof verified) die("write");
  exit(0);
}

static void send_all(int s, struct iovec *v, int n) {
  while (n > 0) {
    ssize_t k = writev(s, v, n);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) die("writev");
    while (n > 0 && (size_t)k >= v->iov_len) { k -= (ssize_t)v->iov_len; v++; n--; }
    if (n > 0) { v->iov_base = (char *)v->iov_base + k; v->iov_len -= (size_t)k; }
  }
}

int main(int argc, char **argv) {
  if (argc != 4 || (strcmp(argv[1], "raw") != 0 && strcmp(argv[1], "records") != 0)) {
    fprintf(stderr, "usage: %s raw|records BYTES FLAGS\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a receiver that died: writev fails with EPIPE, said on stderr */
  const char *mode = argv[1];
  size_t bytes = strtoull(argv[2], 0, 10);
  uint64_t flags = strtoull(argv[3], 0, 10);
  if (bytes == 0 || bytes % PAGE != 0) { fprintf(stderr, "BYTES must be a positive multiple of 4096\n"); return 2; }
  int records = strcmp(mode, "records") == 0;
  char *src = ram(records ? bytes : CHUNK);
  for (size_t w = 0; w < (records ? bytes : CHUNK) / 8; w++) ((uint64_t *)src)[w] = pattern(w);

  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  socklen_t al = sizeof a;
  if (ls < 0 || bind(ls, (void *)&a, sizeof a) < 0 || listen(ls, 1) < 0 || getsockname(ls, (void *)&a, &al) < 0) die("listen");
  int ready[2], report[2];
  if (pipe(ready) < 0 || pipe(report) < 0) die("pipe");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    char *buf = ram(CHUNK), *dst = records ? ram(bytes) : 0;
    int s = accept(ls, 0, 0);
    if (s < 0) die("accept");
    if (write(ready[1], "r", 1) != 1) die("write");
    receive(s, records, buf, dst, bytes, flags, report[1]);
  }
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0 || connect(s, (void *)&a, sizeof a) < 0) die("connect");
  char c;
  if (read(ready[0], &c, 1) != 1) die("the receiver did not start");
  double start = now();
  static struct iovec iov[2 * BATCH];
  static uint64_t headers[BATCH];
  if (records) {
    for (size_t page = 0, pages = bytes / PAGE; page < pages;) {
      int n = 0;
      for (; n < BATCH && page + (size_t)n < pages; n++) {
        headers[n] = __builtin_bswap64(((page + (size_t)n) * PAGE) | flags);
        iov[2 * n] = (struct iovec){ &headers[n], 8 };
        iov[2 * n + 1] = (struct iovec){ src + (page + (size_t)n) * PAGE, PAGE };
      }
      send_all(s, iov, 2 * n);
      page += (size_t)n;
    }
  } else {
    for (size_t sent = 0; sent < bytes; sent += CHUNK) {
      iov[0] = (struct iovec){ src, bytes - sent < CHUNK ? bytes - sent : CHUNK };
      send_all(s, iov, 1);
    }
  }
  double end;
  size_t pages;
  int verified;
  if (read(report[0], &end, sizeof end) != sizeof end || read(report[0], &pages, sizeof pages) != sizeof pages ||
      read(report[0], &verified, sizeof verified) != sizeof verified) {
    fprintf(stderr, "the receiver failed\n");
    return 1;
  }
  int status;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "the receiver failed\n"); return 1; }
  printf("{\"mbps\":%.0f,\"pages\":%zu,\"verified\":%s}\n", bytes * 8 / (end - start) / 1e6, pages, verified ? "true" : "false");
  return 0;
}
`;

/** How long one C run may take (1 GiB takes well under a second here) before it is killed. */
const RUN_TIMEOUT_MS = 120_000;

/** What the C ceiling is where it cannot be measured: the reason, for the JSON and the table. */
export const C_CEILING_UNAVAILABLE = 'unavailable: no C compiler (cc) on PATH';

export interface CeilingRun {
  mbps: number;
  /** Page records the receiver placed (`records`; 0 for `raw`). */
  pages: number;
  /** Every page of the receiving RAM equals the sender's (`records`; true for `raw`). */
  verified: boolean;
}

export interface LoopbackCeiling {
  run(mode: 'raw' | 'records', bytes: number): Promise<CeilingRun>;
  close(): Promise<void>;
}

/**
 * Compiles {@link LOOPBACK_CEILING_C} with `cc -O2` into a temporary directory, or resolves
 * `undefined` where no `cc` runs (the bench then reports {@link C_CEILING_UNAVAILABLE}). `flags`:
 * the page records' flags (`PAGE | CONTINUE`), passed in so the C program keeps no copy of the
 * wire's constants. `source`: the program (tests pass a broken one to see the check fail).
 */
export async function compileLoopbackCeiling(
  flags: number,
  source = LOOPBACK_CEILING_C,
): Promise<LoopbackCeiling | undefined> {
  try {
    await run('cc', ['--version']);
  } catch {
    return undefined;
  }
  let dir: string | undefined;
  let binary = '';
  try {
    dir = await mkdtemp(join(tmpdir(), 'dirtytrack-ceiling-'));
    const file = join(dir, 'loopback-ceiling.c');
    binary = join(dir, 'loopback-ceiling');
    await writeFile(file, source);
    await run('cc', ['-O2', '-o', binary, file]);
  } catch (cause) {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    throw new DirtytrackError('unsupported', `cc could not build the C ceiling: ${describe(cause)}`, {
      component: 'bench-migrate',
      cause,
    });
  }
  return {
    async run(mode, bytes) {
      let out: string;
      try {
        out = (
          await run(binary, [mode, String(bytes), String(flags)], {
            maxBuffer: 1 << 16,
            timeout: RUN_TIMEOUT_MS,
            killSignal: 'SIGKILL',
          })
        ).stdout;
      } catch (cause) {
        throw new DirtytrackError('internal', `the C ceiling (${mode}) failed: ${describe(cause)}`, {
          component: 'bench-migrate',
          cause,
        });
      }
      let r: CeilingRun;
      try {
        r = JSON.parse(out) as CeilingRun;
      } catch (cause) {
        throw new DirtytrackError(
          'internal',
          `the C ceiling (${mode}) printed ${JSON.stringify(out.slice(0, 80))}`,
          {
            component: 'bench-migrate',
            cause,
          },
        );
      }
      if (!(r.mbps > 0))
        throw new DirtytrackError('internal', `the C ceiling (${mode}) measured ${String(r.mbps)} Mbit/s`, {
          component: 'bench-migrate',
        });
      if (mode === 'records' && (r.pages !== bytes / 4096 || !r.verified))
        throw new DirtytrackError(
          'internal',
          `the C ceiling placed ${r.pages} of ${bytes / 4096} pages${r.verified ? '' : ', not equal to the sender'}`,
          { component: 'bench-migrate' },
        );
      return r;
    },
    close: () => rm(dir as string, { recursive: true, force: true }),
  };
}

/**
 * {@link compileLoopbackCeiling} for the bench: the built ceiling, or why there is none — no `cc`
 * ({@link C_CEILING_UNAVAILABLE}), or the compiler's complaint where `cc` could not build it (no C
 * library headers, say): the bench goes on without it, a yardstick and not one of its runs.
 */
export async function loopbackCeiling(
  flags: number,
  source = LOOPBACK_CEILING_C,
): Promise<LoopbackCeiling | string> {
  try {
    return (await compileLoopbackCeiling(flags, source)) ?? C_CEILING_UNAVAILABLE;
  } catch (error) {
    if (!(error instanceof DirtytrackError && error.code === 'unsupported')) throw error;
    return `unavailable: ${error.message.replace(/^\[dirtytrack\] \[[^\]]*\] /, '')}`;
  }
}

function describe(e: unknown): string {
  const stderr = (e as { stderr?: unknown }).stderr;
  if (typeof stderr === 'string' && stderr.trim() !== '') {
    // The first line that says what is wrong (a compiler's `error:` line), else the first.
    const lines = stderr.trim().split('\n');
    return (lines.find((l) => /\berror\b/i.test(l)) ?? lines[0]) as string;
  }
  return e instanceof Error ? e.message : String(e);
}
