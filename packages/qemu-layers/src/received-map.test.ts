import { expectDirtytrackError } from '@dirtytrack/testkit';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createReceivedMap } from './received-map.js';

describe('createReceivedMap (destination receivedmap)', () => {
  it('sets single pages and host-page ranges across word boundaries, counting what is new', () => {
    const m = createReceivedMap(200);
    expect(m.setReceived(0)).toBe(1);
    expect(m.setReceived(0)).toBe(0); // placed twice
    // A 2 MiB host page is 512 target pages; here a 40-page range from 30 spans words 0..2.
    expect(m.setReceived(30, 40)).toBe(40);
    expect([...m.bitmap.words]).toEqual([0xc0000001, 0xffffffff, 0x3f, 0, 0, 0, 0, 0]);
    expect(m.isReceived(29)).toBe(false);
    expect(m.isReceived(69)).toBe(true);
    expect(m.isReceived(70)).toBe(false);
    expect(m.receivedPages()).toBe(41);
    expect(m.findNextMissing()).toBe(1);
    expect(m.findNextMissing(30)).toBe(70);
    expect(m.setReceived(199)).toBe(1);
    expect(m.findNextMissing(199)).toBe(-1);
    expect(m.findNextMissing(200)).toBe(-1);
  });

  it('a discard clears the range so the pages are asked for again', () => {
    const m = createReceivedMap(128);
    m.setReceived(0, 128);
    expect(m.findNextMissing()).toBe(-1);
    m.clearRange(40, 50);
    expect(m.receivedPages()).toBe(78);
    expect(m.findNextMissing()).toBe(40);
    expect(m.findNextMissing(90)).toBe(-1);
    expect(m.setReceived(32, 64)).toBe(50);
  });

  it('rejects ranges outside the block and bad arguments', () => {
    const m = createReceivedMap(100);
    expectDirtytrackError(() => m.setReceived(90, 11), 'receivedmap', 'out-of-range', /\[90, 101\)/);
    expectDirtytrackError(() => m.isReceived(100), 'receivedmap', 'out-of-range');
    expectDirtytrackError(() => m.clearRange(-1, 2), 'receivedmap', 'invalid-argument');
    expectDirtytrackError(() => m.findNextMissing(0.5), 'receivedmap', 'invalid-argument');
    expectDirtytrackError(() => createReceivedMap(-1), 'receivedmap', 'invalid-argument');
    expect(createReceivedMap(64, { shared: true }).bitmap.shared).toBe(true);
  });

  it('agrees with a Set of received pages (property)', () => {
    const pages = 300;
    const op = fc.record({
      set: fc.boolean(),
      page: fc.nat(pages - 1),
      count: fc.nat(80),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 30 }), fc.nat(pages), (ops, from) => {
        const m = createReceivedMap(pages);
        const ref = new Set<number>();
        for (const o of ops) {
          const n = Math.min(o.count, pages - o.page);
          if (o.set) {
            let fresh = 0;
            for (let p = o.page; p < o.page + n; p++) if (!ref.has(p) && ref.add(p)) fresh++;
            expect(m.setReceived(o.page, n)).toBe(fresh);
          } else {
            for (let p = o.page; p < o.page + n; p++) ref.delete(p);
            m.clearRange(o.page, n);
          }
        }
        expect(m.receivedPages()).toBe(ref.size);
        let missing = -1;
        for (let p = from; p < pages; p++) {
          if (!ref.has(p)) {
            missing = p;
            break;
          }
        }
        expect(m.findNextMissing(from)).toBe(missing);
        for (let p = 0; p < pages; p++) expect(m.isReceived(p)).toBe(ref.has(p));
      }),
      { numRuns: 200 },
    );
  });
});
