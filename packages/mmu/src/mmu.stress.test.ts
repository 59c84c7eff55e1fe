import type { Worker } from 'node:worker_threads';
import { attachRWLock, Bitmap, createRWLock } from '@dirtytrack/core';
import { exitCodes, startWorker, terminateAll, waitUntil } from '@dirtytrack/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { CONTROL, controlWords, type VcpuWorkerData } from './__fixtures__/vcpu-layout.js';
import {
  createMmu,
  describeSpte,
  LEVEL_1G,
  LEVEL_4K,
  SPTE_DIRTY,
  SPTE_HOST_WRITABLE,
  SPTE_MMU_WRITABLE,
  SPTE_PRESENT,
  SPTE_WRITABLE,
  type BackingPageSize,
  type LoggingMode,
} from './index.js';

// Issue 4 acceptance: worker vCPUs write through a shared MMU while this thread plays the
// migration — enable logging, copy everything, then harvest (xchg the dirty bitmap), re-arm
// (write-protect + remote TLB flush) and copy the harvested pages, with logging switched off
// and on again in between. Once the vCPUs stop, a last harvest must leave the copy equal to guest
// memory word for word (reference/kvm.md §10: no lost writes, clear before read, TLB flush
// before completion), and the SPTEs must be intact. With `skipTlbFlush` the same run must lose
// writes, or the test could not tell.

const VCPU_WORKER = new URL('./__fixtures__/vcpu.worker.ts', import.meta.url);
const SEED = Number(process.env['MMU_STRESS_SEED'] ?? 0x5eed_0004);

interface StressConfig {
  readonly logging: LoggingMode;
  readonly backing: BackingPageSize;
  /** Slot size in 4 KiB pages (slot at guest-physical 0). */
  readonly pages: number;
  /** Int32 words of guest memory per page (1024 = the whole 4 KiB page). */
  readonly wordsPerPage: number;
  readonly vcpus: number;
  /** Enable → harvest rounds → disable (but the last cycle stays enabled). */
  readonly cycles: number;
  readonly rounds: number;
  /** Share of writes (out of 256) that go to each vCPU's hot set of 48 pages; the rest are uniform. */
  readonly hotShare: number;
  /**
   * Wall-time budget of the harvest phase: cycle k ends by `budgetMs × (k+1) / cycles` even if
   * rounds remain, so a loaded machine shortens the run instead of stretching it.
   */
  readonly budgetMs: number;
  readonly skipTlbFlush?: boolean;
  /** Intel PML: re-arm clears D, vCPUs log gfns into per-vCPU buffers drained on exits and kicks. */
  readonly pml?: boolean;
  /**
   * The sink sets bits under a lock held for read, and each harvest collects and re-arms (protect
   * + flush) holding it for write — the 'locked' bitmap reporter's order (rwlock-memcpy).
   */
  readonly sinkLock?: boolean;
  readonly seed: number;
}

interface Mismatch {
  page: number;
  word: number;
  memory: string;
  copy: string;
}

interface StressResult {
  seed: number;
  /** Worker start-up (tsx boot, attach), then the run from GO to the final check. */
  bootMs: number;
  ms: number;
  writes: number;
  reported: number;
  harvests: number;
  /** Harvests whose snapshot was not empty (they overlapped vCPU writes). */
  busyHarvests: number;
  harvestedPages: number;
  fullCopies: number;
  /** Main-thread time re-arming (protect + flush), copying pages, and between rounds. */
  rearmMs: number;
  copyMs: number;
  idleMs: number;
  lostPages: number;
  lostWords: number;
  firstMismatches: Mismatch[];
  stats: ReturnType<ReturnType<typeof createMmu>['stats']>;
  /** `level:bits` of every page's SPTE after the last harvest → pages. */
  sptes: Record<string, number>;
  /** Tables reachable from the root, from the levels `inspect` reports. */
  reachableTables: number;
  lock: { readers: number; waitingWriters: number; writer: boolean };
}

