import {
  Bitmap,
  isDirtytrackError,
  type DirtyLogSource,
  type DirtySink,
  type MemslotInfo,
  type Rearmer,
} from '@dirtytrack/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertProperty, replaySeed } from './runs.js';

export interface DescribeDirtyLogSourceOptions {
  /**
   * The source was created with `KVM_DIRTY_LOG_INITIALLY_SET`: every page of a new slot starts
   * dirty (and nothing was re-armed to get there). Default false.
   */
  initiallySet?: boolean;
}

/** A source with manual protect, fed through its {@link DirtySink} side. */
export type ManualDirtyLogSource = DirtySink & DirtyLogSource;

const SLOT_ID = 3;

/**
 * The conformance suite for a dirty-log source with manual protect
 * (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`, reference/kvm.md §1.4–§1.6). Random interleavings of
 * `markDirty`, `getDirtyLog` and `clearDirtyLog` of 64-aligned windows are checked against a
 * reference set of "pages marked and not yet cleared":
 *
 * - `getDirtyLog` writes exactly that set (overwriting whatever `out` held), returns its size,
 *   and clears, re-arms and flushes nothing;
 * - `clearDirtyLog` re-arms exactly `mask ∩ dirty` in its window (one `rearm` call with a
 *   slot-wide mask, one TLB flush, nothing at all when the intersection is empty), returns that
 *   many pages, and removes them from the set; mask bits outside the window are ignored;
 * - `clearDirtyLog` accepts exactly the windows KVM accepts and rejects the others with KVM's
 *   errno in KVM's order (EINVAL for `first_page & 63`, then ENOENT for an unknown slot, then
 *   EINVAL for the range rules), changing nothing when it rejects.
 *
 * `create` builds a source logging `slot` whose re-arms go to `rearmer`.
 */
