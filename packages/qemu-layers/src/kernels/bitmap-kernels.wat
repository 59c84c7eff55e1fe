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
        (br $rloop))))

;; The floor under merge_summary's line-list path, for the bench (bench/merge-floor.bench.ts):
  ;; only the loads any merge through a one-bit-per-word summary must do for each of the $nlines
  ;; lines at $lines (summary byte offsets, as merge_summary takes them) — with $what bit 1, one
  ;; load of the line in T ($tw) and in bmap ($bw); with bit 2, one of its byte in each summary
  ;; ($ts, $bs). No store but their sum, at $scratch + 272 (merge_lines' slot), so no engine may
  ;; drop the loads.
  (func (export "touch_lines") (param $tw i32) (param $ts i32) (param $bw i32) (param $bs i32)
        (param $lines i32) (param $nlines i32) (param $what i32) (param $scratch i32)
    (local $k i32) (local $l i32) (local $off i32) (local $sink i32)
    (block $done
      (loop $touch
        (br_if $done (i32.ge_u (local.get $k) (local.get $nlines)))
        (local.set $l (i32.load (i32.add (local.get $lines) (i32.shl (local.get $k) (i32.const 2)))))
        (if (i32.and (local.get $what) (i32.const 1))
          (then
            (local.set $off (i32.shl (local.get $l) (i32.const 6)))
            (local.set $sink
              (i32.add (local.get $sink)
                (i32.add (i32.load (i32.add (local.get $tw) (local.get $off)))
                  (i32.load (i32.add (local.get $bw) (local.get $off))))))))
        (if (i32.and (local.get $what) (i32.const 2))
          (then
            (local.set $sink
              (i32.add (local.get $sink)
                (i32.add (i32.load8_u (i32.add (local.get $ts) (local.get $l)))
                  (i32.load8_u (i32.add (local.get $bs) (local.get $l))))))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $touch)))
    (i32.store offset=272 (local.get $scratch) (local.get $sink)))

  ;; bmap |= T through T's summary: the 'fused' strategy's merge of a harvested buffer T into a
  ;; bmap that is not empty (qemu-layers.ts, mergeTaken, is the plain-JS twin: the same bits, the
  ;; same counts). $tw/$bw: T's and bmap's words; $ts/$bs: their summaries (bit k set when 64-bit
  ;; word k may be non-zero; set for every non-zero word); $n: summary words; $words: 64-bit words
  ;; of each bitmap; $lines/$nlines: T's line list (swap-dirty-log.ts, DirtyLogBuffer.lines: the
  ;; summary byte offsets of its dirty lines, each once), or $nlines = -1 when there is none or it
  ;; overflowed; $scratch: 16 + 64 * 4 + 4 bytes of this memory the kernel may use. bmap's
  ;; summary gains T's bits. Writes two f64 at $scratch: the pages of T that were already set in
  ;; bmap (popcount of T & bmap in the lines where bmap's summary was non-zero), then the 64-bit
  ;; words visited (one per set bit of T's summary). With a line list, T also leaves all zero
  ;; (its listed lines and their summary bytes, which are all it has): its lines are in cache
  ;; right after their merge, where zeroing them later, as the next sync's spare, means scanning
  ;; its whole summary (4 MiB at 8T) for what is left.
  ;;
  ;; It works by 64-byte line: a byte of a summary names the 8 words of one line of its bitmap.
  ;; With a line list the lines are merged 48 at a time straight from it, and the summary is not
  ;; scanned. Otherwise the summary is read 16 bytes at a time; a chunk of all-ones over a clean chunk of bmap's
  ;; summary starts a run of such chunks, merged with one memory.copy. Otherwise each non-zero
  ;; byte of the chunk is one line to merge, gathered without a branch in the common case (one
  ;; line per chunk). Every 48 or more lines the batch is merged in two passes (merge_lines).
  (func (export "merge_summary") (param $tw i32) (param $ts i32) (param $bw i32) (param $bs i32)
        (param $n i32) (param $words i32) (param $lines i32) (param $nlines i32) (param $scratch i32)
    (local $j i32) (local $end i32) (local $vend i32) (local $e i32) (local $q i32) (local $batch i32)
    (local $mask i32) (local $c v128) (local $r i64) (local $overlap i64) (local $copy i64)
    (if (i32.ne (local.get $nlines) (i32.const -1))
      (then
        (block $ldone
          (loop $list
            (br_if $ldone (i32.ge_u (local.get $j) (local.get $nlines)))
            (local.set $q (i32.sub (local.get $nlines) (local.get $j)))
            (if (i32.gt_u (local.get $q) (i32.const 48)) (then (local.set $q (i32.const 48))))
            (local.set $r
              (call $merge_lines (local.get $tw) (local.get $ts) (local.get $bw) (local.get $bs)
                (i32.add (local.get $lines) (i32.shl (local.get $j) (i32.const 2))) (local.get $q)
                (local.get $words) (local.get $scratch) (i32.const 1)))
            (local.set $overlap (i64.add (local.get $overlap) (i64.and (local.get $r) (i64.const 0xffffffff))))
            (local.set $copy (i64.add (local.get $copy) (i64.shr_u (local.get $r) (i64.const 32))))
            (local.set $j (i32.add (local.get $j) (local.get $q)))
            (br $list)))
        (f64.store (local.get $scratch) (f64.convert_i64_u (local.get $overlap)))
        (f64.store offset=8 (local.get $scratch) (f64.convert_i64_u (local.get $copy)))
        (return)))
    (local.set $batch (i32.add (local.get $scratch) (i32.const 16)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (local.set $vend (i32.and (local.get $end) (i32.const -16)))
    (block $vdone
      (loop $scan
        (br_if $vdone (i32.ge_u (local.get $j) (local.get $vend)))
        (local.set $c (v128.load align=4 (i32.add (local.get $ts) (local.get $j))))
        (local.set $mask (i8x16.bitmask (i8x16.ne (local.get $c) (v128.const i64x2 0 0))))
        (if (i32.eq (local.get $mask) (i32.const 0xffff))
          (then
            (if (i32.and (i8x16.all_true (i8x16.eq (local.get $c) (v128.const i64x2 -1 -1)))
                  (i32.eqz (v128.any_true (v128.load align=4 (i32.add (local.get $bs) (local.get $j))))))
              (then
                ;; 128 dirty words over 128 clean ones, and as many such chunks as follow: one copy.
                (local.set $e (i32.add (local.get $j) (i32.const 16)))
                (block $rdone
                  (loop $run
                    (br_if $rdone (i32.ge_u (local.get $e) (local.get $vend)))
                    (br_if $rdone
                      (i32.eqz (i8x16.all_true
                        (i8x16.eq (v128.load align=4 (i32.add (local.get $ts) (local.get $e)))
                          (v128.const i64x2 -1 -1)))))
                    (br_if $rdone (v128.any_true (v128.load align=4 (i32.add (local.get $bs) (local.get $e)))))
                    (local.set $e (i32.add (local.get $e) (i32.const 16)))
                    (br $run)))
                (memory.copy
                  (i32.add (local.get $bw) (i32.shl (local.get $j) (i32.const 6)))
                  (i32.add (local.get $tw) (i32.shl (local.get $j) (i32.const 6)))
                  (i32.shl (i32.sub (local.get $e) (local.get $j)) (i32.const 6)))
                (memory.fill (i32.add (local.get $bs) (local.get $j)) (i32.const 255)
                  (i32.sub (local.get $e) (local.get $j)))
                (local.set $copy
                  (i64.add (local.get $copy)
                    (i64.extend_i32_u (i32.shl (i32.sub (local.get $e) (local.get $j)) (i32.const 3)))))
                (local.set $j (local.get $e))
                (br $scan)))))
        ;; The chunk's first dirty line, stored whether or not there is one (q counts it only if
        ;; there is): at 1% dirty most chunks are clean, a branch here would mispredict.
        (i32.store (i32.add (local.get $batch) (i32.shl (local.get $q) (i32.const 2)))
          (i32.add (local.get $j) (i32.ctz (i32.or (local.get $mask) (i32.const 0x10000)))))
        (local.set $q (i32.add (local.get $q) (i32.ne (local.get $mask) (i32.const 0))))
        (local.set $mask (i32.and (local.get $mask) (i32.sub (local.get $mask) (i32.const 1))))
        (if (local.get $mask)
          (then
            (loop $more
              (i32.store (i32.add (local.get $batch) (i32.shl (local.get $q) (i32.const 2)))
                (i32.add (local.get $j) (i32.ctz (local.get $mask))))
              (local.set $q (i32.add (local.get $q) (i32.const 1)))
              (local.set $mask (i32.and (local.get $mask) (i32.sub (local.get $mask) (i32.const 1))))
              (br_if $more (local.get $mask)))))
        (if (i32.ge_u (local.get $q) (i32.const 48))
          (then
            (local.set $r
              (call $merge_lines (local.get $tw) (local.get $ts) (local.get $bw) (local.get $bs)
                (local.get $batch) (local.get $q) (local.get $words) (local.get $scratch) (i32.const 0)))
            (local.set $overlap (i64.add (local.get $overlap) (i64.and (local.get $r) (i64.const 0xffffffff))))
            (local.set $copy (i64.add (local.get $copy) (i64.shr_u (local.get $r) (i64.const 32))))
            (local.set $q (i32.const 0))))
        (local.set $j (i32.add (local.get $j) (i32.const 16)))
        (br $scan)))
    ;; The last 0-15 summary bytes, one at a time (at most 47 + 15 lines in the batch).
    (block $tdone
      (loop $tail
        (br_if $tdone (i32.ge_u (local.get $j) (local.get $end)))
        (if (i32.load8_u (i32.add (local.get $ts) (local.get $j)))
          (then
            (i32.store (i32.add (local.get $batch) (i32.shl (local.get $q) (i32.const 2))) (local.get $j))
            (local.set $q (i32.add (local.get $q) (i32.const 1)))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $tail)))
    (local.set $r
      (call $merge_lines (local.get $tw) (local.get $ts) (local.get $bw) (local.get $bs)
        (local.get $batch) (local.get $q) (local.get $words) (local.get $scratch) (i32.const 0)))
    (local.set $overlap (i64.add (local.get $overlap) (i64.and (local.get $r) (i64.const 0xffffffff))))
    (local.set $copy (i64.add (local.get $copy) (i64.shr_u (local.get $r) (i64.const 32))))
    (f64.store (local.get $scratch) (f64.convert_i64_u (local.get $overlap)))
    (f64.store offset=8 (local.get $scratch) (f64.convert_i64_u (local.get $copy))))

  ;; One line's dirty words, one 64-bit word at a time: $tb names them (bit i: the word at $base +
  ;; 8 i, non-zero), $bsj names bmap's non-zero ones among them; $zero: zero each word of T once
  ;; merged. Returns the overlap.
  (func $merge_word (param $tw i32) (param $bw i32) (param $base i32) (param $tb i32) (param $bsj i32)
        (param $zero i32) (result i64)
    (local $low i32) (local $off i32) (local $t64 i64) (local $b64 i64) (local $overlap i64)
    (loop $bits
      (local.set $low (i32.and (local.get $tb) (i32.sub (i32.const 0) (local.get $tb))))
      (local.set $off (i32.add (local.get $base) (i32.shl (i32.ctz (local.get $tb)) (i32.const 3))))
      (local.set $t64 (i64.load (i32.add (local.get $tw) (local.get $off))))
      (if (i32.and (local.get $bsj) (local.get $low))
        (then
          (local.set $b64 (i64.load (i32.add (local.get $bw) (local.get $off))))
          (local.set $overlap
            (i64.add (local.get $overlap) (i64.popcnt (i64.and (local.get $t64) (local.get $b64)))))
          (i64.store (i32.add (local.get $bw) (local.get $off)) (i64.or (local.get $b64) (local.get $t64))))
        (else
          (i64.store (i32.add (local.get $bw) (local.get $off)) (local.get $t64))))
      (if (local.get $zero) (then (i64.store (i32.add (local.get $tw) (local.get $off)) (i64.const 0))))
      (local.set $tb (i32.xor (local.get $tb) (local.get $low)))
      (br_if $bits (local.get $tb)))
    (local.get $overlap))

  ;; Merges the $q lines whose summary byte offsets are at $batch (merge_summary's batch) in two
  ;; passes. First one load of each line in T and in bmap and of its byte of bmap's summary:
  ;; independent loads, so their cache misses overlap (at 1% dirty each is a miss). Then the
  ;; merge, which finds them in cache: bmap's summary byte gains T's, the line is OR-ed in with
  ;; four v128 steps, and where bmap's byte was non-zero the overlap is counted first. A line that
  ;; would reach past the bitmaps' last word (a length not a multiple of 8 words) goes word by word.
  ;; $zero: the lines come from T's line list (T's summary was not scanned), so the first pass
  ;; loads each line's byte of T's summary too — left to the second pass it cost 0.6-0.8 ms of the
  ;; 8T 1% merge's ~3 — and T's line and summary byte are zeroed once merged. (After a summary
  ;; scan the extra load is not only useless: the 8T spread merge took twice as long with it.)
  ;; Returns the overlap in the low 32 bits and the words visited in the high 32 (at most 64 lines:
  ;; 32768 and 512).
  (func $merge_lines (param $tw i32) (param $ts i32) (param $bw i32) (param $bs i32) (param $batch i32)
        (param $q i32) (param $words i32) (param $scratch i32) (param $zero i32) (result i64)
    (local $k i32) (local $l i32) (local $off i32) (local $sink i32) (local $t8 i32) (local $b8 i32)
    (local $pa i32) (local $pb i32) (local $full i32) (local $lim i32) (local $acc v128) (local $overlap i64) (local $copy i32)
    (if (local.get $zero)
      (then
        (block $ldone
          (loop $ltouch
            (br_if $ldone (i32.ge_u (local.get $k) (local.get $q)))
            (local.set $l (i32.load (i32.add (local.get $batch) (i32.shl (local.get $k) (i32.const 2)))))
            (local.set $off (i32.shl (local.get $l) (i32.const 6)))
            (local.set $sink
              (i32.add
                (i32.add (local.get $sink)
                  (i32.add (i32.load8_u (i32.add (local.get $ts) (local.get $l)))
                    (i32.load8_u (i32.add (local.get $bs) (local.get $l)))))
                (i32.add (i32.load (i32.add (local.get $tw) (local.get $off)))
                  (i32.load (i32.add (local.get $bw) (local.get $off))))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $ltouch))))
      (else
        (block $tdone
          (loop $touch
            (br_if $tdone (i32.ge_u (local.get $k) (local.get $q)))
            (local.set $l (i32.load (i32.add (local.get $batch) (i32.shl (local.get $k) (i32.const 2)))))
            (local.set $off (i32.shl (local.get $l) (i32.const 6)))
            (local.set $sink
              (i32.add (i32.add (local.get $sink) (i32.load8_u (i32.add (local.get $bs) (local.get $l))))
                (i32.add (i32.load (i32.add (local.get $tw) (local.get $off)))
                  (i32.load (i32.add (local.get $bw) (local.get $off))))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $touch)))))
    ;; The loads' sum, so no engine may drop them (nothing reads it).
    (i32.store offset=272 (local.get $scratch) (local.get $sink))
    (local.set $full (i32.shr_u (local.get $words) (i32.const 3)))
    (local.set $lim (i32.shr_u (i32.add (local.get $words) (i32.const 7)) (i32.const 3)))
    (local.set $k (i32.const 0))
    (block $mdone
      (loop $merge
        (br_if $mdone (i32.ge_u (local.get $k) (local.get $q)))
        (local.set $l (i32.load (i32.add (local.get $batch) (i32.shl (local.get $k) (i32.const 2)))))
        ;; A line past the bitmaps' end (a corrupt list) is not written.
        (if (i32.lt_u (local.get $l) (local.get $lim))
          (then
            (local.set $t8 (i32.load8_u (i32.add (local.get $ts) (local.get $l))))
            (local.set $b8 (i32.load8_u (i32.add (local.get $bs) (local.get $l))))
            (i32.store8 (i32.add (local.get $bs) (local.get $l)) (i32.or (local.get $b8) (local.get $t8)))
            (local.set $copy (i32.add (local.get $copy) (i32.popcnt (local.get $t8))))
            (local.set $off (i32.shl (local.get $l) (i32.const 6)))
            (if (i32.ge_u (local.get $l) (local.get $full))
              (then
                ;; (merge_word needs a dirty word: a line always has one, checked all the same)
                (if (local.get $t8)
                  (then
                    (local.set $overlap
                      (i64.add (local.get $overlap)
                        (call $merge_word (local.get $tw) (local.get $bw) (local.get $off) (local.get $t8)
                          (local.get $b8) (local.get $zero)))))))
              (else
                (local.set $pa (i32.add (local.get $tw) (local.get $off)))
                (local.set $pb (i32.add (local.get $bw) (local.get $off)))
                (if (local.get $b8)
                  (then
                    (local.set $acc (call $popcnt32x4 (v128.and (v128.load (local.get $pa)) (v128.load (local.get $pb)))))
                    (local.set $acc
                      (i32x4.add (local.get $acc)
                        (call $popcnt32x4
                          (v128.and (v128.load offset=16 (local.get $pa)) (v128.load offset=16 (local.get $pb))))))
                    (local.set $acc
                      (i32x4.add (local.get $acc)
                        (call $popcnt32x4
                          (v128.and (v128.load offset=32 (local.get $pa)) (v128.load offset=32 (local.get $pb))))))
                    (local.set $acc
                      (i32x4.add (local.get $acc)
                        (call $popcnt32x4
                          (v128.and (v128.load offset=48 (local.get $pa)) (v128.load offset=48 (local.get $pb))))))
                    (local.set $overlap
                      (i64.add (local.get $overlap) (i64.extend_i32_u (call $hsum (local.get $acc)))))))
                (v128.store (local.get $pb) (v128.or (v128.load (local.get $pb)) (v128.load (local.get $pa))))
                (v128.store offset=16 (local.get $pb)
                  (v128.or (v128.load offset=16 (local.get $pb)) (v128.load offset=16 (local.get $pa))))
                (v128.store offset=32 (local.get $pb)
                  (v128.or (v128.load offset=32 (local.get $pb)) (v128.load offset=32 (local.get $pa))))
                (v128.store offset=48 (local.get $pb)
                  (v128.or (v128.load offset=48 (local.get $pb)) (v128.load offset=48 (local.get $pa))))
                (if (local.get $zero)
                  (then
                    (v128.store (local.get $pa) (v128.const i64x2 0 0))
                    (v128.store offset=16 (local.get $pa) (v128.const i64x2 0 0))
                    (v128.store offset=32 (local.get $pa) (v128.const i64x2 0 0))
                    (v128.store offset=48 (local.get $pa) (v128.const i64x2 0 0))))))
            (if (local.get $zero) (then (i32.store8 (i32.add (local.get $ts) (local.get $l)) (i32.const 0))))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $merge)))
    (i64.or (local.get $overlap) (i64.shl (i64.extend_i32_u (local.get $copy)) (i64.const 32))))

  ;; Zeroes a buffer through its summary (swap-dirty-log.ts, zeroBuffer, is the JS twin): every
  ;; 64-bit word of $w its summary $s names (a set bit), and the summary; runs of all-ones summary
  ;; words with one memory.fill. $n: summary words.
  (func (export "zero_summary") (param $w i32) (param $s i32) (param $n i32)
    (local $j i32) (local $end i32) (local $vend i32) (local $tb i32) (local $e i32) (local $base i32)
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (local.set $vend (i32.and (local.get $end) (i32.const -16)))
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $j) (local.get $end)))
        ;; 64 zero bytes of summary (512 clean 64-bit words) at a time: what is left in a spare
        ;; after the round sent its pages is a few bits, and this is most of the scan.
        (if (i32.le_u (i32.add (local.get $j) (i32.const 64)) (local.get $vend))
          (then
            (local.set $base (i32.add (local.get $s) (local.get $j)))
            (if (i32.eqz (v128.any_true
                  (v128.or
                    (v128.or (v128.load align=4 (local.get $base)) (v128.load offset=16 align=4 (local.get $base)))
                    (v128.or (v128.load offset=32 align=4 (local.get $base))
                      (v128.load offset=48 align=4 (local.get $base))))))
              (then
                (local.set $j (i32.add (local.get $j) (i32.const 64)))
                (br $scan)))))
        (if (i32.lt_u (local.get $j) (local.get $vend))
          (then
            (if (i32.eqz (v128.any_true (v128.load align=4 (i32.add (local.get $s) (local.get $j)))))
              (then
                (local.set $j (i32.add (local.get $j) (i32.const 16)))
                (br $scan)))))
        (local.set $tb (i32.load (i32.add (local.get $s) (local.get $j))))
        (if (i32.eq (local.get $tb) (i32.const -1))
          (then
            (local.set $e (i32.add (local.get $j) (i32.const 4)))
            (block $rdone
              (loop $run
                (br_if $rdone (i32.ge_u (local.get $e) (local.get $end)))
                (br_if $rdone (i32.ne (i32.load (i32.add (local.get $s) (local.get $e))) (i32.const -1)))
                (local.set $e (i32.add (local.get $e) (i32.const 4)))
                (br $run)))
            (memory.fill (i32.add (local.get $w) (i32.shl (local.get $j) (i32.const 6))) (i32.const 0)
              (i32.shl (i32.sub (local.get $e) (local.get $j)) (i32.const 6)))
            (memory.fill (i32.add (local.get $s) (local.get $j)) (i32.const 0)
              (i32.sub (local.get $e) (local.get $j)))
            (local.set $j (local.get $e))
            (br $scan)))
        (if (local.get $tb)
          (then
            (i32.store (i32.add (local.get $s) (local.get $j)) (i32.const 0))
            (local.set $base (i32.add (local.get $w) (i32.shl (local.get $j) (i32.const 6))))
            (loop $bits
              (i64.store
                (i32.add (local.get $base) (i32.shl (i32.ctz (local.get $tb)) (i32.const 3)))
                (i64.const 0))
              (local.set $tb (i32.and (local.get $tb) (i32.sub (local.get $tb) (i32.const 1))))
              (br_if $bits (local.get $tb)))))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br $scan))))
)
