;; wasmkv's Extism kernel: the memory functions of `extism:host/env`, run as wasm beside the plugin
;; (a call from the plugin is then a wasm-to-wasm call, not a trip through Python).
;;
;; Memory layout (all little-endian u64):
;;   0  input length      8  top (where the next block goes)
;;  16  limit (the highest address a block may end at)   24  input offset
;;  32  blocks: each a 16-byte header [length][offset XOR MAGIC] before its data.
;; Offsets are data addresses; 0 means none. The header fields below 32 are out of the plugin's
;; reach: load/store refuse addresses under 32 (as they refuse any outside the memory: loads give 0,
;; stores are dropped, as Extism's kernel does). The host writes the header and the input block.
(module
  (memory (export "memory") 1)
  (global $MAGIC i64 (i64.const 0x45787469736d4b56))

  (func $size (result i64) (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))

  ;; Whether [off, off + n) lies in the memory, above the header.
  (func $fits (param $off i64) (param $n i64) (result i32)
    (if (i64.lt_u (local.get $off) (i64.const 32)) (then (return (i32.const 0))))
    (if (i64.gt_u (local.get $off) (call $size)) (then (return (i32.const 0))))
    (i64.le_u (i64.add (local.get $off) (local.get $n)) (call $size)))

  ;; The length of the live block whose data starts at off, else 0.
  (func $block_len (param $off i64) (result i64)
    (if (i64.lt_u (local.get $off) (i64.const 48)) (then (return (i64.const 0))))
    (if (i64.gt_u (local.get $off) (i64.load (i32.const 8))) (then (return (i64.const 0))))
    (if (i64.ne (i64.load (i32.wrap_i64 (i64.sub (local.get $off) (i64.const 8))))
                (i64.xor (local.get $off) (global.get $MAGIC)))
      (then (return (i64.const 0))))
    (i64.load (i32.wrap_i64 (i64.sub (local.get $off) (i64.const 16)))))

  (func $round8 (param $n i64) (result i64)
    (i64.and (i64.add (local.get $n) (i64.const 7)) (i64.const -8)))

  (func (export "alloc") (param $n i64) (result i64) (local $top i64) (local $end i64)
    (if (i64.eqz (local.get $n)) (then (return (i64.const 0))))
    (if (i64.gt_u (local.get $n) (i64.load (i32.const 16))) (then (return (i64.const 0))))
    (local.set $top (i64.load (i32.const 8)))
    (local.set $end (i64.add (i64.add (local.get $top) (i64.const 16)) (call $round8 (local.get $n))))
    (if (i64.gt_u (local.get $end) (i64.load (i32.const 16))) (then (return (i64.const 0))))
    (if (i64.gt_u (local.get $end) (call $size))
      (then
        (if (i32.eq (memory.grow (i32.wrap_i64 (i64.shr_u (i64.add (i64.sub (local.get $end) (call $size))
                                                                    (i64.const 65535))
                                                           (i64.const 16))))
                    (i32.const -1))
          (then (return (i64.const 0))))))
    (i64.store (i32.wrap_i64 (local.get $top)) (local.get $n))
    (i64.store (i32.wrap_i64 (i64.add (local.get $top) (i64.const 8)))
               (i64.xor (i64.add (local.get $top) (i64.const 16)) (global.get $MAGIC)))
    (i64.store (i32.const 8) (local.get $end))
    (i64.add (local.get $top) (i64.const 16)))

  (func (export "free") (param $off i64) (local $n i64)
    (local.set $n (call $block_len (local.get $off)))
    (if (i64.eqz (local.get $n)) (then (return)))
    (i64.store (i32.wrap_i64 (i64.sub (local.get $off) (i64.const 8))) (i64.const 0))
    (if (i64.eq (local.get $off) (i64.load (i32.const 24))) (then (i64.store (i32.const 0) (i64.const 0))))
    ;; The top block's space is reused at once; others when the call ends.
    (if (i64.eq (i64.add (local.get $off) (call $round8 (local.get $n))) (i64.load (i32.const 8)))
      (then (i64.store (i32.const 8) (i64.sub (local.get $off) (i64.const 16))))))

  (func (export "length") (param $off i64) (result i64) (call $block_len (local.get $off)))
  (func (export "length_unsafe") (param $off i64) (result i64) (call $block_len (local.get $off)))

  (func (export "load_u8") (param $off i64) (result i32)
    (if (result i32) (call $fits (local.get $off) (i64.const 1))
      (then (i32.load8_u (i32.wrap_i64 (local.get $off)))) (else (i32.const 0))))
  (func (export "load_u64") (param $off i64) (result i64)
    (if (result i64) (call $fits (local.get $off) (i64.const 8))
      (then (i64.load (i32.wrap_i64 (local.get $off)))) (else (i64.const 0))))
  (func (export "store_u8") (param $off i64) (param $v i32)
    (if (call $fits (local.get $off) (i64.const 1))
      (then (i32.store8 (i32.wrap_i64 (local.get $off)) (local.get $v)))))
  (func (export "store_u64") (param $off i64) (param $v i64)
    (if (call $fits (local.get $off) (i64.const 8))
      (then (i64.store (i32.wrap_i64 (local.get $off)) (local.get $v)))))

  (func (export "input_length") (result i64) (i64.load (i32.const 0)))
  (func (export "input_offset") (result i64) (i64.load (i32.const 24)))
  (func (export "input_load_u8") (param $i i64) (result i32)
    (if (result i32) (i64.lt_u (local.get $i) (i64.load (i32.const 0)))
      (then (i32.load8_u (i32.wrap_i64 (i64.add (i64.load (i32.const 24)) (local.get $i)))))
      (else (i32.const 0))))
  (func (export "input_load_u64") (param $i i64) (result i64)
    (if (result i64) (i32.and (i64.lt_u (local.get $i) (i64.load (i32.const 0)))
                              (i64.le_u (i64.add (local.get $i) (i64.const 8)) (i64.load (i32.const 0))))
      (then (i64.load (i32.wrap_i64 (i64.add (i64.load (i32.const 24)) (local.get $i)))))
      (else (i64.const 0))))

  (func (export "memory_bytes") (result i64) (call $size))
  (func (export "reset") (i64.store (i32.const 8) (i64.const 32)) (i64.store (i32.const 0) (i64.const 0))))
