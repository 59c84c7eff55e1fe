;; dirtytrack's verification page hash (WIRE.md, Verification) in WebAssembly SIMD128: eight
;; 4 KiB pages at a time, each in one i32 lane of two groups of four, so the hash's two long
;; dependency chains (a multiply per word and lane) run eight pages wide. The same function as
;; wire.ts's JS `pageHashes`, bit for bit (page-hash.test.ts checks it on random pages):
;;
;;   a = 0x811c9dc5; b = 0x9e3779b9
;;   for each little-endian u32 word w: a = (a ^ w) * 0x01000193
;;                                      b = (b ^ (b >>> 15)) * 0x2c1b3c6d + w
;;   x = a ^ b * 0x9e3779b1; hi = fmix32(x); lo = fmix32(b ^ x)
;;
;; The module has its own memory, a scratch the caller copies pages into: pages at byte 0 (at
;; most 64, 256 KiB: they stay in L2 while hashed), hashes out after them. The loads read four
;; words of each of four pages and transpose them (eight shuffles), so each vector holds one word
;; of four pages.
;;
;; Build: `pnpm --filter @dirtytrack/migration kernels` (scripts/build-page-hash.mjs, wabt with
;; simd, threads and bulk-memory) regenerates page-hash.wasm.ts; a test checks that the
;; committed bytes equal a fresh build of this file.
(module
  (memory (export "memory") 5)

  ;; MurmurHash3's fmix32 on four lanes.
  (func $fmix (param $h v128) (result v128)
    (local.set $h (v128.xor (local.get $h) (i32x4.shr_u (local.get $h) (i32.const 16))))
    (local.set $h (i32x4.mul (local.get $h) (v128.const i32x4 0x85ebca6b 0x85ebca6b 0x85ebca6b 0x85ebca6b)))
    (local.set $h (v128.xor (local.get $h) (i32x4.shr_u (local.get $h) (i32.const 13))))
    (local.set $h (i32x4.mul (local.get $h) (v128.const i32x4 0xc2b2ae35 0xc2b2ae35 0xc2b2ae35 0xc2b2ae35)))
    (v128.xor (local.get $h) (i32x4.shr_u (local.get $h) (i32.const 16))))

  ;; The 8 pages at $ptr (consecutive) into 16 u32 at $out: page k's hi at $out + 8k, lo at + 4.
  (func $hash8 (param $ptr i32) (param $out i32)
    (local $a0 v128) (local $b0 v128) (local $a1 v128) (local $b1 v128)
    (local $w v128) (local $x v128) (local $hi v128) (local $lo v128)
    (local $r0 v128) (local $r1 v128) (local $r2 v128) (local $r3 v128)
    (local $t0 v128) (local $t1 v128) (local $t2 v128) (local $t3 v128)
    (local $i i32)
    (local.set $a0 (v128.const i32x4 0x811c9dc5 0x811c9dc5 0x811c9dc5 0x811c9dc5))
    (local.set $b0 (v128.const i32x4 0x9e3779b9 0x9e3779b9 0x9e3779b9 0x9e3779b9))
    (local.set $a1 (local.get $a0))
    (local.set $b1 (local.get $b0))
    (local.set $i (local.get $ptr))
    (loop $words
      ;; Group 0 (pages 0-3), then group 1 (pages 4-7): words i..i+3 of each page, transposed
      ;; into columns (word i of the four pages, then i+1, ...), each column one step of a and b.
      (local.set $r0 (v128.load (local.get $i)))
      (local.set $r1 (v128.load offset=4096 (local.get $i)))
      (local.set $r2 (v128.load offset=8192 (local.get $i)))
      (local.set $r3 (v128.load offset=12288 (local.get $i)))
      (local.set $t0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $r0) (local.get $r1)))
      (local.set $t1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $r0) (local.get $r1)))
      (local.set $t2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $r2) (local.get $r3)))
      (local.set $t3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $r2) (local.get $r3)))
      (local.set $w (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t0) (local.get $t2)))
      (local.set $a0 (i32x4.mul (v128.xor (local.get $a0) (local.get $w)) (v128.const i32x4 0x01000193 0x01000193 0x01000193 0x01000193)))
      (local.set $b0 (i32x4.add (i32x4.mul (v128.xor (local.get $b0) (i32x4.shr_u (local.get $b0) (i32.const 15))) (v128.const i32x4 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d)) (local.get $w)))
      (local.set $w (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t0) (local.get $t2)))
      (local.set $a0 (i32x4.mul (v128.xor (local.get $a0) (local.get $w)) (v128.const i32x4 0x01000193 0x01000193 0x01000193 0x01000193)))
      (local.set $b0 (i32x4.add (i32x4.mul (v128.xor (local.get $b0) (i32x4.shr_u (local.get $b0) (i32.const 15))) (v128.const i32x4 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d)) (local.get $w)))
      (local.set $w (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t1) (local.get $t3)))
      (local.set $a0 (i32x4.mul (v128.xor (local.get $a0) (local.get $w)) (v128.const i32x4 0x01000193 0x01000193 0x01000193 0x01000193)))
      (local.set $b0 (i32x4.add (i32x4.mul (v128.xor (local.get $b0) (i32x4.shr_u (local.get $b0) (i32.const 15))) (v128.const i32x4 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d)) (local.get $w)))
      (local.set $w (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t1) (local.get $t3)))
      (local.set $a0 (i32x4.mul (v128.xor (local.get $a0) (local.get $w)) (v128.const i32x4 0x01000193 0x01000193 0x01000193 0x01000193)))
      (local.set $b0 (i32x4.add (i32x4.mul (v128.xor (local.get $b0) (i32x4.shr_u (local.get $b0) (i32.const 15))) (v128.const i32x4 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d)) (local.get $w)))
      (local.set $r0 (v128.load offset=16384 (local.get $i)))
      (local.set $r1 (v128.load offset=20480 (local.get $i)))
      (local.set $r2 (v128.load offset=24576 (local.get $i)))
      (local.set $r3 (v128.load offset=28672 (local.get $i)))
      (local.set $t0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $r0) (local.get $r1)))
      (local.set $t1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $r0) (local.get $r1)))
      (local.set $t2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $r2) (local.get $r3)))
      (local.set $t3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $r2) (local.get $r3)))
      (local.set $w (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t0) (local.get $t2)))
      (local.set $a1 (i32x4.mul (v128.xor (local.get $a1) (local.get $w)) (v128.const i32x4 0x01000193 0x01000193 0x01000193 0x01000193)))
      (local.set $b1 (i32x4.add (i32x4.mul (v128.xor (local.get $b1) (i32x4.shr_u (local.get $b1) (i32.const 15))) (v128.const i32x4 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d)) (local.get $w)))
      (local.set $w (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t0) (local.get $t2)))
      (local.set $a1 (i32x4.mul (v128.xor (local.get $a1) (local.get $w)) (v128.const i32x4 0x01000193 0x01000193 0x01000193 0x01000193)))
      (local.set $b1 (i32x4.add (i32x4.mul (v128.xor (local.get $b1) (i32x4.shr_u (local.get $b1) (i32.const 15))) (v128.const i32x4 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d)) (local.get $w)))
      (local.set $w (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t1) (local.get $t3)))
      (local.set $a1 (i32x4.mul (v128.xor (local.get $a1) (local.get $w)) (v128.const i32x4 0x01000193 0x01000193 0x01000193 0x01000193)))
      (local.set $b1 (i32x4.add (i32x4.mul (v128.xor (local.get $b1) (i32x4.shr_u (local.get $b1) (i32.const 15))) (v128.const i32x4 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d)) (local.get $w)))
      (local.set $w (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t1) (local.get $t3)))
      (local.set $a1 (i32x4.mul (v128.xor (local.get $a1) (local.get $w)) (v128.const i32x4 0x01000193 0x01000193 0x01000193 0x01000193)))
      (local.set $b1 (i32x4.add (i32x4.mul (v128.xor (local.get $b1) (i32x4.shr_u (local.get $b1) (i32.const 15))) (v128.const i32x4 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d 0x2c1b3c6d)) (local.get $w)))

      (local.set $i (i32.add (local.get $i) (i32.const 16)))
      (br_if $words (i32.lt_u (local.get $i) (i32.add (local.get $ptr) (i32.const 4096)))))
    ;; The final mix; hi and lo interleaved per page.
    (local.set $x (v128.xor (local.get $a0) (i32x4.mul (local.get $b0) (v128.const i32x4 0x9e3779b1 0x9e3779b1 0x9e3779b1 0x9e3779b1))))
    (local.set $hi (call $fmix (local.get $x)))
    (local.set $lo (call $fmix (v128.xor (local.get $b0) (local.get $x))))
    (v128.store offset=0 (local.get $out) (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $hi) (local.get $lo)))
    (v128.store offset=16 (local.get $out) (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $hi) (local.get $lo)))
    (local.set $x (v128.xor (local.get $a1) (i32x4.mul (local.get $b1) (v128.const i32x4 0x9e3779b1 0x9e3779b1 0x9e3779b1 0x9e3779b1))))
    (local.set $hi (call $fmix (local.get $x)))
    (local.set $lo (call $fmix (v128.xor (local.get $b1) (local.get $x))))
    (v128.store offset=32 (local.get $out) (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $hi) (local.get $lo)))
    (v128.store offset=48 (local.get $out) (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $hi) (local.get $lo))))

  ;; $count pages at $ptr (a multiple of 8) into $out, 8 bytes a page (hi, lo).
  (func (export "hash_pages") (param $ptr i32) (param $count i32) (param $out i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (i32.shl (local.get $count) (i32.const 12))))
    (block $done
      (loop $groups
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (call $hash8 (local.get $ptr) (local.get $out))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 32768)))
        (local.set $out (i32.add (local.get $out) (i32.const 64)))
        (br $groups)))))
