import { Bitmap, DEFAULT_COST_MODEL, type DirtySink, type MemslotInfo } from '@dirtytrack/core';
import {
  blockUntil,
  exited,
  expectDirtytrackError,
  assertProperty,
  startWorker,
  waitUntil,
} from '@dirtytrack/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  PAGEMAP_SCAN,
  PAGE_IS,
  PM_SCAN,
  UFFDIO,
  UFFDIO_WRITEPROTECT_MODE,
  UFFD_EVENT_PAGEFAULT,
  UFFD_FEATURE,
  UFFD_MSG_BYTES,
  UFFD_PAGEFAULT_FLAG,
  attachUffdWpTracker,
  createUffdWpTracker,
  type UffdWpTracker,
} from './uffd-wp-tracker.js';

const slot = { id: 2, asId: 0, baseGfn: 0x100, pages: 100 };
const SEED = Number(process.env['DIRTYTRACK_PROPERTY_SEED'] ?? 20261125);

function sinkLog(): DirtySink & { calls: { slot: number; pages: number[]; vcpu: number }[] } {
  const calls: { slot: number; pages: number[]; vcpu: number }[] = [];
  return {
    calls,
    markDirty: (s, offsets, count, vcpu) =>
      calls.push({ slot: s, pages: [...offsets.subarray(0, count)], vcpu }),
  };
}

/** Reads every queued message as plain records (test helper). */
function drain(t: UffdWpTracker): { flags: number; slot: number; page: number; ptid: number }[] {
  const out = new Uint32Array(4 * 16);
  const all: { flags: number; slot: number; page: number; ptid: number }[] = [];
  for (let n = t.readFaults(out); n > 0; n = t.readFaults(out)) {
    for (let k = 0; k < n; k++) {
      all.push({
        flags: out[k * 4] as number,
        slot: out[k * 4 + 1] as number,
        page: out[k * 4 + 2] as number,
        ptid: out[k * 4 + 3] as number,
      });
    }
  }
  return all;
}

const ioc = (dir: number, type: number, nr: number, size: number): number =>
  ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;

describe('uffd-wp constants (reference/kvm.md §7, §9)', () => {
  it('ioctl numbers follow _IOC(dir, type, nr, size)', () => {
    expect(UFFDIO).toEqual({
      REGISTER: ioc(3, 0xaa, 0x00, 32),
      UNREGISTER: ioc(2, 0xaa, 0x01, 16),
      WAKE: ioc(2, 0xaa, 0x02, 16),
      COPY: ioc(3, 0xaa, 0x03, 40),
      ZEROPAGE: ioc(3, 0xaa, 0x04, 32),
      MOVE: ioc(3, 0xaa, 0x05, 40),
      WRITEPROTECT: ioc(3, 0xaa, 0x06, 24),
      CONTINUE: ioc(3, 0xaa, 0x07, 32),
      API: ioc(3, 0xaa, 0x3f, 24),
    });
    expect(PAGEMAP_SCAN).toBe(ioc(3, 0x66, 0x10, 96));
    expect(UFFDIO.COPY).toBe(0xc028aa03);
  });

  it('feature bits are 1<<0 … 1<<16 (this host reports 0x1ffff)', () => {
    expect(Object.values(UFFD_FEATURE).reduce((a, b) => a | b, 0)).toBe(0x1ffff);
    expect(UFFD_FEATURE.WP_ASYNC).toBe(0x8000);
    expect(PAGE_IS.WRITTEN).toBe(2);
    expect(PM_SCAN).toEqual({ WP_MATCHING: 1, CHECK_WPASYNC: 2 });
  });
});