const hex = (x: number) => `0x${(x >>> 0).toString(16)}`;
const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function runStress(cfg: StressConfig): Promise<StressResult> {
  const { pages, wordsPerPage, vcpus } = cfg;
  const mmu = createMmu({
    vcpus,
    logging: cfg.logging,
    sharedTables: 2048,
    // A TLB entry per page (direct-mapped by gfn): a cached translation is never evicted by
    // another page, only by a flush — so every flush the protocol needs is load-bearing.
    tlbEntries: 2 ** Math.ceil(Math.log2(pages)),
    timeoutMs: 5_000,
    ...(cfg.skipTlbFlush === undefined ? {} : { skipTlbFlush: cfg.skipTlbFlush }),
    ...(cfg.pml === undefined ? {} : { pml: cfg.pml }),
  });
  mmu.setUserMemoryRegion({
    slot: 0,
    guestPhysAddr: 0,
    memorySize: pages * 4096,
    userspaceAddr: 0x7f00_0000_0000,
    backing: cfg.backing,
  });
  mmu.populate(0);
  const info = { id: 0, asId: 0, baseGfn: 0, pages };
  const descriptor = mmu.descriptor();
  const dirty = Bitmap.create(pages, { shared: true });
  const sinkLock = cfg.sinkLock === true ? createRWLock() : undefined;
  let ownerReported = 0; // Drains on this thread (none expected in the live plane, but legal).
  mmu.attach({
    markDirty(_slot, offsets, count) {
      for (let i = 0; i < count; i++) dirty.setAtomic(offsets[i] as number);
      ownerReported += count;
    },
  });
  const memory = new Int32Array(new SharedArrayBuffer(pages * wordsPerPage * 4));
  const copy = new Int32Array(pages * wordsPerPage);
  const control = new Int32Array(new SharedArrayBuffer(controlWords(vcpus) * 4));
  const workers = vcpuPool(vcpus);
  for (let v = 0; v < vcpus; v++) {
    const data: VcpuWorkerData = {
      descriptor,
      vcpu: v,
      seed: cfg.seed,
      memory: memory.buffer as SharedArrayBuffer,
      wordsPerPage,
      dirty: dirty.buffer as SharedArrayBuffer,
      control: control.buffer as SharedArrayBuffer,
      hotPages: 48,
      hotShare: cfg.hotShare,
      maxWrites: 20_000_000,
      maxMs: 15_000,
      haltEvery: 2048,
      haltMs: 0.5,
      ...(sinkLock === undefined ? {} : { sinkLock: sinkLock.buffer }),
    };
    workers[v]?.postMessage(data);
  }

  const snapshot = Bitmap.create(pages);
  const list = new Uint32Array(pages);
  const r = {
    harvests: 0,
    busyHarvests: 0,
    harvestedPages: 0,
    fullCopies: 0,
    rearmMs: 0,
    copyMs: 0,
    idleMs: 0,
  };
  const checkWorkers = () => {
    if (Atomics.load(control, CONTROL.FAILED) !== 0 || poolFailed()) {
      throw new Error(`a vCPU worker failed: ${String(pool?.error ?? 'see its error above')}`);
    }
  };
  const copyPage = (p: number) => {
    const from = p * wordsPerPage;
    copy.set(memory.subarray(from, from + wordsPerPage), from);
  };
  const copyAll = () => {
    const t = performance.now();
    copy.set(memory);
    r.fullCopies++;
    r.copyMs += performance.now() - t;
  };
  /** One harvest: xchg the bitmap into a snapshot, re-arm (protect + flush), copy those pages. */
  const harvest = (everything: boolean) => {
    mmu.syncDirtyLog(0); // KVM_GET_DIRTY_LOG: with PML, kick the vCPUs so their buffers drain.
    snapshot.clearAll();
    sinkLock?.writeLock();
    let t = performance.now();
    let n: number;
    try {
      // Under the sink's lock a plain copy would do; xchg keeps one code path for both.
      dirty.collectInto(snapshot, 'xchg');
      if (everything) snapshot.setAll(); // INITIALLY_SET: the first harvest after enable is all pages.
      n = snapshot.popcount();
      t = performance.now();
      if (n > 0) mmu.rearm(0, snapshot);
    } finally {
      sinkLock?.writeUnlock();
    }
    r.harvests++;
    if (n > 0 && !everything) r.busyHarvests++;
    r.harvestedPages += n;
    if (n === 0) return;
    const t1 = performance.now();
    r.rearmMs += t1 - t;
    if (everything) copyAll();
    for (let from = 0; !everything;) {
      const got = snapshot.collectSetBits(from, list);
      for (let i = 0; i < got; i++) copyPage(list[i] as number);
      if (got < list.length) break;
      from = (list[got - 1] as number) + 1;
    }
    r.copyMs += performance.now() - t1;
  };
  const enable = () => {
    mmu.enableLogging(info);
    if (cfg.logging === 'lazy') harvest(true);
    else copyAll(); // Every write that completes from now on is logged.
  };

  let t0 = performance.now();
  try {
    await waitUntil(
      () =>
        Atomics.load(control, CONTROL.READY) === vcpus ||
        Atomics.load(control, CONTROL.FAILED) > 0 ||
        poolFailed(),
      20_000,
      'vCPUs to attach',
    );
    checkWorkers();
    const bootMs = Math.round(performance.now() - t0);
    t0 = performance.now();
    Atomics.store(control, CONTROL.GO, 1);
    Atomics.notify(control, CONTROL.GO);
    for (let cycle = 0; cycle < cfg.cycles; cycle++) {
      const cycleEnd = t0 + (cfg.budgetMs * (cycle + 1)) / cfg.cycles;
      enable();
      for (let round = 0; round < cfg.rounds && (round < 3 || performance.now() < cycleEnd); round++) {
        const t = performance.now();
        await tick(1); // Let the vCPUs write (and the event loop see worker errors).
        r.idleMs += performance.now() - t;
        checkWorkers();
        harvest(false);
      }
      if (cycle < cfg.cycles - 1) {
        mmu.disableLogging(0);
        await tick(5); // Unlogged writes: the next enable must copy everything again.
        checkWorkers();
      }
    }
    Atomics.store(control, CONTROL.STOP, 1);
    // Join: every vCPU has left guest mode and published its counts (or one threw).
    await waitUntil(
      () => Atomics.load(control, CONTROL.DONE) + Atomics.load(control, CONTROL.FAILED) === vcpus,
      20_000,
      'vCPUs to stop',
    );
    checkWorkers();
    harvest(false); // The vCPUs are gone: this collects whatever they wrote last.
    const ms = Math.round(performance.now() - t0);

    let lostPages = 0;
    let lostWords = 0;
    const firstMismatches: Mismatch[] = [];
    for (let p = 0; p < pages; p++) {
      let bad = 0;
      for (let w = p * wordsPerPage; w < (p + 1) * wordsPerPage; w++) {
        if (memory[w] === copy[w]) continue;
        bad++;
        if (firstMismatches.length < 8) {
          firstMismatches.push({
            page: p,
            word: w - p * wordsPerPage,
            memory: hex(memory[w] as number),
            copy: hex(copy[w] as number),
          });
        }
      }
      lostWords += bad;
      if (bad > 0) lostPages++;
    }

    const sptes: Record<string, number> = {};
    const splitBelow1G = new Set<number>();
    const splitBelow2M = new Set<number>();
    for (let p = 0; p < pages; p++) {
      const { spte, level } = mmu.inspect(0, p);
      const key = `${level === LEVEL_4K ? '4K' : level === LEVEL_1G ? '1G' : '2M'}:${describeSpte(spte)}`;
      sptes[key] = (sptes[key] ?? 0) + 1;
      if (level < LEVEL_1G) splitBelow1G.add(p >>> 18);
      if (level === LEVEL_4K) splitBelow2M.add(p >>> 9);
    }
    let writes = 0;
    let reported = ownerReported;
    for (let v = 0; v < vcpus; v++) {
      writes += Atomics.load(control, CONTROL.PER_VCPU + v * CONTROL.PER_VCPU_WORDS);
      reported += Atomics.load(control, CONTROL.PER_VCPU + v * CONTROL.PER_VCPU_WORDS + 1);
    }
    return {
      seed: cfg.seed,
      bootMs,
      ms,
      writes,
      reported,
      ...r,
      lostPages,
      lostWords,
      firstMismatches,
      stats: mmu.stats(),
      sptes,
      reachableTables: splitBelow1G.size + splitBelow2M.size,
      lock: attachRWLock(descriptor.lock, 0).inspect(),
    };
  } catch (error) {
    Atomics.store(control, CONTROL.STOP, 1);
    await dropPool(); // The vCPUs may be stuck or dead: the next run starts fresh threads.
    throw error;
  }
}