export function describeDirtyLogSource(
  name: string,
  create: (rearmer: Rearmer, slot: MemslotInfo) => ManualDirtyLogSource,
  options: DescribeDirtyLogSourceOptions = {},
): void {
  const initiallySet = options.initiallySet ?? false;

  /** A fresh source over a `pages`-page slot, with a log of every re-arm it asks for. */
  const setup = (pages: number) => {
    const slot: MemslotInfo = { id: SLOT_ID, asId: 0, baseGfn: 0x2000, pages };
    const rearmed: number[][] = [];
    const source = create(
      {
        rearm(s, mask) {
          expect(s).toBe(SLOT_ID);
          expect(mask.bits).toBe(pages);
          rearmed.push([...mask.setBits()]);
          return mask.popcount();
        },
      },
      slot,
    );
    const clearDirtyLog = source.clearDirtyLog?.bind(source);
    if (clearDirtyLog === undefined)
      throw new Error(`${name}: clearDirtyLog is missing (manual protect off?)`);
    const dirty = new Set<number>();
    if (initiallySet) for (let p = 0; p < pages; p++) dirty.add(p);
    const out = Bitmap.create(pages);
    const sorted = (): number[] => [...dirty].sort((a, b) => a - b);
    /** GET must return exactly the reference set and leave everything else alone. */
    const get = (): Bitmap => {
      out.setAll(); // stale content must be overwritten
      const n = source.getDirtyLog(SLOT_ID, out);
      expect([...out.setBits()]).toEqual(sorted());
      expect(n).toBe(dirty.size);
      expect(rearmed).toEqual([]);
      const cost = source.lastHarvestCost();
      expect(cost.rearmedPages).toBe(0);
      expect(cost.tlbFlushes).toBe(0);
      return out;
    };
    return { source, clearDirtyLog, dirty, rearmed, get, sorted };
  };

  describe(`dirty-log source conformance (manual protect${initiallySet ? ', initially set' : ''}): ${name}`, () => {
    it('starts with every page dirty if initially set, else none, and re-arms nothing to get there', () => {
      const { rearmed, get, dirty } = setup(130);
      expect(rearmed).toEqual([]);
      get();
      expect(dirty.size).toBe(initiallySet ? 130 : 0);
    });

    it('GET reports exactly the pages marked and not yet cleared; CLEAR re-arms exactly mask ∩ dirty', async () => {
      const mark = fc.record({
        op: fc.constant('mark' as const),
        pages: fc.array(fc.nat(), { maxLength: 60 }),
      });
      const get = fc.record({ op: fc.constant('get' as const) });
      const clear = fc.record({
        op: fc.constant('clear' as const),
        word: fc.nat(),
        words: fc.nat(),
        toEnd: fc.boolean(),
        mask: fc.oneof(
          fc.constant('reported' as const),
          fc.constant('all' as const),
          fc.array(fc.nat(), { maxLength: 80 }),
        ),
        /** Give the mask 64 extra pages and set every bit beyond num_pages: KVM ignores them. */
        garbage: fc.boolean(),
      });
      await assertProperty(
        fc.property(
          fc.integer({ min: 1, max: 600 }),
          fc.array(fc.oneof(mark, mark, get, clear, clear), { maxLength: 40 }),
          (pages, ops) => {
            const t = setup(pages);
            let lastOut: number[] = t.sorted();
            for (const o of ops) {
              if (o.op === 'mark') {
                const offsets = Uint32Array.from(o.pages, (p) => p % pages);
                t.source.markDirty(SLOT_ID, offsets, offsets.length, 0);
                for (const p of offsets) t.dirty.add(p);
              } else if (o.op === 'get') {
                lastOut = [...t.get().setBits()];
              } else {
                // A window KVM accepts: 64-aligned start; 64·k pages, or exactly to the slot's end.
                const first = 64 * (o.word % Math.ceil(pages / 64));
                const num = o.toEnd ? pages - first : 64 * (o.words % (Math.floor((pages - first) / 64) + 1));
                const mask = Bitmap.create(o.garbage ? num + 64 : num);
                if (o.mask === 'all') mask.setRange(0, num);
                else if (o.mask === 'reported') {
                  for (const p of lastOut) if (p >= first && p < first + num) mask.set(p - first);
                } else for (const p of o.mask) if (num > 0) mask.set(p % num);
                if (o.garbage) mask.setRange(num, mask.bits - num);
                const want: number[] = [];
                for (let p = first; p < first + num; p++) {
                  if (mask.test(p - first) && t.dirty.has(p)) want.push(p);
                }
                const n = t.clearDirtyLog(SLOT_ID, first, num, mask);
                expect(n).toBe(want.length);
                expect(t.rearmed.splice(0)).toEqual(want.length > 0 ? [want] : []);
                if (num > 0) {
                  const cost = t.source.lastHarvestCost();
                  expect(cost.rearmedPages).toBe(want.length);
                  expect(cost.tlbFlushes).toBe(want.length > 0 ? 1 : 0);
                }
                for (const p of want) t.dirty.delete(p);
              }
            }
            t.get();
          },
        ),
        200,
        replaySeed(),
      );
    });

    it("CLEAR accepts exactly KVM's windows and rejects the rest with KVM's errno, in KVM's order, changing nothing", async () => {
      const first = fc.oneof(
        fc.nat(12).map((k) => 64 * k),
        fc.nat(800),
      );
      await assertProperty(
        fc.property(
          fc.integer({ min: 1, max: 600 }),
          fc.array(
            fc.record({
              first,
              num: fc.oneof(
                fc.nat(12).map((k) => 64 * k),
                fc.nat(800),
              ),
              /** When set, num_pages = npages − first_page + toEnd instead (around the slot's end). */
              toEnd: fc.option(fc.integer({ min: -70, max: 3 }), { nil: undefined }),
              unknown: fc.boolean(),
              marks: fc.array(fc.nat(), { maxLength: 10 }),
            }),
            { maxLength: 20 },
          ),
          (pages, calls) => {
            const t = setup(pages);
            for (const call of calls) {
              const c = {
                ...call,
                num: call.toEnd === undefined ? call.num : Math.max(0, pages - call.first + call.toEnd),
              };
              const offsets = Uint32Array.from(c.marks, (p) => p % pages);
              t.source.markDirty(SLOT_ID, offsets, offsets.length, 0);
              for (const p of offsets) t.dirty.add(p);
              const slot = c.unknown ? SLOT_ID + 100 : SLOT_ID;
              const want = kvmClearErrno(c.first, c.num, c.unknown ? undefined : pages);
              const mask = Bitmap.create(c.num);
              mask.setAll();
              let caught: unknown;
              let n = -1;
              try {
                n = t.clearDirtyLog(slot, c.first, c.num, mask);
              } catch (error) {
                caught = error;
              }
              if (want === undefined) {
                expect(caught).toBeUndefined();
                const cleared = [...t.dirty].filter((p) => p >= c.first && p < c.first + c.num);
                expect(n).toBe(cleared.length);
                for (const p of cleared) t.dirty.delete(p);
                t.rearmed.splice(0);
              } else {
                if (!isDirtytrackError(caught)) throw new Error(`expected ${want}, got ${String(caught)}`);
                expect({ first: c.first, num: c.num, pages, errno: caught.errno }).toEqual({
                  first: c.first,
                  num: c.num,
                  pages,
                  errno: want,
                });
                expect(t.rearmed).toEqual([]);
              }
              t.get();
            }
          },
        ),
        200,
        replaySeed(),
      );
    });
  });
}

/**
 * The errno `KVM_CLEAR_DIRTY_LOG` answers for a window (undefined = accepted), checks in KVM's
 * order (reference/kvm.md §1.6); `npages` undefined = no such slot.
 */
export function kvmClearErrno(
  firstPage: number,
  numPages: number,
  npages: number | undefined,
): string | undefined {
  if (firstPage % 64 !== 0) return 'EINVAL';
  if (npages === undefined) return 'ENOENT';
  if (firstPage > npages || numPages > npages - firstPage) return 'EINVAL';
  if (numPages % 64 !== 0 && firstPage + numPages < npages) return 'EINVAL';
  return undefined;
}