describe('uffd-wp tracker, sync mode (model plane)', () => {
  it('queues one uffd_msg per fault, reports the pages, and resumes each writer only once unprotected', () => {
    const resumed: [number, number, number, number][] = [];
    const t = createUffdWpTracker({ onResume: (...a) => resumed.push(a) });
    const sink = sinkLog();
    t.attach(sink);
    expect(t.enableLogging(slot)).toBe(100);
    const seen: { flags: number; slot: number; page: number; ptid: number }[][] = [];
    t.setFaultHandler((tr) => {
      const msgs = drain(tr);
      seen.push(msgs);
      for (const m of msgs) {
        expect(tr.isProtected(m.slot, m.page)).toBe(true); // the writer is still blocked
        expect(tr.unprotect(m.slot, m.page, 1)).toBe(1);
      }
    });
    expect(t.write(3, 2, Uint32Array.of(7, 5, 7, 99, 5), 5)).toBe(3);
    expect(seen).toEqual([
      [{ flags: UFFD_PAGEFAULT_FLAG.WRITE | UFFD_PAGEFAULT_FLAG.WP, slot: 2, page: 7, ptid: 3 }],
      [{ flags: 3, slot: 2, page: 5, ptid: 3 }],
      [{ flags: 3, slot: 2, page: 99, ptid: 3 }],
    ]);
    expect(resumed).toEqual([
      [3, 2, 7, 0],
      [3, 2, 5, 1],
      [3, 2, 99, 3],
    ]);
    expect(sink.calls).toEqual([{ slot: 2, pages: [7, 5, 99], vcpu: 3 }]);
    expect(t.write(0, 2, Uint32Array.of(5, 7, 99), 3)).toBe(0);
    expect(t.protection(2).popcount()).toBe(97);
    const mask = Bitmap.create(100);
    mask.set(7);
    mask.set(8); // still protected: not counted
    expect(t.rearm(2, mask)).toBe(1);
    expect(t.write(1, 2, Uint32Array.of(5, 7), 2)).toBe(1);
    expect(t.stats()).toEqual({
      writes: 10,
      faults: 4,
      reported: 4,
      rearmed: 1,
      messages: 4,
      messagesRead: 4,
      scans: 0,
      waits: 0,
      flushWaits: 0,
    });
    expect(t.vcpuCostNs?.(DEFAULT_COST_MODEL)).toBe(4 * (3_000 + 2_000));
  });

  it('read(2) returns struct uffd_msg: event 0x12 @0, flags @8, address @16, ptid @24', () => {
    const t = createUffdWpTracker();
    t.attach(sinkLog());
    t.enableLogging(slot);
    const buf = new Uint8Array(3 * UFFD_MSG_BYTES);
    let got = 0;
    t.setFaultHandler((tr) => {
      got = tr.read(buf);
      tr.unprotect(2, 0, 100);
    });
    t.write(5, 2, Uint32Array.of(42), 1);
    expect(got).toBe(32);
    const v = new DataView(buf.buffer);
    expect(v.getUint8(0)).toBe(UFFD_EVENT_PAGEFAULT);
    expect(v.getBigUint64(8, true)).toBe(3n);
    expect(v.getBigUint64(16, true)).toBe(BigInt((0x100 + 42) * 4096));
    expect(v.getUint32(24, true)).toBe(5);
    expect(t.read(buf)).toBe(0); // EAGAIN
  });

  it('DONTWAKE unprotects without waking; UFFDIO_WAKE then releases the writer', () => {
    const resumed: number[] = [];
    const t = createUffdWpTracker({ onResume: (_v, _s, page) => resumed.push(page) });
    t.attach(sinkLog());
    t.enableLogging(slot);
    t.setFaultHandler((tr) => {
      const page = drain(tr)[0]?.page ?? -1;
      expect(tr.writeProtect(2, page, 1, UFFDIO_WRITEPROTECT_MODE.DONTWAKE)).toBe(1);
      expect(resumed).toEqual([]); // unprotected but still asleep
      tr.wake(2, page, 1);
    });
    t.write(0, 2, Uint32Array.of(10), 1);
    expect(resumed).toEqual([10]);
  });

  it('a writer woken while still protected faults again (a second message)', () => {
    const t = createUffdWpTracker();
    t.attach(sinkLog());
    t.enableLogging(slot);
    const pages: number[] = [];
    let calls = 0;
    t.setFaultHandler((tr) => {
      pages.push(...drain(tr).map((m) => m.page));
      if (++calls === 1) tr.wake(2, 0, 100);
      else tr.unprotect(2, 11, 1);
    });
    expect(t.write(0, 2, Uint32Array.of(11), 1)).toBe(1);
    expect(pages).toEqual([11, 11]);
    expect(t.stats().messages).toBe(2);
  });

  it('a reader that neither unprotects nor wakes would block the writer forever: typed error', () => {
    const t = createUffdWpTracker();
    t.attach(sinkLog());
    t.enableLogging(slot);
    t.setFaultHandler(() => undefined);
    expectDirtytrackError(
      () => t.write(0, 2, Uint32Array.of(1), 1),
      'uffd-wp',
      'invalid-state',
      /nobody woke it/,
    );
  });

  it('without a reader installed, the default one just unprotects (plain dirty tracking)', () => {
    const t = createUffdWpTracker();
    const sink = sinkLog();
    t.attach(sink);
    t.enableLogging(slot);
    expect(t.write(0, 2, Uint32Array.of(3, 4, 3), 3)).toBe(2);
    expect(t.pendingFaults()).toBe(0);
    expect(sink.calls).toEqual([{ slot: 2, pages: [3, 4], vcpu: 0 }]);
  });

  it('register protects nothing; protect/unprotect count what changed; unregistering stops trapping', () => {
    const t = createUffdWpTracker();
    t.attach(sinkLog());
    t.register(slot);
    expect(t.registered(2)).toBe(true);
    expect(t.write(0, 2, Uint32Array.of(1), 1)).toBe(0);
    expect(t.protect(2, 30, 40)).toBe(40);
    expect(t.protect(2, 0, 100)).toBe(60);
    expect(t.unprotect(2, 31, 33)).toBe(33);
    expect(t.protection(2).popcount()).toBe(67);
    t.disableLogging(2);
    expect(t.registered(2)).toBe(false);
    expect(t.write(0, 2, Uint32Array.of(1), 1)).toBe(0);
  });

  it('rejects misuse with typed errors (errno where the kernel has one)', () => {
    const t = createUffdWpTracker();
    t.enableLogging(slot);
    expectDirtytrackError(() => t.write(0, 2, Uint32Array.of(1), 1), 'uffd-wp', 'invalid-state', /no sink/);
    t.attach(sinkLog());
    expect(
      expectDirtytrackError(() => t.write(0, 2, Uint32Array.of(100), 1), 'uffd-wp', 'out-of-range').errno,
    ).toBe('EFAULT');
    expect(expectDirtytrackError(() => t.enableLogging(slot), 'uffd-wp', 'invalid-state').errno).toBe(
      'EBUSY',
    );
    expect(expectDirtytrackError(() => t.protect(2, 90, 11), 'uffd-wp', 'out-of-range').errno).toBe('EINVAL');
    expect(expectDirtytrackError(() => t.protect(9, 0, 1), 'uffd-wp', 'invalid-state').errno).toBe('EINVAL');
    expect(expectDirtytrackError(() => t.writeProtect(2, 0, 1, 3), 'uffd-wp', 'invalid-argument').errno).toBe(
      'EINVAL',
    );
    expect(
      expectDirtytrackError(
        () => t.pagemapScan({ slot: 2, out: new Uint32Array(4), checkWpAsync: true }),
        'uffd-wp',
        'invalid-state',
      ).errno,
    ).toBe('EPERM');
    expectDirtytrackError(() => t.share(), 'uffd-wp', 'invalid-state', /shared: true/);
    expectDirtytrackError(() => createUffdWpTracker({ queueEntries: 3 }), 'uffd-wp', 'invalid-argument');
    expectDirtytrackError(() => attachUffdWpTracker({}), 'uffd-wp', 'invalid-argument');
    // A descriptor without the guest-mode words (what flushes wait on) is refused too.
    const { guest: _guest, ...noGuest } = createUffdWpTracker({ shared: true }).descriptor();
    expectDirtytrackError(() => attachUffdWpTracker(noGuest), 'uffd-wp', 'invalid-argument');
  });

  it('share() names the AttachSpec factory; slots registered after share() are refused', () => {
    const t = createUffdWpTracker({ shared: true });
    t.enableLogging(slot);
    const spec = t.share();
    expect(spec.module).toBe('@dirtytrack/trackers');
    expect(spec.factory).toBe('attachUffdWpTracker');
    const vt = attachUffdWpTracker(spec.data);
    const sink = sinkLog();
    vt.attach(sink);
    t.unprotect(2, 0, 50); // pages 0..49 saved; the attached view sees it
    expect(vt.write(4, 2, Uint32Array.of(10, 20), 2)).toBe(0);
    expectDirtytrackError(
      () => t.enableLogging({ ...slot, id: 3 }),
      'uffd-wp',
      'invalid-state',
      /after share\(\)/,
    );
    t.disableLogging(2);
    t.enableLogging(slot); // the same slot again is fine: workers hold its buffer
    expect(t.stats().writes).toBe(2);
  });

  it('slots allocated up front can start logging after share()', () => {
    const t = createUffdWpTracker({ shared: true, slots: [slot] });
    expect(t.registered(2)).toBe(false);
    const vt = attachUffdWpTracker(t.share().data);
    vt.attach(sinkLog());
    expect(vt.write(0, 2, Uint32Array.of(1), 1)).toBe(0); // not logging yet
    expect(t.enableLogging(slot)).toBe(100);
    expect(t.isProtected(2, 1)).toBe(true);
  });

  it('syncDirtyLog runs the uffd reader: queued faults are served and their pages released', () => {
    const t = createUffdWpTracker({ skipFaultWait: true });
    const sink = sinkLog();
    t.attach(sink);
    t.enableLogging(slot);
    expect(t.write(0, 2, Uint32Array.of(4, 6), 2)).toBe(2);
    expect(t.pendingFaults()).toBe(2);
    expect(t.isProtected(2, 4)).toBe(true);
    t.syncDirtyLog?.(2);
    expect(t.pendingFaults()).toBe(0);
    expect(t.protection(2).popcount()).toBe(98);
    expect(sink.calls).toEqual([{ slot: 2, pages: [4, 6], vcpu: 0 }]);
  });
});

