import fc from 'fast-check';
import { afterEach, describe, expect, it, onTestFinished, vi } from 'vitest';

import { assertProperty, propertyRuns } from './runs.js';

afterEach(() => {
  vi.unstubAllEnvs();
});

/** A property that records each case's value, and when the event loop ran between cases. */
function recording() {
  const seen: number[] = [];
  const loopTurns: number[] = [];
  let turns = 0;
  let ticking = true;
  const tick = (): void => {
    turns++;
    if (ticking) setImmediate(tick);
  };
  setImmediate(tick);
  onTestFinished(() => {
    ticking = false;
  });
  const property = fc.property(fc.integer(), (n) => {
    seen.push(n);
    loopTurns.push(turns);
  });
  return { seen, loopTurns, property };
}

describe('propertyRuns', () => {
  it('is the fallback unless DIRTYTRACK_PROPERTY_RUNS is a positive integer', () => {
    expect(propertyRuns(40)).toBe(40);
    vi.stubEnv('DIRTYTRACK_PROPERTY_RUNS', '1000');
    expect(propertyRuns(40)).toBe(1000);
    vi.stubEnv('DIRTYTRACK_PROPERTY_RUNS', 'lots');
    expect(propertyRuns(40)).toBe(40);
    vi.stubEnv('DIRTYTRACK_PROPERTY_RUNS', '0');
    expect(propertyRuns(40)).toBe(40);
  });
});

describe('assertProperty', () => {
  it('by default: one fc.assert of the fallback runs on the seed given, the same cases as fc.assert', async () => {
    vi.stubEnv('DIRTYTRACK_PROPERTY_RUNS', undefined);
    const a = recording();
    await assertProperty(a.property, 30, { seed: 7 });
    const b = recording();
    fc.assert(b.property, { numRuns: 30, seed: 7 });
    expect(a.seen).toEqual(b.seen);
    // No yield inside one fc.assert: every case ran before the event loop turned.
    expect(new Set(a.loopTurns).size).toBe(1);
  });

  it('a soak: chunks of the fallback, each on its own seed, with the event loop run between them', async () => {
    vi.stubEnv('DIRTYTRACK_PROPERTY_RUNS', '70');
    const r = recording();
    await assertProperty(r.property, 30, { seed: 7 });
    expect(r.seen).toHaveLength(70);
    // Chunks of 30, 30 and 10: the loop turned between them and not inside one.
    const chunks = [r.loopTurns.slice(0, 30), r.loopTurns.slice(30, 60), r.loopTurns.slice(60)];
    expect(chunks.map((c) => new Set(c).size)).toEqual([1, 1, 1]);
    expect(chunks[0]?.[0]).toBeLessThan(chunks[1]?.[0] as number);
    expect(chunks[1]?.[0]).toBeLessThan(chunks[2]?.[0] as number);
    // The first chunk is the default run's cases; the next ones are not a repeat of it.
    const first = recording();
    fc.assert(first.property, { numRuns: 30, seed: 7 });
    expect(r.seen.slice(0, 30)).toEqual(first.seen);
    expect(r.seen.slice(30, 60)).not.toEqual(first.seen);
  });

  it('an explicit total runs in chunks of the fallback too, whatever DIRTYTRACK_PROPERTY_RUNS says', async () => {
    vi.stubEnv('DIRTYTRACK_PROPERTY_RUNS', undefined);
    const r = recording();
    await assertProperty(r.property, 30, { seed: 7 }, 70);
    expect(r.seen).toHaveLength(70);
    expect(new Set(r.loopTurns).size).toBe(3);
  });

  it('fails as fc.assert does, with the seed to replay', async () => {
    vi.stubEnv('DIRTYTRACK_PROPERTY_RUNS', '100');
    const failing = fc.property(fc.integer({ min: 0, max: 1000 }), (n) => n < 900);
    await expect(assertProperty(failing, 40, { seed: 3 })).rejects.toThrow(/seed: -?\d+/);
  });
});