// The vCPU threads, shared by the runs of this file (booting a .ts worker through tsx costs
// about a second of CPU each): every run posts its MMU descriptor and buffers to each of them.
interface Pool {
  workers: Worker[];
  exits: Promise<number[]>;
  error?: unknown;
}
let pool: Pool | undefined;
const poolFailed = () => pool?.error !== undefined;

function vcpuPool(vcpus: number): Worker[] {
  if (pool !== undefined && pool.workers.length !== vcpus) throw new Error('one pool size per file');
  if (pool === undefined) {
    const workers = Array.from({ length: vcpus }, () => startWorker(VCPU_WORKER, null));
    const exits = exitCodes(workers);
    const p: Pool = { workers, exits };
    exits.catch((error: unknown) => {
      p.error = error ?? 'a vCPU thread died'; // awaited in afterAll unless a run dropped the pool
    });
    pool = p;
  }
  return pool.workers;
}

async function dropPool(): Promise<void> {
  const p = pool;
  pool = undefined;
  if (p !== undefined) await terminateAll(p.workers);
}

afterAll(async () => {
  const p = pool;
  if (p === undefined) return;
  for (const w of p.workers) w.postMessage('exit');
  try {
    expect(await p.exits).toEqual(p.workers.map(() => 0)); // each vCPU thread exits cleanly
  } finally {
    await dropPool();
  }
});

