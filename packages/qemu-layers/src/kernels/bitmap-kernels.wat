;; WebAssembly SIMD128 bitmap kernels for dirtytrack (KVM-layout bitmaps: little-endian bit order,
;; lengths padded to 64-bit words). Every pointer is a byte offset into the imported shared memory;
;; every length is in 32-bit words. Each kernel handles 4 words per v128 step, then a scalar tail,
;; so any word count works (Bitmap always passes an even one).
;;
;; Build: `pnpm --filter @dirtytrack/qemu-layers kernels` (scripts/build-kernels.mjs, wabt with the
;; simd, threads and bulk-memory features) regenerates bitmap-kernels.wasm.ts; a test checks that
;; the committed bytes equal a fresh build of this file.
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; Per-lane popcount of four i32 lanes: bytes, then pairwise widening adds.
  (func $popcnt32x4 (param $x v128) (result v128)
    (i32x4.extadd_pairwise_i16x8_u
      (i16x8.extadd_pairwise_i8x16_u (i8x16.popcnt (local.get $x)))))

  ;; Horizontal sum of four i32 lanes (wrapping).
  (func $hsum (param $x v128) (result i32)
    (i32.add
      (i32.add (i32x4.extract_lane 0 (local.get $x)) (i32x4.extract_lane 1 (local.get $x)))
      (i32.add (i32x4.extract_lane 2 (local.get $x)) (i32x4.extract_lane 3 (local.get $x)))))

  ;; dst |= src; src = 0. Returns the bits that went 0 -> 1 in dst: popcount(src & ~dst_old).
  ;; Blocks of 4 zero source words are skipped (no loads of dst, no stores).
  (func (export "or_and_zero") (param $src i32) (param $dst i32) (param $words i32) (result i32)
    (local $vend i32) (local $end i32) (local $s v128) (local $d v128) (local $acc v128)
    (local $sw i32) (local $dw i32) (local $fresh i32)
    (local.set $vend (i32.add (local.get $src) (i32.shl (i32.and (local.get $words) (i32.const -4)) (i32.const 2))))
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $words) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $src) (local.get $vend)))
        (local.set $s (v128.load align=8 (local.get $src)))
        (if (v128.any_true (local.get $s))
          (then
            (local.set $d (v128.load align=8 (local.get $dst)))
            (v128.store align=8 (local.get $dst) (v128.or (local.get $d) (local.get $s)))
            (v128.store align=8 (local.get $src) (v128.const i64x2 0 0))
            (local.set $acc
              (i32x4.add (local.get $acc) (i32x4.extadd_pairwise_i16x8_u (i16x8.extadd_pairwise_i8x16_u
                  (i8x16.popcnt (v128.andnot (local.get $s) (local.get $d)))))))))
        (local.set $src (i32.add (local.get $src) (i32.const 16)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
        (br $vloop)))
    (local.set $fresh (call $hsum (local.get $acc)))
    (block $sdone
      (loop $sloop
        (br_if $sdone (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $sw (i32.load (local.get $src)))
        (if (local.get $sw)
          (then
            (local.set $dw (i32.load (local.get $dst)))
            (i32.store (local.get $dst) (i32.or (local.get $dw) (local.get $sw)))
            (i32.store (local.get $src) (i32.const 0))
            (local.set $fresh
              (i32.add (local.get $fresh)
                (i32.popcnt (i32.and (local.get $sw) (i32.xor (local.get $dw) (i32.const -1))))))))
        (local.set $src (i32.add (local.get $src) (i32.const 4)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 4)))
        (br $sloop)))
    (local.get $fresh))

  ;; OR `bits` into the summary word holding 64-bit word `k` (bits already shifted into place).
  (func $summary_or (param $summary i32) (param $k i32) (param $bits i32)
    (local $p i32)
    (local.set $p (i32.add (local.get $summary) (i32.shl (i32.shr_u (local.get $k) (i32.const 5)) (i32.const 2))))
    (i32.store (local.get $p) (i32.or (i32.load (local.get $p)) (local.get $bits))))

  ;; As or_and_zero, and sets bit k of the summary bitmap at `summary` for every 64-bit word k
  ;; (counted from dst) whose source word was non-zero, i.e. every dst word that received bits.
  ;; Zero 64-bit word pairs (one v128) are skipped; summary bits are gathered in a register and
  ;; OR-ed into memory once per 32 64-bit words.
  (func (export "or_and_zero_summary")
    (param $src i32) (param $dst i32) (param $words i32) (param $summary i32) (result i32)
    (local $vend i32) (local $end i32) (local $s v128) (local $d v128) (local $acc v128)
    (local $mask i32) (local $k i32) (local $pending i32) (local $t i32)
    (local $sw i32) (local $dw i32) (local $fresh i32)
    (local.set $vend (i32.add (local.get $src) (i32.shl (i32.and (local.get $words) (i32.const -4)) (i32.const 2))))
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $words) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $src) (local.get $vend)))
        (local.set $s (v128.load align=8 (local.get $src)))
        ;; bit 0: 64-bit word k non-zero, bit 1: word k+1 non-zero
        (local.set $mask (i64x2.bitmask (i64x2.ne (local.get $s) (v128.const i64x2 0 0))))
        (if (local.get $mask)
          (then
            (local.set $d (v128.load align=8 (local.get $dst)))
            (v128.store align=8 (local.get $dst) (v128.or (local.get $d) (local.get $s)))
            (v128.store align=8 (local.get $src) (v128.const i64x2 0 0))
            (local.set $acc
              (i32x4.add (local.get $acc) (i32x4.extadd_pairwise_i16x8_u (i16x8.extadd_pairwise_i8x16_u
                  (i8x16.popcnt (v128.andnot (local.get $s) (local.get $d)))))))
            (local.set $pending
              (i32.or (local.get $pending)
                (i32.shl (local.get $mask) (i32.and (local.get $k) (i32.const 31)))))))
        (local.set $k (i32.add (local.get $k) (i32.const 2)))
        (if (i32.eqz (i32.and (local.get $k) (i32.const 31)))
          (then
            (if (local.get $pending)
              (then
                (call $summary_or (local.get $summary) (i32.sub (local.get $k) (i32.const 1)) (local.get $pending))
                (local.set $pending (i32.const 0))))))
        (local.set $src (i32.add (local.get $src) (i32.const 16)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
        (br $vloop)))
    (local.set $fresh (call $hsum (local.get $acc)))
    ;; Scalar tail (fewer than 4 words), one 32-bit word at a time: tail word t belongs to the
    ;; 64-bit word k + t/2, which shares a summary word with k (k is even, so k + 1 never starts one).
    (local.set $t (i32.const 0))
    (block $sdone
      (loop $sloop
        (br_if $sdone (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $sw (i32.load (local.get $src)))
        (if (local.get $sw)
          (then
            (local.set $dw (i32.load (local.get $dst)))
            (i32.store (local.get $dst) (i32.or (local.get $dw) (local.get $sw)))
            (i32.store (local.get $src) (i32.const 0))
            (local.set $fresh
              (i32.add (local.get $fresh)
                (i32.popcnt (i32.and (local.get $sw) (i32.xor (local.get $dw) (i32.const -1))))))
            (local.set $pending
              (i32.or (local.get $pending)
                (i32.shl (i32.const 1)
                  (i32.and (i32.add (local.get $k) (i32.shr_u (local.get $t) (i32.const 1))) (i32.const 31)))))))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 4)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 4)))
        (br $sloop)))
    (if (local.get $pending)
      (then (call $summary_or (local.get $summary) (local.get $k) (local.get $pending))))
    (local.get $fresh))

  ;; Number of set bits in `words` 32-bit words at `ptr`.
  (func (export "popcount") (param $ptr i32) (param $words i32) (result i32)
    (local $vend i32) (local $end i32) (local $acc v128) (local $n i32)
    (local.set $vend (i32.add (local.get $ptr) (i32.shl (i32.and (local.get $words) (i32.const -4)) (i32.const 2))))
    (local.set $end (i32.add (local.get $ptr) (i32.shl (local.get $words) (i32.const 2))))
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.ge_u (local.get $ptr) (local.get $vend)))
        (local.set $acc
          (i32x4.add (local.get $acc) (call $popcnt32x4 (v128.load align=8 (local.get $ptr)))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 16)))
        (br $vloop)))
    (local.set $n (call $hsum (local.get $acc)))
    (block $sdone
      (loop $sloop
        (br_if $sdone (i32.ge_u (local.get $ptr) (local.get $end)))
        (local.set $n (i32.add (local.get $n) (i32.popcnt (i32.load (local.get $ptr)))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 4)))
        (br $sloop)))
    (local.get $n))

  ;; The first set bit at or after `from` (unsigned) in `words` 32-bit words at `ptr`, or -1.
  (func (export "find_next_set") (param $ptr i32) (param $words i32) (param $from i32) (result i32)
    (local $i i32) (local $x i32)
    (local.set $i (i32.shr_u (local.get $from) (i32.const 5)))
    (if (i32.ge_u (local.get $i) (local.get $words)) (then (return (i32.const -1))))
    ;; first word, bits below `from` masked off
    (local.set $x
      (i32.and (i32.load (i32.add (local.get $ptr) (i32.shl (local.get $i) (i32.const 2))))
        (i32.shl (i32.const -1) (i32.and (local.get $from) (i32.const 31)))))
    (if (local.get $x)
      (then (return (i32.add (i32.shl (local.get $i) (i32.const 5)) (i32.ctz (local.get $x))))))
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    ;; skip all-zero blocks of 4 words
    (block $vdone
      (loop $vloop
        (br_if $vdone (i32.gt_u (i32.add (local.get $i) (i32.const 4)) (local.get $words)))
        (br_if $vdone
          (v128.any_true (v128.load align=4 (i32.add (local.get $ptr) (i32.shl (local.get $i) (i32.const 2))))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $vloop)))
    ;; the non-zero block (or the tail), word by word
    (block $sdone
      (loop $sloop
        (br_if $sdone (i32.ge_u (local.get $i) (local.get $words)))
        (local.set $x (i32.load (i32.add (local.get $ptr) (i32.shl (local.get $i) (i32.const 2)))))
        (if (local.get $x)
          (then (return (i32.add (i32.shl (local.get $i) (i32.const 5)) (i32.ctz (local.get $x))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $sloop)))
    (i32.const -1))

  ;; dst = src (regions may overlap).
  (func (export "copy") (param $src i32) (param $dst i32) (param $words i32)
    (memory.copy (local.get $dst) (local.get $src) (i32.shl (local.get $words) (i32.const 2))))

  ;; `reps` times: dst = src (memory.copy). With xchg_into, the slides' cache-resident comparison
  ;; of a copy against per-word xchg, both looping inside WebAssembly (no JS call per pass).
  (func (export "copy_repeat") (param $src i32) (param $dst i32) (param $words i32) (param $reps i32)
    (block $rdone
      (loop $rloop
        (br_if $rdone (i32.eqz (local.get $reps)))
        (memory.copy (local.get $dst) (local.get $src) (i32.shl (local.get $words) (i32.const 2)))
        (local.set $reps (i32.sub (local.get $reps) (i32.const 1)))
        (br $rloop))))

  ;; `reps` times, per 64-bit word i: dst[i] = xchg(src[i], 0) — KVM's GET_DIRTY_LOG loop
  ;; (`mask = xchg(&dirty_bitmap[i], 0)`) with i64.atomic.rmw.xchg, a locked exchange on x86.
  ;; Every word is exchanged, zero or not. `words` counts 32-bit words (even; 8-byte aligned).
  (func (export "xchg_into") (param $src i32) (param $dst i32) (param $words i32) (param $reps i32)
    (local $i i32) (local $end i32)
    (local.set $end (i32.shl (i32.shr_u (local.get $words) (i32.const 1)) (i32.const 3)))
    (block $rdone
      (loop $rloop
        (br_if $rdone (i32.eqz (local.get $reps)))
        (local.set $i (i32.const 0))
        (block $done
          (loop $loop
            (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
            (i64.store (i32.add (local.get $dst) (local.get $i))
              (i64.atomic.rmw.xchg (i32.add (local.get $src) (local.get $i)) (i64.const 0)))
            (local.set $i (i32.add (local.get $i) (i32.const 8)))
            (br $loop)))
        (local.set $reps (i32.sub (local.get $reps) (i32.const 1)))
        (br $rloop)))))
