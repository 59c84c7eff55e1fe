import {
  createRng,
  DirtytrackError,
  NS_PER_S,
  PAGE_SIZE,
  type Rng,
  type WriteBatch,
  type Workload,
} from '@dirtytrack/core';

/** Options every workload shares. */
export interface WorkloadOptions {
  /** vCPUs writing; each writes at `bytesPerSecond`. */
  vcpus: number;
  /** Pages in the slot the workload writes to. */
  pages: number;
  /** Slot id the writes go to. Default 0. */
  slot?: number;
  /** Bytes of page writes per second per vCPU; each write dirties one 4 KiB page. */
  bytesPerSecond: number;
  /** First page of the working set. Default 0. */
  offset?: number;
  /** Pages in the working set. Default: from `offset` to the end of the slot. */
  workingSet?: number;
}

/**
 * Every vCPU writes pages drawn uniformly at random from the working set, at a fixed rate.
 * Draws come from `rng` forked per vCPU, so a run is reproducible from its seed.
 */
export function createUniformWorkload(options: WorkloadOptions & { rng: Rng }): Workload {
  const shape = checkShape(options, 'uniform');
  const rngs = Array.from({ length: shape.vcpus }, (_, v) => options.rng.fork(v));
  return makeWorkload('uniform', shape, (vcpu, out, count) => {
    const rng = rngs[vcpu] as Rng;
    fillBelow(rng, out, count, shape.workingSet);
    if (shape.offset !== 0) for (let i = 0; i < count; i++) out[i] = (out[i] as number) + shape.offset;
  });
}

/**
 * vCPU `vcpu`'s share of a sweep over `pages` pages shared by `vcpus`: it starts `start` pages in
 * and spans `span` pages — `floor(pages / vcpus)` each, the last vCPU also the remainder.
 */
export function sweepShare(pages: number, vcpus: number, vcpu: number): { start: number; span: number } {
  const share = Math.floor(pages / vcpus);
  const start = vcpu * share;
  return { start, span: vcpu === vcpus - 1 ? pages - start : share };
}

/**
 * Every vCPU sweeps its share of the working set in ascending order and wraps around, like the
 * guest QEMU's migration tests boot (it increments one byte of every page, page after page).
 * vCPU v owns pages `[offset + v·share, offset + (v+1)·share)`; the last vCPU also takes the
 * remainder. Deterministic, no randomness.
 */
export function createSweepWorkload(options: WorkloadOptions): Workload {
  const shape = checkShape(options, 'sweep');
  const share = Math.floor(shape.workingSet / shape.vcpus);
  if (share === 0) {
    throw new DirtytrackError(
      'invalid-argument',
      `workload.working-set: ${shape.workingSet} pages cannot be shared by ${shape.vcpus} vCPUs`,
      {
        component: 'workload',
        field: 'workload.working-set',
      },
    );
  }
  const cursors = new Float64Array(shape.vcpus);
  return makeWorkload('sweep', shape, (vcpu, out, count) => {
    const { start, span } = sweepShare(shape.workingSet, shape.vcpus, vcpu);
    const base = shape.offset + start;
    let cursor = cursors[vcpu] as number;
    for (let i = 0; i < count; i++) {
      out[i] = base + cursor;
      cursor = cursor + 1 === span ? 0 : cursor + 1;
    }
    cursors[vcpu] = cursor;
  });
}

/** What a hot-set workload adds to {@link WorkloadOptions}. */
export interface HotSetOptions {
  /**
   * Fraction of the working set that is hot, in (0, 1]. The hot set is the first
   * `max(1, round(workingSet × hotFraction))` pages of the working set. Default 0.1.
   */
  hotFraction?: number;
  /** Fraction of writes that go to the hot set, in [0, 1]; the rest hit the cold pages. Default 0.9. */
  hotWriteFraction?: number;
  /**
   * Where the hot pages lie: `first` (default), the first pages of the working set; `spread`, one
   * every `floor(workingSet / hotPages)` pages from its start, the cold pages between them and
   * after. Precopy sends RAM in order, so the layout decides how long after its first send a hot
   * page has to be dirtied again: spread, about half the first pass on average (as a live guest's
   * hot pages drawn at random), first, all of it. `lists`: as the live guest's vCPUs draw theirs
   * (`--workload hot-set`): each vCPU its own list of `max(1, round(workingSet × hotFraction))`
   * pages of the working set, drawn at random with repeats — vCPU v's from
   * `createRng(rng.seed).fork(v)`, as a live vCPU draws its own (so `rng`'s own draws do not
   * move); a hot write takes an entry of its vCPU's list (a page drawn twice gets twice the
   * writes), a cold write any page of the working set, hot ones included.
   */
  hotLayout?: 'first' | 'spread' | 'lists';
}

/**
 * A skewed working set, as real guests have (a database's buffer pool, a JVM's young
 * generation): a fraction of the pages receives a fraction of the writes; within the hot and
 * the cold set pages are drawn uniformly. Per quantum a vCPU draws one coin per write, counts
 * its hot writes, then draws hot and cold pages in one batch each and merges them in coin order:
 * typed arrays only, no per-page calls. Seeded per vCPU like {@link createUniformWorkload}.
 */