/** A 4 KiB leaf after the last harvest: present, not writable (re-armed), MMU- and host-writable. */
const PROTECTED_4K = `4K:${describeSpte(SPTE_PRESENT | SPTE_MMU_WRITABLE | SPTE_HOST_WRITABLE | SPTE_DIRTY)}`;
/** The same under PML: re-armed by clearing D, so writable and clean. */
const CLEAN_4K = `4K:${describeSpte(SPTE_PRESENT | SPTE_WRITABLE | SPTE_MMU_WRITABLE | SPTE_HOST_WRITABLE)}`;

function summary(label: string, r: StressResult): string {
  const { firstMismatches, sptes, stats, ...rest } = r;
  return `${label}: ${JSON.stringify({ ...rest, sptes, stats, firstMismatches })} (MMU_STRESS_SEED=${r.seed} reproduces the draws)`;
}

/** Runs `cfg` and checks everything the acceptance asks for; prints the seed on any failure. */
async function expectNoLostWrite(cfg: StressConfig): Promise<StressResult> {
  const r = await runStress(cfg);
  const label = `${cfg.logging}${cfg.pml === true ? ' + PML' : ''} on ${cfg.backing}, ${cfg.vcpus} vCPUs, seed ${cfg.seed}`;
  console.info(summary(label, r));
  const why = `${label} (rerun with MMU_STRESS_SEED=${cfg.seed})`;
  // No lost write: the migration copy equals guest memory, every word of every page.
  expect({ lostPages: r.lostPages, lostWords: r.lostWords, firstMismatches: r.firstMismatches }, why).toEqual(
    {
      lostPages: 0,
      lostWords: 0,
      firstMismatches: [],
    },
  );
  // The run really raced: the vCPUs wrote and faulted while harvests re-armed pages.
  expect(r.writes, why).toBe(r.stats.writes);
  expect(r.reported, why).toBe(r.stats.reported); // every W 0→1 in a logging slot reached the sink
  expect(r.busyHarvests, why).toBeGreaterThanOrEqual(cfg.cycles * 3);
  expect(r.stats.rearmed, why).toBe(r.harvestedPages);
  // Re-armed pages trap again: by a fault (write-protect), or by PML logging the D 0→1 write.
  expect(cfg.pml === true ? r.stats.pmlLogged : r.stats.fastFaults, why).toBeGreaterThan(0);
  expect(r.stats.tlbHits, why).toBeGreaterThan(0);
  // Harvested bits are reports coalesced per page (plus the INITIALLY_SET harvests).
  const initiallySet = cfg.logging === 'lazy' ? cfg.cycles * cfg.pages : 0;
  expect(r.harvestedPages - initiallySet, why).toBeLessThanOrEqual(r.reported);
  // No SPTE corruption. With the vCPUs stopped and the last harvest re-armed, no leaf is
  // writable (each W 0→1 was reported and re-armed) and none is frozen or a dangling table;
  // eager-split and lazy (split-on-clear) leave only 4 KiB leaves, write-protect keeps the huge
  // pages nobody wrote (protected, still MMU-writable: the fault splits them).
  const allowed = new Set([
    cfg.pml === true ? CLEAN_4K : PROTECTED_4K,
    ...(cfg.logging === 'write-protect' ? [`2M:P|MW|HW|D|huge`] : []),
  ]);
  const unexpected = Object.fromEntries(Object.entries(r.sptes).filter(([k]) => !allowed.has(k)));
  expect(unexpected, why).toEqual({});
  expect(Object.values(r.sptes).reduce((a, b) => a + b, 0)).toBe(cfg.pages);
  expect(r.stats.tables, why).toBe(r.reachableTables); // no table leaked or freed while linked
  expect(r.lock, why).toEqual({ readers: 0, waitingWriters: 0, writer: false });
  return r;
}

