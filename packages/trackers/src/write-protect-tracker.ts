import {
  Bitmap,
  DirtytrackError,
  popcount32,
  type DirtySink,
  type MemslotInfo,
  type Tracker,
  type TrackerStats,
} from '@dirtytrack/core';

/**
 * The write-protect tracker: how KVM traps writes without PML (on AMD hosts, and for huge pages
 * everywhere). Enabling logging write-protects every page of the slot; the first write to a
 * protected page faults, the fault handler reports the page (`mark_page_dirty_in_slot`) and
 * makes it writable again (`fast_page_fault`, reference/kvm.md §3), so later writes run at full
 * speed until a harvest re-arms the page.
 *
 * Rule kept exactly: every writable 0→1 transition of a page in a logging slot reports the page
 * once. Until `@dirtytrack/mmu` lands, the protection state is a bitmap per slot here (1 =
 * writable, i.e. no longer write-protected); the MMU issue moves it into SPTEs with the TLB
 * protocol.
 */
export function createWriteProtectTracker(): Tracker {
  // Per slot the pages a fault has made writable since the last re-arm (1 = writable): the
  // complement of the write-protected set. Enabling logging protects every page, which here is
  // an all-zero bitmap — no 1-bit fill over the whole slot (a 3 TiB slot's is 96 MiB), and
  // memory is touched only where the guest writes.
  const slots = new Map<number, { info: MemslotInfo; writable: Bitmap }>();
  let sink: DirtySink | undefined;
  let faulted = new Uint32Array(1024);
  let writes = 0;
  let faults = 0;
  let reported = 0;
  let rearmed = 0;

  const slotOf = (id: number, op: string) => {
    const s = slots.get(id);
    if (s === undefined) {
      throw new DirtytrackError('invalid-state', `${op}: slot ${id} is not logging`, {
        component: 'wp-tracker',
      });
    }
    return s;
  };

  return {
    kind: 'wp',
    attach(target) {
      sink = target;
    },
    enableLogging(info) {
      if (slots.has(info.id)) {
        throw new DirtytrackError('invalid-state', `enableLogging: slot ${info.id} is already logging`, {
          component: 'wp-tracker',
        });
      }
      slots.set(info.id, { info, writable: Bitmap.create(info.pages) });
      return info.pages;
    },
    disableLogging(id) {
      slots.delete(id);
    },
    write(vcpu, slot, offsets, count) {
      writes += count;
      const s = slots.get(slot);
      if (s === undefined) return 0; // Not logging: writes never trap.
      if (sink === undefined) {
        throw new DirtytrackError('invalid-state', 'write: no sink attached (call attach(reporter) first)', {
          component: 'wp-tracker',
        });
      }
      if (count > faulted.length) faulted = new Uint32Array(Math.max(count, faulted.length * 2));
      const words = s.writable.words;
      const pages = s.info.pages;
      let n = 0;
      for (let i = 0; i < count; i++) {
        const p = offsets[i] as number;
        if (!(p < pages)) {
          throw new DirtytrackError(
            'out-of-range',
            `write: page ${p} is outside slot ${slot} (${pages} pages)`,
            {
              component: 'wp-tracker',
            },
          );
        }
        const w = words[p >>> 5] as number;
        const bit = 1 << (p & 31);
        if ((w & bit) === 0) {
          words[p >>> 5] = w | bit; // The fault made the page writable again.
          faulted[n++] = p;
        }
      }
      if (n > 0) sink.markDirty(slot, faulted, n, vcpu);
      faults += n;
      reported += n;
      return n;
    },
    rearm(slot, mask, touched) {
      const s = slotOf(slot, 'rearm');
      if (mask.bits !== s.info.pages) {
        throw new DirtytrackError(
          'invalid-argument',
          `rearm: mask covers ${mask.bits} pages, slot ${slot} has ${s.info.pages}`,
          {
            component: 'wp-tracker',
          },
        );
      }
      let n: number;
      if (touched === undefined) {
        s.writable.andNot(mask);
        n = mask.popcount();
      } else {
        // Only the listed words can hold bits: O(dirty words), as the ring's reset needs.
        const writable = s.writable.words;
        const m = mask.words;
        n = 0;
        for (let k = 0; k < touched.count; k++) {
          const i = touched.words[k] as number;
          const w = m[i] as number;
          if (w === 0) continue;
          writable[i] = (writable[i] as number) & ~w;
          n += popcount32(w);
        }
      }
      rearmed += n;
      return n;
    },
    stats(): TrackerStats {
      return { writes, faults, reported, rearmed };
    },
  };
}
