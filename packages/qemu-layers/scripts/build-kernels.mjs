#!/usr/bin/env node
/* global process, URL */
// Compiles src/kernels/bitmap-kernels.wat (the repo's scripts/wat-module.mjs, with wabt) and
// writes src/kernels/bitmap-kernels.wasm.ts, the module bytes as a base64 constant.
// `pnpm --filter @dirtytrack/qemu-layers kernels`. bitmap-kernels.test.ts imports `buildKernels`
// to check the committed file equals a fresh build.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';
import { compileWat, FEATURES } from '../../../scripts/wat-module.mjs';

export { FEATURES };
export const WAT_PATH = fileURLToPath(new URL('../src/kernels/bitmap-kernels.wat', import.meta.url));
export const OUT_PATH = fileURLToPath(new URL('../src/kernels/bitmap-kernels.wasm.ts', import.meta.url));

/** Compiles the .wat; returns the module bytes, their base64 and the text of the generated .ts file. */
export function buildKernels() {
  return compileWat(wabtInit, WAT_PATH, {
    source: 'src/kernels/bitmap-kernels.wat',
    command: 'pnpm --filter @dirtytrack/qemu-layers kernels',
    script: 'scripts/build-kernels.mjs',
    module: 'bitmap-kernels',
    constName: 'BITMAP_KERNELS_WASM_BASE64',
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { bytes, text } = await buildKernels();
  writeFileSync(OUT_PATH, text);
  process.stdout.write(`wrote ${OUT_PATH} (${bytes.length} bytes of wasm)\n`);
}
