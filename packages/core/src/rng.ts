import { DirtytrackError } from './errors.js';

/**
 * A seeded pseudo-random generator. Components never use the global random source: they take an `Rng`,
 * so the same seed gives the same run, byte for byte.
 */
export interface Rng {
  /** The seed this generator (or the root it was forked from) started with. */
  readonly seed: number;
  /** A uniformly distributed unsigned 32-bit integer. */
  nextU32(): number;
  /** A float in [0, 1) with 53 random bits. */
  nextFloat(): number;
  /** An integer in [0, n) for 1 ≤ n ≤ 2^53, without modulo bias. */
  nextInt(n: number): number;
  /**
   * Fills `out[0..count)` with integers in [0, n) — the batch form the model plane uses so a
   * workload draws a quantum's pages in one call.
   */
  fillInts(out: Uint32Array, count: number, n: number): void;
  /** An independent generator derived from this one's state and `stream` (e.g. a vCPU index). */
  fork(stream: number): Rng;
  /**
   * The 128-bit state (four 32-bit words): {@link restore} on any generator of this algorithm
   * continues this one's sequence from here — how a migrated vCPU resumes its draws.
   */
  state(): Uint32Array;
  /** Sets the state to four words taken with {@link state}. */
  restore(state: ArrayLike<number>): void;
}

/**
 * Creates an `Rng` from a 32-bit seed. The algorithm is sfc32 (Chris Doty-Humphrey's Small Fast
 * Counting generator): 128 bits of state, passes PractRand to 2^42 bytes, and needs only 32-bit
 * integer arithmetic, which JS does fast. The seed is expanded with splitmix32.
 */
export function createRng(seed: number): Rng {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) {
    throw new DirtytrackError('invalid-argument', `seed: ${seed} is not an integer in [0, 2^32)`, {
      component: 'rng',
      field: 'seed',
    });
  }
  let s = seed >>> 0;
  const splitmix = (): number => {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  return sfc32(seed >>> 0, splitmix(), splitmix(), splitmix(), splitmix());
}

function sfc32(seed: number, a0: number, b0: number, c0: number, d0: number): Rng {
  let a = a0 | 0;
  let b = b0 | 0;
  let c = c0 | 0;
  let d = d0 | 0;
  const nextU32 = (): number => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  // Warm up so that close seeds diverge before the first draw.
  for (let i = 0; i < 12; i++) nextU32();
  const nextFloat = (): number => ((nextU32() >>> 5) * 67108864 + (nextU32() >>> 6)) / 9007199254740992;
  const nextInt = (n: number): number => {
    if (!(n >= 1 && n <= 2 ** 53 && Number.isInteger(n))) {
      throw new DirtytrackError('invalid-argument', `nextInt: bound ${n} is not an integer in [1, 2^53]`, {
        component: 'rng',
      });
    }
    if (n <= 0x1_0000_0000) {
      // Reject the top partial copy of [0, n) in 2^32, then reduce: exact, no modulo bias.
      const limit = 0x1_0000_0000 - (0x1_0000_0000 % n);
      for (;;) {
        const x = nextU32();
        if (x < limit) return x % n;
      }
    }
    return Math.floor(nextFloat() * n);
  };
  return {
    seed,
    nextU32,
    nextFloat,
    nextInt,
    fillInts(out, count, n) {
      if (!(Number.isInteger(count) && count >= 0)) {
        throw new DirtytrackError('invalid-argument', `fillInts: count ${count} is not an integer >= 0`, {
          component: 'rng',
        });
      }
      if (count > out.length) {
        throw new DirtytrackError(
          'out-of-range',
          `fillInts: count ${count} exceeds buffer length ${out.length}`,
          {
            component: 'rng',
          },
        );
      }
      if (n !== 0x1_0000_0000 && !(n >= 1 && n < 0x1_0000_0000 && Number.isInteger(n))) {
        throw new DirtytrackError('invalid-argument', `fillInts: bound ${n} is not an integer in [1, 2^32]`, {
          component: 'rng',
        });
      }
      // The model plane's hot loop (one draw per simulated page write): nextU32's step inlined on
      // local copies of the state, written back at the end — the same sequence as nextU32 calls.
      let la = a;
      let lb = b;
      let lc = c;
      let ld = d;
      if (n === 0x1_0000_0000) {
        for (let i = 0; i < count; i++) {
          const t = (((la + lb) | 0) + ld) | 0;
          ld = (ld + 1) | 0;
          la = lb ^ (lb >>> 9);
          lb = (lc + (lc << 3)) | 0;
          lc = (lc << 21) | (lc >>> 11);
          lc = (lc + t) | 0;
          out[i] = t >>> 0;
        }
      } else {
        // Reject draws at or above the last whole copy of [0, n) in 2^32, then reduce. The
        // remainder is x - floor(x / n) * n: exact for 32-bit operands (the quotient's rounding
        // error is below 1/n), and about twice as fast as `%`, which V8 computes in floating
        // point (fmod) for values above 2^31.
        const limit = 0x1_0000_0000 - (0x1_0000_0000 % n);
        for (let i = 0; i < count; i++) {
          let x: number;
          do {
            const t = (((la + lb) | 0) + ld) | 0;
            ld = (ld + 1) | 0;
            la = lb ^ (lb >>> 9);
            lb = (lc + (lc << 3)) | 0;
            lc = (lc << 21) | (lc >>> 11);
            lc = (lc + t) | 0;
            x = t >>> 0;
          } while (x >= limit);
          out[i] = x - Math.floor(x / n) * n;
        }
      }
      a = la;
      b = lb;
      c = lc;
      d = ld;
    },
    fork(stream) {
      return sfc32(seed, nextU32() ^ Math.imul(stream, 0x9e3779b9), nextU32(), nextU32(), stream >>> 0);
    },
    state() {
      return Uint32Array.of(a, b, c, d);
    },
    restore(state) {
      if (
        state.length !== 4 ||
        !Array.from({ length: 4 }, (_, i) => state[i]).every((w) => Number.isInteger(w))
      ) {
        throw new DirtytrackError('invalid-argument', 'restore: a state is four 32-bit integers', {
          component: 'rng',
          field: 'state',
        });
      }
      a = (state[0] as number) | 0;
      b = (state[1] as number) | 0;
      c = (state[2] as number) | 0;
      d = (state[3] as number) | 0;
    },
  };
}