export function createHotSetWorkload(options: WorkloadOptions & HotSetOptions & { rng: Rng }): Workload {
  const shape = checkShape(options, 'hotset');
  const hotFraction = options.hotFraction ?? 0.1;
  const hotWriteFraction = options.hotWriteFraction ?? 0.9;
  const fail = (field: string, what: string): never => {
    throw new DirtytrackError('invalid-argument', `workload.${field}: ${what}`, {
      component: 'workload-hotset',
      field: `workload.${field}`,
    });
  };
  if (!(hotFraction > 0 && hotFraction <= 1)) fail('hot-fraction', `${hotFraction} is not in (0, 1]`);
  if (!(hotWriteFraction >= 0 && hotWriteFraction <= 1))
    fail('hot-write-fraction', `${hotWriteFraction} is not in [0, 1]`);
  const hotLayout = options.hotLayout ?? 'first';
  if (hotLayout !== 'first' && hotLayout !== 'spread' && hotLayout !== 'lists')
    fail('hot-layout', `${String(hotLayout)} (accepted: first, spread, lists)`);
  const hotPages = Math.min(shape.workingSet, Math.max(1, Math.round(shape.workingSet * hotFraction)));
  const coldPages = shape.workingSet - hotPages;
  // spread: hot page i at i × stride; each stride's other pages, then the tail, are the cold ones
  // (stride 1 is the first layout).
  const stride = hotLayout === 'spread' ? Math.floor(shape.workingSet / hotPages) : 1;
  const coldPerStride = stride - 1;
  const tail = hotPages * stride;
  // A coin below this (out of 2^32) sends the write to the hot set; no cold pages → always hot.
  const hotBelow = coldPages === 0 ? 0x1_0000_0000 : Math.round(hotWriteFraction * 0x1_0000_0000);
  const rngs = Array.from({ length: shape.vcpus }, (_, v) => options.rng.fork(v));
  if (hotLayout === 'lists') return hotListsWorkload(shape, hotPages, hotWriteFraction, rngs, options.rng);
  let coins = new Uint32Array(1024);
  let hot = new Uint32Array(1024);
  let cold = new Uint32Array(1024);
  return makeWorkload('hotset', shape, (vcpu, out, count) => {
    const rng = rngs[vcpu] as Rng;
    if (count > coins.length) {
      coins = new Uint32Array(out.length);
      hot = new Uint32Array(out.length);
      cold = new Uint32Array(out.length);
    }
    // Locals, not the closure's mutable bindings: the two loops below run once per write.
    const c = coins;
    const hs = hot;
    const cs = cold;
    const below = hotBelow;
    const h = drawCoins(rng, c, count, below);
    if (h > 0) fillBelow(rng, hs, h, hotPages);
    if (count - h > 0) fillBelow(rng, cs, count - h, coldPages);
    const base = shape.offset;
    let hi = 0;
    let ci = 0;
    // The first layout (stride 1) on its own loop: the general one below gives the same pages
    // (no cold page between hot ones, the tail from hotPages) but ran 3–8 % slower (20 M writes).
    if (coldPerStride === 0) {
      const coldBase = shape.offset + hotPages;
      for (let i = 0; i < count; i++) {
        out[i] = (c[i] as number) < below ? base + (hs[hi++] as number) : coldBase + (cs[ci++] as number);
      }
      return;
    }
    const st = stride;
    const per = coldPerStride;
    const inStrides = hotPages * per;
    for (let i = 0; i < count; i++) {
      if ((c[i] as number) < below) {
        out[i] = base + (hs[hi++] as number) * st;
      } else {
        const j = cs[ci++] as number;
        out[i] =
          j < inStrides ? base + Math.floor(j / per) * st + 1 + (j % per) : base + tail + (j - inStrides);
      }
    }
  });
}

/**
 * The `lists` layout. vCPU v's list is the first draws of `createRng(seed).fork(v)`, as a live
 * vCPU draws its own (live-vcpu.ts): with the live guest's seed and a working set of all its
 * pages, the model's vCPUs write to exactly the live vCPUs' hot pages. Per quantum, as the other
 * layouts: coins, then list entries for the hot writes and working-set pages for the cold ones.
 */
function hotListsWorkload(
  shape: Shape,
  listLength: number,
  hotWriteFraction: number,
  rngs: Rng[],
  root: Rng,
): Workload {
  const lists = rngs.map((_, v) => {
    const list = new Uint32Array(listLength);
    fillBelow(createRng(root.seed).fork(v), list, listLength, shape.workingSet);
    return list;
  });
  const below = Math.round(hotWriteFraction * 0x1_0000_0000);
  let coins = new Uint32Array(1024);
  let draws = new Uint32Array(1024);
  return makeWorkload('hotset', shape, (vcpu, out, count) => {
    const rng = rngs[vcpu] as Rng;
    const list = lists[vcpu] as Uint32Array;
    if (count > coins.length) {
      coins = new Uint32Array(out.length);
      draws = new Uint32Array(out.length);
    }
    const c = coins;
    const d = draws;
    const h = drawCoins(rng, c, count, below);
    // The hot draws first, then the cold ones, in one array: list indices, then pages.
    if (h > 0) fillBelow(rng, d, h, listLength);
    if (count - h > 0) fillBelow(rng, d.subarray(h), count - h, shape.workingSet);
    const base = shape.offset;
    let hi = 0;
    let ci = h;
    for (let i = 0; i < count; i++) {
      out[i] = base + ((c[i] as number) < below ? (list[d[hi++] as number] as number) : (d[ci++] as number));
    }
  });
}

