import {
  Bitmap,
  DirtytrackError,
  type AttachSpec,
  type DirtySink,
  type MemslotInfo,
  type SharedReporter,
  type SharedTracker,
  type VcpuTracker,
} from '@dirtytrack/core';

// A minimal write-protect tracker and bitmap reporter in shared memory, so the guest package can
// test its engines without depending on the MMU or the reporters (which depend on it). The
// AttachSpecs name this file by URL: workers import it like a package.

const MODULE = import.meta.url;

export interface FixtureTrackerData {
  readonly armed: SharedArrayBuffer;
  /** Debug: re-arm nothing (a broken tracker: pages written after a harvest are never reported). */
  readonly skipRearm: boolean;
  /** vCPU `failVcpu` throws on its `failAfter`-th write (-1: never). */
  readonly failVcpu: number;
  readonly failAfter: number;
}

/** The vCPU side: a write to an armed page disarms it and reports it before the store. */
export function attachFixtureTracker(data: FixtureTrackerData): VcpuTracker {
  const armed = new Int32Array(data.armed);
  const one = new Uint32Array(1);
  let sink: DirtySink | undefined;
  let writes = 0;
  return {
    attach(s) {
      sink = s;
    },
    write(vcpu, slot, offsets, count) {
      let trapped = 0;
      for (let i = 0; i < count; i++) {
        if (vcpu === data.failVcpu && ++writes === data.failAfter) {
          throw new DirtytrackError('out-of-range', `fixture: vCPU ${vcpu} fails on purpose`, {
            component: 'fixture-tracker',
          });
        }
        const p = offsets[i] as number;
        if (Atomics.exchange(armed, p, 0) === 1) {
          one[0] = p;
          sink?.markDirty(slot, one, 1, vcpu);
          trapped++;
        }
      }
      return trapped;
    },
  };
}

export function createFixtureTracker(
  pages: number,
  opts: { skipRearm?: boolean; failVcpu?: number; failAfter?: number } = {},
): SharedTracker {
  const data: FixtureTrackerData = {
    armed: new SharedArrayBuffer(pages * 4),
    skipRearm: opts.skipRearm ?? false,
    failVcpu: opts.failVcpu ?? -1,
    failAfter: opts.failAfter ?? 0,
  };
  const armed = new Int32Array(data.armed);
  const vcpu = attachFixtureTracker(data);
  let logging = false;
  let writes = 0;
  let faults = 0;
  let reported = 0;
  let rearmed = 0;
  return {
    kind: 'fixture-wp',
    attach: (sink) =>
      vcpu.attach({
        markDirty(slot, offsets, count, v) {
          reported += count;
          sink.markDirty(slot, offsets, count, v);
        },
      }),
    write(v, slot, offsets, count) {
      writes += count;
      if (!logging) return 0;
      const n = vcpu.write(v, slot, offsets, count);
      faults += n;
      return n;
    },
    enableLogging(slot: MemslotInfo) {
      logging = true;
      armed.fill(1, 0, slot.pages);
      return slot.pages;
    },
    disableLogging() {
      logging = false;
      armed.fill(0);
    },
    rearm(_slot, mask) {
      let n = 0;
      for (let p = mask.findNextSet(0); p >= 0; p = mask.findNextSet(p + 1)) {
        if (!data.skipRearm) Atomics.store(armed, p, 1);
        n++;
      }
      rearmed += n;
      return n;
    },
    stats: () => ({ writes, faults, reported, rearmed }),
    share: (): AttachSpec => ({ module: MODULE, factory: 'attachFixtureTracker', data }),
  };
}

/** The producer side of the fixture reporter: atomic bit sets into the shared bitmap. */
export function attachFixtureReporter(data: { bitmap: SharedArrayBuffer; pages: number }): DirtySink {
  const live = Bitmap.wrap(data.bitmap, data.pages);
  return {
    markDirty(_slot, offsets, count) {
      for (let i = 0; i < count; i++) live.setAtomic(offsets[i] as number);
    },
  };
}

/** A classic GET_DIRTY_LOG reporter: xchg the live bitmap, re-arm exactly what was reported. */
export function createFixtureReporter(slot: MemslotInfo, tracker: SharedTracker): SharedReporter {
  const live = Bitmap.create(slot.pages, { shared: true });
  const sink = attachFixtureReporter({ bitmap: live.buffer as SharedArrayBuffer, pages: slot.pages });
  return {
    kind: 'fixture-bitmap',
    addSlot() {},
    markDirty: (s, o, n, v) => sink.markDirty(s, o, n, v),
    getDirtyLog(_slot, out) {
      out.clearAll();
      const n = live.collectInto(out, 'xchg');
      if (n > 0) tracker.rearm(slot.id, out);
      return n;
    },
    lastHarvestCost: () => ({ xchgWords: 0, copyWords: 0, rearmedPages: 0, tlbFlushes: 0, ringEntries: 0 }),
    share: () => ({
      module: MODULE,
      factory: 'attachFixtureReporter',
      data: { bitmap: live.buffer as SharedArrayBuffer, pages: slot.pages },
    }),
  };
}
