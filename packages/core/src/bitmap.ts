import { DirtytrackError } from './errors.js';

/**
 * A dirty bitmap in KVM's layout: one bit per page, little-endian bit order (page n is bit n%8 of
 * byte n/8), length padded to a multiple of 64 pages (KVM's `unsigned long` words), padding bits
 * always 0. The `words` view is a `Uint32Array` over the same bytes; on a little-endian host its
 * bit numbering equals KVM's, so the buffer can be handed to `KVM_GET_DIRTY_LOG` as is.
 *
 * Bulk operations are word-wise; nothing here calls back once per page.
 */
export class Bitmap {
  /** Pages covered. Bits at or beyond `bits` are padding and stay 0. */
  readonly bits: number;
  /** 32-bit word view of the bitmap (2 words per KVM 64-bit word). */
  readonly words: Uint32Array;

  private constructor(words: Uint32Array, bits: number) {
    this.words = words;
    this.bits = bits;
  }

  /** Bytes a bitmap of `bits` pages occupies: `ALIGN(bits, 64) / 8`, as KVM allocates it. */
  static byteLength(bits: number): number {
    checkBits(bits);
    return Math.ceil(bits / 64) * 8;
  }

  /** A zeroed bitmap; `shared: true` backs it with a `SharedArrayBuffer` for other threads. */
  static create(bits: number, options: { shared?: boolean } = {}): Bitmap {
    const bytes = Bitmap.byteLength(bits);
    const buffer = options.shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
    return new Bitmap(new Uint32Array(buffer), bits);
  }

  /**
   * A bitmap over existing memory (e.g. a region of a shared buffer another thread owns).
   * The region must be 8-byte aligned and at least `byteLength(bits)` long; its padding bits
   * must already be 0.
   */
  static wrap(buffer: ArrayBufferLike, bits: number, byteOffset = 0): Bitmap {
    const bytes = Bitmap.byteLength(bits);
    if (byteOffset % 8 !== 0 || byteOffset < 0 || byteOffset + bytes > buffer.byteLength) {
      throw new DirtytrackError(
        'out-of-range',
        `wrap: ${bytes} bytes at offset ${byteOffset} do not fit an 8-byte-aligned region of a ${buffer.byteLength}-byte buffer`,
        { component: 'bitmap' },
      );
    }
    return new Bitmap(new Uint32Array(buffer, byteOffset, bytes / 4), bits);
  }

  /** The underlying buffer (an `ArrayBuffer` or a `SharedArrayBuffer`). */
  get buffer(): ArrayBufferLike {
    return this.words.buffer;
  }

  get byteLength(): number {
    return this.words.byteLength;
  }

  get shared(): boolean {
    return typeof SharedArrayBuffer !== 'undefined' && this.words.buffer instanceof SharedArrayBuffer;
  }

  test(page: number): boolean {
    this.check(page);
    return ((this.words[page >>> 5] as number) & (1 << (page & 31))) !== 0;
  }

  set(page: number): void {
    this.check(page);
    this.words[page >>> 5] = (this.words[page >>> 5] as number) | (1 << (page & 31));
  }

  clear(page: number): void {
    this.check(page);
    this.words[page >>> 5] = (this.words[page >>> 5] as number) & ~(1 << (page & 31));
  }

  /** `set_bit`: an atomic OR, safe against concurrent setters and collectors on other threads. */
  setAtomic(page: number): void {
    this.check(page);
    Atomics.or(this.words, page >>> 5, 1 << (page & 31));
  }

  /** `test_and_set_bit`: atomically sets the bit and returns whether it was already set. */
  testAndSet(page: number): boolean {
    this.check(page);
    const bit = 1 << (page & 31);
    return (Atomics.or(this.words, page >>> 5, bit) & bit) !== 0;
  }

  /** `test_and_clear_bit`: atomically clears the bit and returns whether it was set. */
  testAndClear(page: number): boolean {
    this.check(page);
    const bit = 1 << (page & 31);
    return (Atomics.and(this.words, page >>> 5, ~bit) & bit) !== 0;
  }

  /** Sets pages `[start, start + count)`, word-wise. */
  setRange(start: number, count: number): void {
    this.range(start, count, true);
  }