/**
 * A hot-set quantum's coins: `count` draws of 32 bits into `coins`; returns how many fall below
 * `below` (out of 2^32) — the quantum's hot writes. Every layout draws them this way.
 */
function drawCoins(rng: Rng, coins: Uint32Array, count: number, below: number): number {
  rng.fillInts(coins, count, 0x1_0000_0000);
  let h = 0;
  for (let i = 0; i < count; i++) if ((coins[i] as number) < below) h++;
  return h;
}

/**
 * `rng.fillInts(out, count, n)`: `count` integers in `[0, n)`, by rejection below
 * `2^32 - 2^32 mod n` and reduction mod n. Kept as the workloads' one entry point for page
 * draws; `createRng`'s `fillInts` runs the generator inline, so the batch call is the fast path
 * (it was a loop over `nextU32()` here).
 */
export function fillBelow(rng: Rng, out: Uint32Array, count: number, n: number): void {
  rng.fillInts(out, count, n);
}

interface Shape {
  vcpus: number;
  pages: number;
  slot: number;
  offset: number;
  workingSet: number;
  writesPerSecond: number;
}

function makeWorkload(
  kind: string,
  shape: Shape,
  fill: (vcpu: number, out: Uint32Array, count: number) => void,
): Workload {
  // Fractional writes carry over between quanta so the long-run rate is exact.
  const carry = new Float64Array(shape.vcpus);
  let scratch = new Uint32Array(1024);
  const batch = { vcpu: 0, slot: shape.slot, offsets: scratch, count: 0 };
  return {
    kind,
    vcpus: shape.vcpus,
    generate(fromNs, toNs, speed, emit, vcpuSpeeds) {
      if (!(toNs >= fromNs) || !(speed >= 0 && speed <= 1)) {
        throw new DirtytrackError(
          'invalid-argument',
          `generate: need fromNs <= toNs and speed in [0, 1], got ${fromNs}, ${toNs}, ${speed}`,
          {
            component: 'workload',
          },
        );
      }
      const perVcpu = (shape.writesPerSecond * speed * (toNs - fromNs)) / NS_PER_S;
      if (vcpuSpeeds !== undefined && vcpuSpeeds.length < shape.vcpus) {
        throw new DirtytrackError(
          'invalid-argument',
          `generate: ${vcpuSpeeds.length} vCPU speeds for ${shape.vcpus} vCPUs`,
          { component: 'workload' },
        );
      }
      for (let v = 0; v < shape.vcpus; v++) {
        const due =
          (carry[v] as number) + (vcpuSpeeds === undefined ? perVcpu : perVcpu * (vcpuSpeeds[v] as number));
        const count = Math.floor(due);
        carry[v] = due - count;
        if (count === 0) continue;
        if (count > scratch.length) {
          scratch = new Uint32Array(Math.max(count, scratch.length * 2));
          batch.offsets = scratch;
        }
        fill(v, scratch, count);
        batch.vcpu = v;
        batch.count = count;
        emit(batch as WriteBatch);
      }
    },
  };
}

function checkShape(o: WorkloadOptions, kind: string): Shape {
  const fail = (field: string, what: string): never => {
    throw new DirtytrackError('invalid-argument', `workload.${field}: ${what}`, {
      component: `workload-${kind}`,
      field: `workload.${field}`,
    });
  };
  if (!(Number.isInteger(o.vcpus) && o.vcpus >= 1)) fail('vcpus', `${o.vcpus} is not an integer >= 1`);
  if (!(Number.isInteger(o.pages) && o.pages >= 1 && o.pages <= 2 ** 32))
    fail('pages', `${o.pages} is not an integer in [1, 2^32]`);
  if (!(Number.isFinite(o.bytesPerSecond) && o.bytesPerSecond >= 0))
    fail('rate', `${o.bytesPerSecond} B/s is not a finite number >= 0`);
  const offset = o.offset ?? 0;
  const workingSet = o.workingSet ?? o.pages - offset;
  if (!(Number.isInteger(offset) && offset >= 0 && offset < o.pages))
    fail('offset', `page ${offset} is outside the slot's ${o.pages} pages`);
  if (!(Number.isInteger(workingSet) && workingSet >= 1 && offset + workingSet <= o.pages)) {
    fail('working-set', `${workingSet} pages from page ${offset} do not fit the slot's ${o.pages} pages`);
  }
  return {
    vcpus: o.vcpus,
    pages: o.pages,
    slot: o.slot ?? 0,
    offset,
    workingSet,
    writesPerSecond: o.bytesPerSecond / PAGE_SIZE,
  };
}