describe('uffd-wp tracker, sync mode (a worker vCPU)', () => {
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: 64 };

  /**
   * A tracker with no event-loop reader (each test answers the faults itself; an 8 s limit) and a
   * worker vCPU in guest mode that writes `pages` as one batch, then posts 'stored'.
   */
  const batchWorker = (pages: number[], writable: number[] = []) => {
    const t = createUffdWpTracker({
      shared: true,
      slots: [slot],
      reader: 'none',
      waitTimeoutMs: 8000,
      waitSliceMs: 10,
    });
    t.attach({ markDirty() {} });
    t.enableLogging(slot);
    for (const p of writable) t.unprotect(0, p, 1);
    const worker = startWorker(new URL('./__fixtures__/uffd-refault.worker.ts', import.meta.url), {
      descriptor: t.descriptor(),
      pages,
    });
    let isStored = false;
    const stored = new Promise<string>((resolve, reject) => {
      worker.once('message', (m: string) => {
        isStored = true;
        resolve(m);
      });
      worker.once('error', reject);
    });
    const msgs = new Uint32Array(16);
    /** The next fault message's page. */
    const readOne = async (): Promise<number> => {
      await waitUntil(() => t.stats().messages > t.stats().messagesRead, 10_000, 'a fault message');
      expect(t.readFaults(msgs)).toBe(1);
      return msgs[2] as number;
    };
    return { t, worker, stored, readOne, isStored: () => isStored };
  };

  it('re-protected after the reader answered: the blocked vCPU faults again, and a second answer releases it', async () => {
    const { t, worker, stored, readOne } = batchWorker([5]);
    try {
      expect(await readOne()).toBe(5);
      // The answer, then a re-protect before the vCPU could see it: DONTWAKE unprotects without
      // waking, and the page is protected again at once (a harvest re-armed it).
      t.writeProtect(0, 5, 1, UFFDIO_WRITEPROTECT_MODE.DONTWAKE);
      t.writeProtect(0, 5, 1, UFFDIO_WRITEPROTECT_MODE.WP);
      // The kernel's woken faulter retries and faults anew: a second message for the same page.
      expect(await readOne()).toBe(5);
      t.unprotect(0, 5, 1);
      expect(await stored).toBe('stored');
      expect([t.stats().messages, t.stats().faults]).toEqual([2, 2]);
    } finally {
      await worker.terminate();
    }
  }, 20_000);

  it('a page of the batch re-protected while the vCPU slept on another: it faults on it again before its store', async () => {
    // Page 3 is writable: the batch [3, 7] passes it and faults on 7.
    const { t, worker, stored, readOne, isStored } = batchWorker([3, 7], [3]);
    try {
      expect(await readOne()).toBe(7);
      // While the vCPU sleeps on 7 (out of guest mode, so this flush does not wait for it), a
      // harvest re-protects 3, whose store has not retired yet. Then 7 is answered. (The message
      // is queued just before the vCPU leaves guest mode to sleep: wait for the sleep, or on a
      // loaded machine the flush can catch it in between and wait for it.)
      await waitUntil(() => t.stats().waits > 0, 10_000, 'the vCPU asleep on page 7');
      expect(t.protect(0, 3, 1)).toBe(1);
      t.unprotect(0, 7, 1);
      // Back in guest mode the vCPU checks its batch again: 3 faults anew before any store.
      expect(await readOne()).toBe(3);
      expect(isStored()).toBe(false);
      t.unprotect(0, 3, 1);
      expect(await stored).toBe('stored');
      expect([t.stats().messages, t.stats().faults, t.stats().flushWaits]).toEqual([2, 2, 0]);
    } finally {
      await worker.terminate();
    }
  }, 20_000);
});