  /** Clears pages `[start, start + count)`, word-wise. */
  clearRange(start: number, count: number): void {
    this.range(start, count, false);
  }

  /** Sets every page (padding stays 0), as `INITIALLY_SET` and QEMU's migration setup do. */
  setAll(): void {
    this.range(0, this.bits, true);
  }

  clearAll(): void {
    this.words.fill(0);
  }

  /** `this |= src`. */
  or(src: Bitmap): void {
    this.same(src, 'or');
    const a = this.words;
    const b = src.words;
    for (let i = 0; i < a.length; i++) {
      const w = b[i] as number;
      if (w !== 0) a[i] = (a[i] as number) | w;
    }
  }

  /** `this &= ~src`. */
  andNot(src: Bitmap): void {
    this.same(src, 'andNot');
    const a = this.words;
    const b = src.words;
    for (let i = 0; i < a.length; i++) {
      const w = b[i] as number;
      if (w !== 0) a[i] = (a[i] as number) & ~w;
    }
  }

  /** `this = src` (a memcpy). */
  copyFrom(src: Bitmap): void {
    this.same(src, 'copyFrom');
    this.words.set(src.words);
  }

  /**
   * Moves every set bit of `this` into `dst` and leaves `this` zero; returns how many bits went
   * from 0 to 1 in `dst` (QEMU's "new dirty pages" count).
   *
   * `mode: 'xchg'` reads each non-zero word with an atomic exchange, as QEMU and KVM do, so a
   * concurrent `setAtomic` on another thread lands either in this collection or stays for the
   * next one — never lost. `mode: 'plain'` uses ordinary loads and stores: correct only while
   * no other thread can set bits (the slides' rwlock proposal, with the write lock held).
   *
   * `stats.words64`, when given, is increased by the number of non-zero 64-bit (KVM) words
   * taken, so callers that price the pass need not scan the bitmap a second time.
   */
  collectInto(dst: Bitmap, mode: 'xchg' | 'plain' = 'xchg', stats?: { words64: number }): number {
    this.same(dst, 'collectInto');
    const src = this.words;
    const out = dst.words;
    let fresh = 0;
    let words64 = 0;
    // An exchange on memory no other thread can see reads and zeroes exactly as a plain load and
    // store do, at several times the cost: 'xchg' is atomic only on shared memory. The plain
    // loop walks 64-bit words (the length is always even: padded to KVM's unsigned longs).
    if (!(mode === 'xchg' && this.shared)) {
      for (let i = 0; i < src.length; i += 2) {
        const lo = src[i] as number;
        const hi = src[i + 1] as number;
        if ((lo | hi) === 0) continue;
        words64++;
        if (lo !== 0) {
          src[i] = 0;
          const old = out[i] as number;
          fresh += popcount32(lo & ~old);
          out[i] = old | lo;
        }
        if (hi !== 0) {
          src[i + 1] = 0;
          const old = out[i + 1] as number;
          fresh += popcount32(hi & ~old);
          out[i + 1] = old | hi;
        }
      }
      if (stats !== undefined) stats.words64 += words64;
      return fresh;
    }
    let lowTaken = false;
    for (let i = 0; i < src.length; i++) {
      if (src[i] === 0) {
        if ((i & 1) === 0) lowTaken = false;
        continue;
      }
      // A 64-bit word counts once: at its low half, or at its high half if the low one was zero.
      if ((i & 1) === 0) {
        lowTaken = true;
        words64++;
      } else if (!lowTaken) {
        words64++;
      }
      const w = Atomics.exchange(src, i, 0);
      const old = out[i] as number;
      fresh += popcount32(w & ~old);
      out[i] = old | w;
    }
    if (stats !== undefined) stats.words64 += words64;
    return fresh;
  }

  /** Number of set bits. */
  popcount(): number {
    const w = this.words;
    let n = 0;
    for (let i = 0; i < w.length; i++) {
      const x = w[i] as number;
      if (x !== 0) n += popcount32(x);
    }
    return n;
  }

  /** The first set page at or after `from`, or -1 if there is none (`find_next_bit`). */
  findNextSet(from = 0): number {
    if (!Number.isInteger(from) || from < 0) this.check(from);
    if (from >= this.bits) return -1;
    const w = this.words;
    let i = from >>> 5;
    let x = ((w[i] as number) >>> (from & 31)) << (from & 31);
    for (;;) {
      if (x !== 0) {
        const page = i * 32 + ctz32(x);
        return page < this.bits ? page : -1;
      }
      if (++i >= w.length) return -1;
      x = w[i] as number;
    }
  }

