import wabtInit from 'wabt';
import { readFileSync } from 'node:fs';
import { adviseHugePages } from './src/huge-pages.ts';
import { anonHugePagesKiB } from './src/huge-pages.ts';
const FEATURES = { simd: true, threads: true, bulk_memory: true };
const wabt = await wabtInit();
const m = wabt.parseWat('x.wat', readFileSync(process.argv[2] ?? '/tmp/s29/exp.wat', 'utf8'), FEATURES);
m.resolveNames(); m.validate(FEATURES as any);
const bytes = Uint8Array.from(m.toBinary({ log: false, write_debug_names: false }).buffer);
const MiB = 2 ** 20;
const B = 256 * MiB, S = B / 64; // summary: one bit per 64-bit word, one byte per line
const gap = MiB + 4096;
const tw = 0, bw = B + gap, ts = 2 * B + 2 * gap, bs = ts + S + 4096, lines = bs + S + 4096;
const nl = 41943;
const scratch = lines + nl * 4 + 4096;
const total = scratch + 65536;
const pages = Math.ceil(total / 65536);
const h0 = anonHugePagesKiB()!;
const mem = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
console.log('advise', adviseHugePages(mem.buffer));
const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory: mem } });
const k = inst.exports as any;
const u8 = new Uint8Array(mem.buffer);
const u32 = new Uint32Array(mem.buffer);
u8.fill(0, 0, total);
console.log('huge KiB', anonHugePagesKiB()! - h0);
// pattern: nl random distinct lines of B/64, sorted (the list holds summary byte offsets = line indexes)
let s = 0x5eed; const picked = new Set<number>(); const NL = B / 64;
while (picked.size < nl) { s = (Math.imul(s, 1103515245) + 12345) >>> 0; picked.add(s % NL); }
const list = [...picked].sort((a, b) => a - b);
const evict = new Uint8Array(256 * MiB); const evict2 = new Uint8Array(256 * MiB); evict.fill(1);
function prepare() {
  // T lines all-ones, ts bytes 0xff; bmap clean except line 0 word 0; list filled
  for (let q = 0; q < nl; q++) { const l = list[q]!; u32.fill(0xffffffff, (tw + l * 64) / 4, (tw + l * 64 + 64) / 4); u8[ts + l] = 0xff; u32[(lines >> 2) + q] = l; u32.fill(0, (bw + l * 64) / 4, (bw + l * 64 + 64) / 4); u8[bs + l] = 0; }
  if (!process.env.HOT) evict2.set(evict);
}
const fns: Record<string, () => void> = {
  merge: () => k.merge_summary(tw, ts, bw, bs, S / 4, B / 8, lines, nl, scratch),
  touch: () => k.touch_only(tw, bw, lines, nl),
  ...Object.fromEntries([48, 96, 100000].flatMap((bt) => [0, 1, 2, 3, 4, 5, 6, 7].map((x) => [`y${bt}f${x}`, () => k.merge_list_y(tw, ts, bw, bs, lines, nl, B / 8, scratch, bt, x)]))),
  ...Object.fromEntries([16, 24, 32, 48, 64, 96, 128, 256].flatMap((bt) => [0, 1].map((x) => [`b${bt}x${x}`, () => k.merge_list_b(tw, ts, bw, bs, lines, nl, B / 8, scratch, bt, x)]))),
  nt: () => k.merge_lines_nt(tw, ts, bw, bs, lines, nl, B / 8, scratch),
  ...Object.fromEntries([16, 32, 48, 96, 100000].flatMap((bt) => [0, 1, 3, 4, 5, 7].map((mode) => [`v${bt}m${mode}`, () => k.merge_list_v(tw, ts, bw, bs, lines, nl, bt, mode, scratch)]))),
};
prepare(); console.log("list", u32[(lines >> 2)], u32[(lines >> 2) + 1], u32[(lines >> 2) + nl - 1], mem.buffer.byteLength, total);
for (const n of []) { try { console.log(n, k.touch_only(tw, bw, lines, n)); } catch (e) { console.log(n, String(e)); } }
const which = (process.argv[3] ?? 'merge,touch').split(',');
const reps = 9; const res: Record<string, number[]> = {};
for (let r = 0; r < reps + 2; r++) for (const w of which) {
  prepare();
  const t0 = process.hrtime.bigint(); fns[w]!(); const t = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r >= 2) (res[w] ??= []).push(t);
}
for (const w of which) { const a = res[w]!.sort((x, y) => x - y); console.log(w, 'median', a[reps >> 1]!.toFixed(3), a.map((x) => x.toFixed(2)).join(' ')); }