describe('MMU stress: 4 worker vCPUs write while this thread enables, harvests, re-arms and disables logging', () => {
  // 15/16 of the writes go to a hot set that stays in the TLB across harvests (what a missing
  // flush needs to lose writes), the rest anywhere in the slot.
  const base = { vcpus: 4, cycles: 5, rounds: 20, hotShare: 240, budgetMs: 2_000, seed: SEED } as const;
  /** 32 MiB on 2M backing, whole 4 KiB pages, eager-split: the runs below vary one thing each. */
  const eagerSplit2M = {
    ...base,
    logging: 'eager-split',
    backing: '2M',
    pages: 8192,
    wordsPerPage: 1024,
  } as const;

  it('eager-split on 2M backing (32 MiB, whole 4 KiB pages): the copy equals guest memory; SPTEs intact', async () => {
    await expectNoLostWrite(eagerSplit2M);
  });

  it("write-protect on 2M backing (32 MiB): huge pages split by the vCPUs' faults; nothing lost", async () => {
    await expectNoLostWrite({
      ...base,
      logging: 'write-protect',
      backing: '2M',
      pages: 8192,
      wordsPerPage: 1024,
    });
  });

  it('lazy (INITIALLY_SET, split on clear) on a 1G page (1 GiB slot, 16 words a page): nothing lost', async () => {
    // 1/64 uniform writes: over 262,144 pages nearly each is a new dirty page to re-arm.
    await expectNoLostWrite({
      ...base,
      logging: 'lazy',
      backing: '1G',
      pages: 262_144,
      wordsPerPage: 16,
      hotShare: 252,
    });
  });

  it('eager-split with PML on 2M backing (32 MiB): D-bit re-arm, buffered gfns drained by kicks; nothing lost', async () => {
    await expectNoLostWrite({ ...eagerSplit2M, pml: true });
  });

  it('eager-split with a locked sink (bits set under a read lock; harvest and re-arm under the write lock): no deadlock, nothing lost', async () => {
    // A vCPU hands its pages to the sink outside guest mode: a flush that waited for it while it
    // waits for the sink's lock would never end (the MMU's 5 s acknowledgement timeout).
    await expectNoLostWrite({ ...eagerSplit2M, sinkLock: true });
  });

  it('eager-split with PML and a locked sink: a PML drain waiting for the lock does not hold up a flush; nothing lost', async () => {
    // Every exit (a slow fault, a kick, a full buffer) drains the vCPU's PML buffer into the sink:
    // a kick waits for that drain (the harvest must find the gfns), a flush must not (the flusher
    // may hold the sink's lock). Before VCPU_DRAINING this run hit the 5 s flush timeout.
    await expectNoLostWrite({ ...eagerSplit2M, pml: true, sinkLock: true });
  });

  it('negative control: the same eager-split run with skipTlbFlush loses writes (stale writable TLB entries)', async () => {
    const cfg = { ...eagerSplit2M, skipTlbFlush: true } as const;
    const r = await runStress(cfg);
    console.info(summary('negative control (skipTlbFlush)', r));
    expect(r.lostPages, `seed ${cfg.seed}: skipping the flush must lose pages`).toBeGreaterThan(0);
    expect(r.stats.writes).toBe(r.writes);
    expect(r.lock).toEqual({ readers: 0, waitingWriters: 0, writer: false });
  });
});
