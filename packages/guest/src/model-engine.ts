import {
  Bitmap,
  DEFAULT_COST_MODEL,
  DirtytrackError,
  type BoundedDirtySink,
  type CostModel,
  type Engine,
  type Tracker,
  type VcpuThrottle,
  type VirtualClock,
  type Workload,
  type WriteBatch,
} from '@dirtytrack/core';

/**
 * The model plane's guest memory: no bytes, only which pages hold data. A page that was never
 * written and was not populated at start is a zero page (QEMU sends it as a ZERO record and
 * counts it in `ram.duplicate`).
 */
export interface ModelMemory {
  readonly pages: number;
  /** 1 = the page holds non-zero data. */
  readonly nonzero: Bitmap;
  /**
   * Pages `[0, populatedPages)` held data at start, and their `nonzero` bits are never cleared
   * (nothing in the model zeroes a page): the engine does not set them again on every write —
   * on a TB guest that is a cache-missing read-modify-write per simulated write. Default 0.
   */
  readonly populatedPages?: number;
}

/** Guest memory of `pages` pages whose first `populatedPages` hold data at start. */
export function createModelMemory(pages: number, populatedPages = pages): ModelMemory {
  if (!(Number.isInteger(populatedPages) && populatedPages >= 0 && populatedPages <= pages)) {
    throw new DirtytrackError(
      'invalid-argument',
      `populated: ${populatedPages} pages is not in [0, ${pages}]`,
      {
        component: 'model-memory',
        field: 'populated',
      },
    );
  }
  const nonzero = Bitmap.create(pages);
  nonzero.setRange(0, populatedPages);
  return { pages, nonzero, populatedPages };
}

export interface ModelEngineOptions {
  clock: VirtualClock;
  workload: Workload;
  tracker: Tracker;
  memory: ModelMemory;
  /** Prices vCPU-side work (write faults). Default: {@link DEFAULT_COST_MODEL}. */
  costModel?: CostModel;
  /**
   * The dirty ring the tracker reports into, if any. A vCPU is never fed more writes than its
   * ring has room for; at the soft limit it exits (`KVM_EXIT_DIRTY_RING_FULL`) and `onRingFull`
   * must make room (QEMU's vCPU thread reaps the rings) before it runs on.
   */
  ring?: { sink: BoundedDirtySink; onRingFull: (vcpu: number) => void };
}

/** vCPU-side counters of the model engine. */
export interface ModelEngineStats {
  /** Page writes the vCPUs made. */
  readonly writes: number;
  /** Writes that trapped into the tracker. */
  readonly faults: number;
  /** vCPU time spent in write faults, priced by the cost model (ns, summed over vCPUs). */
  readonly faultTimeNs: number;
  /** `KVM_EXIT_DIRTY_RING_FULL` exits (0 without a ring). */
  readonly ringFullExits: number;
}

export interface ModelEngine extends Engine, VcpuThrottle {
  readonly plane: 'model';
  readonly clock: VirtualClock;
  /** Fraction of full speed every vCPU runs at (auto-converge lowers it). Default 1. */
  speed: number;
  /** vCPU `vcpu`'s own speed factor, applied on top of `speed` (dirty-limit lowers it). Default 1. */
  vcpuSpeed(vcpu: number): number;
  stats(): ModelEngineStats;
}

/**
 * The model plane's engine: advances a virtual clock and, while the guest runs, pulls each
 * quantum's write batches from the workload and passes them through the tracker. Writes are
 * batches of typed arrays, never one call per page.
 */