describe('uffd-wp tracker, async mode (WP_ASYNC + PAGEMAP_SCAN)', () => {
  it('resolves faults in the kernel: no message, no report; WRITTEN = written since last (re)protect', () => {
    const t = createUffdWpTracker({ mode: 'async' });
    const sink = sinkLog();
    t.attach(sink);
    t.enableLogging(slot);
    expect(t.write(0, 2, Uint32Array.of(64, 3, 64, 33), 4)).toBe(3);
    expect(t.pendingFaults()).toBe(0);
    expect(sink.calls).toEqual([]);
    const out = new Uint32Array(10);
    expect(t.pagemapScan({ slot: 2, out })).toEqual({ count: 3, walkEnd: 100 });
    expect([...out.subarray(0, 3)]).toEqual([3, 33, 64]);
    // Without WP_MATCHING the scan has no side effect.
    expect(t.pagemapScan({ slot: 2, out, wpMatching: true, checkWpAsync: true })).toEqual({
      count: 3,
      walkEnd: 100,
    });
    expect(t.pagemapScan({ slot: 2, out, wpMatching: true })).toEqual({ count: 0, walkEnd: 100 });
    expect(t.write(0, 2, Uint32Array.of(33), 1)).toBe(1);
    expect(t.pagemapScan({ slot: 2, out, start: 32, end: 40 })).toEqual({ count: 1, walkEnd: 40 });
    expect(out[0]).toBe(33);
    expect(t.stats()).toMatchObject({ writes: 5, faults: 4, messages: 0, scans: 4 });
    expect(t.vcpuCostNs?.(DEFAULT_COST_MODEL)).toBe(4 * 1_500);
  });

  it('stops at max_pages and re-protects only what it reported; walk_end resumes the walk', () => {
    const t = createUffdWpTracker({ mode: 'async' });
    t.attach(sinkLog());
    t.enableLogging(slot);
    t.write(0, 2, Uint32Array.of(1, 2, 3, 40, 41, 99), 6);
    const out = new Uint32Array(8);
    expect(t.pagemapScan({ slot: 2, out, wpMatching: true, maxPages: 4 })).toEqual({ count: 4, walkEnd: 41 });
    expect([...out.subarray(0, 4)]).toEqual([1, 2, 3, 40]);
    expect(t.isProtected(2, 41)).toBe(false);
    expect(t.pagemapScan({ slot: 2, out, wpMatching: true, start: 41 })).toEqual({ count: 2, walkEnd: 100 });
    expect([...out.subarray(0, 2)]).toEqual([41, 99]);
    expect(t.protection(2).popcount()).toBe(100);
  });

  it('syncDirtyLog scans with WP_MATCHING into the sink (what a harvest calls first)', () => {
    const t = createUffdWpTracker({ mode: 'async' });
    const sink = sinkLog();
    t.attach(sink);
    t.enableLogging(slot);
    t.write(1, 2, Uint32Array.of(9, 8), 2);
    t.syncDirtyLog?.(2);
    t.syncDirtyLog?.();
    expect(sink.calls).toEqual([{ slot: 2, pages: [8, 9], vcpu: -1 }]);
    expect(t.stats().reported).toBe(2);
  });

  it(`property (§10.12, seed ${SEED}): a scan reports exactly the pages written since their last (re)protect`, async () => {
    await assertProperty(
      fc.property(
        fc.integer({ min: 1, max: 200 }),
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant('write' as const), pages: fc.array(fc.nat(), { maxLength: 30 }) }),
            fc.record({ op: fc.constant('scan' as const), room: fc.integer({ min: 1, max: 50 }) }),
            fc.record({ op: fc.constant('rearm' as const), pages: fc.array(fc.nat(), { maxLength: 10 }) }),
          ),
          { maxLength: 40 },
        ),
        (pages, ops) => {
          const t = createUffdWpTracker({ mode: 'async' });
          t.attach(sinkLog());
          t.enableLogging({ id: 0, asId: 0, baseGfn: 0, pages });
          const written = new Set<number>();
          for (const o of ops) {
            if (o.op === 'write') {
              const offs = Uint32Array.from(o.pages, (p) => p % pages);
              t.write(0, 0, offs, offs.length);
              for (const p of offs) written.add(p);
            } else if (o.op === 'rearm') {
              const mask = Bitmap.create(pages);
              for (const p of o.pages) mask.set(p % pages);
              t.rearm(0, mask);
              for (const p of o.pages) written.delete(p % pages);
            } else {
              // A full walk in chunks of `room`, continuing from walk_end.
              const out = new Uint32Array(o.room);
              const got: number[] = [];
              for (let start = 0; start < pages;) {
                const r = t.pagemapScan({ slot: 0, start, out, wpMatching: true });
                got.push(...out.subarray(0, r.count));
                start = r.walkEnd;
              }
              expect(got).toEqual([...written].sort((a, b) => a - b));
              written.clear();
            }
          }
        },
      ),
      300,
      { seed: SEED },
    );
  });
});

