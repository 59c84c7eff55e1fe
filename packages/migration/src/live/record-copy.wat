;; Precopy's page records copied into guest RAM by WebAssembly (record-ram.ts).
;;
;; Guest RAM is this module's memory from byte 0 (a shared WebAssembly.Memory, whose buffer is the
;; SharedArrayBuffer every other part of the destination sees), and the main connection's read
;; buffer lies in the same memory, after the RAM. So one `memory.copy` — V8 makes it a real
;; memmove — takes a page from the read buffer to its place in RAM, where JavaScript can only copy
;; into a SharedArrayBuffer with relaxed 8-byte loads and stores (~4x slower from L1, measured).
;;
;; place_pages(at, len, ram) -> bytes
;;   Walks the records at [at, at + len) from the first: while a whole record is there and it is
;;   an 8-byte big-endian header `offset | PAGE | CONTINUE` (flags exactly 0x28) whose page lies
;;   inside [0, ram), copies its 4096 bytes to `offset`. Returns the bytes of the records copied
;;   (a multiple of 4104; 0 when the first is anything else). It stops at the first byte it does
;;   not take — another record kind, a page outside RAM, a header whose high word is not 0
;;   (offsets of 4 GiB or more: this memory cannot hold them), a record cut by the end — and
;;   leaves it to the JavaScript decoder, which takes it or reports it. Nothing is written
;;   outside [0, ram); the caller keeps [at, at + len) inside the memory, after the RAM.
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; A big-endian 32-bit word as a number.
  (func $be32 (param $x i32) (result i32)
    (i32.or
      (i32.or
        (i32.shl (local.get $x) (i32.const 24))
        (i32.shl (i32.and (local.get $x) (i32.const 0xff00)) (i32.const 8)))
      (i32.or
        (i32.and (i32.shr_u (local.get $x) (i32.const 8)) (i32.const 0xff00))
        (i32.shr_u (local.get $x) (i32.const 24)))))

  (func (export "place_pages") (param $at i32) (param $len i32) (param $ram i32) (result i32)
    (local $off i32) (local $rec i32) (local $lo i32) (local $page i32)
    (block $done
      (loop $next
        ;; a whole record (8 + 4096 bytes) left
        (br_if $done (i32.lt_u (i32.sub (local.get $len) (local.get $off)) (i32.const 4104)))
        (local.set $rec (i32.add (local.get $at) (local.get $off)))
        ;; the header's high word must be 0
        (br_if $done (i32.ne (i32.load (local.get $rec)) (i32.const 0)))
        (local.set $lo (call $be32 (i32.load offset=4 (local.get $rec))))
        ;; flags PAGE | CONTINUE, nothing else
        (br_if $done (i32.ne (i32.and (local.get $lo) (i32.const 0xfff)) (i32.const 0x28)))
        (local.set $page (i32.and (local.get $lo) (i32.const 0xfffff000)))
        ;; the page inside RAM: page <= ram - 4096 (ram is at least one page)
        (br_if $done (i32.lt_u (local.get $ram) (i32.const 4096)))
        (br_if $done (i32.gt_u (local.get $page) (i32.sub (local.get $ram) (i32.const 4096))))
        (memory.copy
          (local.get $page)
          (i32.add (local.get $rec) (i32.const 8))
          (i32.const 4096))
        (local.set $off (i32.add (local.get $off) (i32.const 4104)))
        (br $next)))
    (local.get $off)))
