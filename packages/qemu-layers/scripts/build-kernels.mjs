#!/usr/bin/env node
/* global process, URL */
// Compiles src/kernels/bitmap-kernels.wat with wabt (the WebAssembly Binary Toolkit's official JS
// build; simd, threads and bulk-memory enabled) and writes src/kernels/bitmap-kernels.wasm.ts,
// the module bytes as a base64 constant. `pnpm --filter @dirtytrack/qemu-layers kernels`.
// bitmap-kernels.test.ts imports `buildKernels` to check the committed file equals a fresh build.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';

export const WAT_PATH = fileURLToPath(new URL('../src/kernels/bitmap-kernels.wat', import.meta.url));
export const OUT_PATH = fileURLToPath(new URL('../src/kernels/bitmap-kernels.wasm.ts', import.meta.url));
export const FEATURES = { simd: true, threads: true, bulk_memory: true };

/** Compiles the .wat; returns the module bytes, their base64 and the text of the generated .ts file. */
export async function buildKernels() {
  const wabt = await wabtInit();
  const source = readFileSync(WAT_PATH, 'utf8');
  const module = wabt.parseWat('bitmap-kernels.wat', source, FEATURES);
  try {
    module.resolveNames();
    module.validate(FEATURES); // validate takes the features too (wabt.js; its .d.ts omits the argument)
    const { buffer } = module.toBinary({ log: false, write_debug_names: false });
    const bytes = Uint8Array.from(buffer);
    const base64 = Buffer.from(bytes).toString('base64');
    return { bytes, base64, text: render(base64, bytes.length) };
  } finally {
    module.destroy();
  }
}

function render(base64, length) {
  return [
    '// GENERATED FILE — do not edit. Source: src/kernels/bitmap-kernels.wat.',
    '// Regenerate with `pnpm --filter @dirtytrack/qemu-layers kernels` (scripts/build-kernels.mjs:',
    '// wabt wat2wasm with simd, threads and bulk-memory). A test fails if this drifts from the .wat.',
    '',
    `/** The compiled bitmap-kernels module (${length} bytes), base64. */`,
    'export const BITMAP_KERNELS_WASM_BASE64 =',
    `  '${base64}';`,
    '',
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { bytes, text } = await buildKernels();
  writeFileSync(OUT_PATH, text);
  process.stdout.write(`wrote ${OUT_PATH} (${bytes.length} bytes of wasm)\n`);
}