// The conformance suites (describeTracker with dirty_log_test) run in uffd-wp.conformance.test.ts.

describe('uffd-wp tracker, the remote TLB flush after a re-protect (a worker vCPU)', () => {
  const slot: MemslotInfo = { id: 0, asId: 0, baseGfn: 0, pages: 64 };
  const HOLD_MS = 300;

  const inflight = (t: UffdWpTracker, next: number | undefined) => {
    const memory = new SharedArrayBuffer(slot.pages * 4096);
    const flags = new Int32Array(new SharedArrayBuffer(16));
    const worker = startWorker(new URL('./__fixtures__/uffd-inflight.worker.ts', import.meta.url), {
      descriptor: t.descriptor(),
      memory,
      flags: flags.buffer,
      page: 9,
      next,
      holdMs: HOLD_MS,
    });
    return { memory: new Int32Array(memory), flags, worker };
  };

  it('a WP_MATCHING scan returns only once a store let through before it has retired; then a copy holds it', async () => {
    const t = createUffdWpTracker({ mode: 'async', shared: true, slots: [slot] });
    t.enableLogging(slot);
    const { memory, flags, worker } = inflight(t, 10);
    try {
      blockUntil(flags, 0, 1, 3, 10_000, 'the write let through');
      expect(Atomics.load(flags, 1)).toBe(0); // The store is still in flight...
      const out = new Uint32Array(64);
      expect(t.pagemapScan({ slot: 0, out, wpMatching: true })).toEqual({ count: 1, walkEnd: 64 });
      expect(out[0]).toBe(9);
      // ...and the scan's flush waited for it: copying the page now catches the store. Without
      // the flush the copy would hold 0 and the page stay protected, its new content never sent.
      expect(Atomics.load(flags, 1)).toBe(1);
      expect(memory[9 * 1024]).toBe(0x5eed);
      expect(t.stats().flushWaits).toBe(1);
      expect(await exited(worker)).toBe(0);
      // The vCPU left guest mode: a re-protect no longer waits for it.
      expect(t.protect(0, 0, 64)).toBe(1); // Page 10, its last write (page 9 the scan re-protected).
      expect(t.stats().flushWaits).toBe(1);
    } finally {
      await worker.terminate();
    }
  }, 20_000);

  it('a vCPU that stays in guest mode without writing stalls a flush: a timeout naming it, not a hang', async () => {
    const t = createUffdWpTracker({ mode: 'async', shared: true, slots: [slot], waitTimeoutMs: 100 });
    t.enableLogging(slot);
    const { flags, worker } = inflight(t, undefined);
    try {
      blockUntil(flags, 1, 1, 3, 10_000, 'the store');
      expectDirtytrackError(
        () => t.protect(0, 9, 1),
        'uffd-wp',
        'timeout',
        /TLB flush: vCPU 0 stayed in guest mode for 100 ms/,
      );
    } finally {
      Atomics.store(flags, 2, 1);
      Atomics.notify(flags, 2);
      await worker.terminate();
    }
  }, 20_000);
});
