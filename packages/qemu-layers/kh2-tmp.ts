import wabtInit from 'wabt';
import { readFileSync } from 'node:fs';
const FEATURES = { simd: true, threads: true, bulk_memory: true };
const wabt = await wabtInit();
const m = wabt.parseWat('x.wat', readFileSync('/tmp/s29/exp.wat', 'utf8'), FEATURES);
m.resolveNames(); m.validate(FEATURES as any);
const bytes = Uint8Array.from(m.toBinary({ log: false, write_debug_names: false }).buffer);
const mem = new WebAssembly.Memory({ initial: 64, maximum: 64, shared: true });
const k = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory: mem } }).exports as any;
const u32 = new Uint32Array(mem.buffer), u8 = new Uint8Array(mem.buffer);
const span = Number(process.argv[2] ?? 256); // lines per bitmap region
const tw = 0, bw = 65536 * 8, ts = 65536 * 16, bs = ts + 65536, lines = bs + 65536, scratch = lines + 65536 * 2;
const nl = span;
for (let q = 0; q < nl; q++) { u32[(lines >> 2) + q] = q; u8[ts + q] = 0xff; u32.fill(0xffffffff, (tw + q * 64) / 4, (tw + q * 64 + 64) / 4); }
const calls = Math.ceil(41943 / nl);
const run = (f: () => void) => { const ts2: number[] = []; for (let r = 0; r < 15; r++) { const t0 = process.hrtime.bigint(); for (let c = 0; c < calls; c++) f(); ts2.push(Number(process.hrtime.bigint() - t0) / 1e6); } ts2.sort((a, b) => a - b); return ts2[7]!.toFixed(3); };
console.log('lines', nl, 'calls', calls);
console.log('merge', run(() => { u8.fill(0, bs, bs + nl); k.merge_summary(tw, ts, bw, bs, 1 << 14, 65536, lines, nl, scratch); }));
console.log('merge (bmap dirty)', run(() => { k.merge_summary(tw, ts, bw, bs, 1 << 14, 65536, lines, nl, scratch); }));
console.log('touch', run(() => k.touch_only(tw, bw, lines, nl)));
for (const mode of [5, 7]) console.log('v48m' + mode, run(() => k.merge_list_v(tw, ts, bw, bs, lines, nl, 48, mode, scratch)));