export function createModelEngine(options: ModelEngineOptions): ModelEngine {
  const { clock, workload, tracker, memory } = options;
  const costs = options.costModel ?? DEFAULT_COST_MODEL;
  const nz = memory.nonzero.words;
  const populated = memory.populatedPages ?? 0;
  let running = true;
  let writes = 0;
  let faults = 0;
  let speed = 1;
  let ringFullExits = 0;
  const ring = options.ring;
  const vcpus = workload.vcpus;
  const vcpuSpeeds = new Float64Array(vcpus).fill(1);
  let anyVcpuSlowed = false;
  const vcpuFaults = new Float64Array(vcpus);
  const checkVcpu = (vcpu: number): void => {
    if (!(Number.isInteger(vcpu) && vcpu >= 0 && vcpu < vcpus)) {
      throw new DirtytrackError('out-of-range', `vCPU ${vcpu} is not in [0, ${vcpus})`, {
        component: 'model-engine',
      });
    }
  };
  const feed = (vcpu: number, slot: number, offsets: Uint32Array, count: number): void => {
    if (ring === undefined) {
      const trapped = tracker.write(vcpu, slot, offsets, count);
      faults += trapped;
      vcpuFaults[vcpu] = (vcpuFaults[vcpu] as number) + trapped;
      return;
    }
    // Each write dirties at most one page, so `room` writes can never overflow the ring.
    for (let done = 0; done < count;) {
      let room = ring.sink.room(vcpu);
      if (room === 0) {
        ringFullExits++;
        ring.onRingFull(vcpu);
        room = ring.sink.room(vcpu);
        if (room === 0) {
          throw new DirtytrackError('internal', `vCPU ${vcpu}: onRingFull left its dirty ring full`, {
            component: 'model-engine',
          });
        }
      }
      const take = Math.min(room, count - done);
      const trapped = tracker.write(vcpu, slot, offsets.subarray(done, done + take), take);
      faults += trapped;
      vcpuFaults[vcpu] = (vcpuFaults[vcpu] as number) + trapped;
      done += take;
    }
  };
  return {
    plane: 'model',
    clock,
    get running() {
      return running;
    },
    get speed() {
      return speed;
    },
    set speed(value: number) {
      if (!(value >= 0 && value <= 1)) {
        throw new DirtytrackError('invalid-argument', `speed ${value} is not in [0, 1]`, {
          component: 'model-engine',
        });
      }
      speed = value;
    },
    vcpus,
    vcpuSpeed(vcpu) {
      checkVcpu(vcpu);
      return vcpuSpeeds[vcpu] as number;
    },
    setVcpuSpeed(vcpu, value) {
      checkVcpu(vcpu);
      if (!(value >= 0 && value <= 1)) {
        throw new DirtytrackError('invalid-argument', `vCPU ${vcpu} speed ${value} is not in [0, 1]`, {
          component: 'model-engine',
        });
      }
      vcpuSpeeds[vcpu] = value;
      anyVcpuSlowed = vcpuSpeeds.some((x) => x !== 1);
    },
    vcpuDirtyPages(vcpu) {
      checkVcpu(vcpu);
      return vcpuFaults[vcpu] as number;
    },
    runGuestUntil(untilNs) {
      const from = clock.now();
      if (untilNs < from) {
        throw new DirtytrackError(
          'invalid-argument',
          `runGuestUntil: ${untilNs} ns is before now (${from} ns)`,
          {
            component: 'model-engine',
          },
        );
      }
      if (running && untilNs > from) {
        const emit = (batch: WriteBatch): void => {
          const { offsets, count } = batch;
          for (let i = 0; i < count; i++) {
            const p = offsets[i] as number;
            if (p < populated) continue; // Its bit is set for good (ModelMemory.populatedPages).
            nz[p >>> 5] = (nz[p >>> 5] as number) | (1 << (p & 31));
          }
          writes += count;
          feed(batch.vcpu, batch.slot, offsets, count);
        };
        if (anyVcpuSlowed) workload.generate(from, untilNs, speed, emit, vcpuSpeeds);
        else workload.generate(from, untilNs, speed, emit);
      }
      clock.advanceTo(untilNs);
    },
    pause() {
      running = false;
    },
    resume() {
      running = true;
    },
    stats() {
      return {
        writes,
        faults,
        faultTimeNs: tracker.vcpuCostNs?.(costs) ?? faults * costs.writeFaultNs,
        ringFullExits,
      };
    },
  };
}