  /**
   * Writes up to `out.length` set pages, starting at `from`, into `out`; returns how many it
   * wrote. Use `findNextSet(last + 1)` to continue. This is the batch iteration the model plane
   * uses; {@link Bitmap.setBits} is the convenient one.
   */
  collectSetBits(from: number, out: Uint32Array): number {
    let n = 0;
    let page = this.findNextSet(from);
    const w = this.words;
    while (page >= 0 && n < out.length) {
      let i = page >>> 5;
      let x = ((w[i] as number) >>> (page & 31)) << (page & 31);
      while (x !== 0 && n < out.length) {
        const p = i * 32 + ctz32(x);
        if (p >= this.bits) return n;
        out[n++] = p;
        x &= x - 1;
      }
      if (n >= out.length) break;
      i++;
      page = i * 32 < this.bits ? this.findNextSet(i * 32) : -1;
    }
    return n;
  }

  /** Iterates set pages in ascending order. */
  *setBits(from = 0): IterableIterator<number> {
    for (let p = this.findNextSet(from); p >= 0; p = this.findNextSet(p + 1)) yield p;
  }

  /** A fresh copy with the same kind of buffer. */
  clone(options: { shared?: boolean } = {}): Bitmap {
    const copy = Bitmap.create(this.bits, { shared: options.shared ?? this.shared });
    copy.words.set(this.words);
    return copy;
  }

  private check(page: number): void {
    if (!(page >= 0 && page < this.bits && Number.isInteger(page))) {
      throw new DirtytrackError('out-of-range', `page ${page} is outside [0, ${this.bits})`, {
        component: 'bitmap',
      });
    }
  }

  private same(other: Bitmap, op: string): void {
    if (other.bits !== this.bits) {
      throw new DirtytrackError(
        'invalid-argument',
        `${op}: bitmaps cover ${this.bits} and ${other.bits} pages`,
        {
          component: 'bitmap',
        },
      );
    }
  }

  private range(start: number, count: number, value: boolean): void {
    if (!(
      Number.isInteger(start) &&
      Number.isInteger(count) &&
      start >= 0 &&
      count >= 0 &&
      start + count <= this.bits
    )) {
      throw new DirtytrackError(
        'out-of-range',
        `range [${start}, ${start}+${count}) is outside [0, ${this.bits})`,
        {
          component: 'bitmap',
        },
      );
    }
    if (count === 0) return;
    const w = this.words;
    const end = start + count; // exclusive
    const first = start >>> 5;
    const last = (end - 1) >>> 5;
    const headMask = ~0 << (start & 31);
    const tailMask = ~0 >>> (31 - ((end - 1) & 31));
    if (first === last) {
      const m = headMask & tailMask;
      w[first] = value ? (w[first] as number) | m : (w[first] as number) & ~m;
      return;
    }
    w[first] = value ? (w[first] as number) | headMask : (w[first] as number) & ~headMask;
    // -1, not 0xffff_ffff: V8 fills with a small integer ~60× faster (memset) than with a heap number.
    w.fill(value ? -1 : 0, first + 1, last);
    w[last] = value ? (w[last] as number) | tailMask : (w[last] as number) & ~tailMask;
  }
}

/** Set bits in a 32-bit word (SWAR popcount). */
export function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x5555_5555);
  x = (x & 0x3333_3333) + ((x >>> 2) & 0x3333_3333);
  x = (x + (x >>> 4)) & 0x0f0f_0f0f;
  return Math.imul(x, 0x0101_0101) >>> 24;
}

/** Index of the lowest set bit of a non-zero 32-bit word. */
export function ctz32(x: number): number {
  return 31 - Math.clz32(x & -x);
}

function checkBits(bits: number): void {
  if (!(Number.isSafeInteger(bits) && bits >= 0 && bits <= 2 ** 32)) {
    throw new DirtytrackError(
      'invalid-argument',
      `bitmap size ${bits} pages is not an integer in [0, 2^32]`,
      {
        component: 'bitmap',
      },
    );
  }
}
