#!/usr/bin/env node
/* global process, URL */
// Compiles src/live/record-copy.wat (the repo's scripts/wat-module.mjs, with wabt) and writes
// src/live/record-copy.wasm.ts, the module bytes as a base64 constant.
// `pnpm --filter @dirtytrack/migration kernels`. record-ram.test.ts imports `buildRecordCopy` to
// check the committed file equals a fresh build.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';
import { compileWat } from '../../../scripts/wat-module.mjs';

export const WAT_PATH = fileURLToPath(new URL('../src/live/record-copy.wat', import.meta.url));
export const OUT_PATH = fileURLToPath(new URL('../src/live/record-copy.wasm.ts', import.meta.url));

/** Compiles the .wat; returns the module bytes, their base64 and the text of the generated .ts file. */
export function buildRecordCopy() {
  return compileWat(wabtInit, WAT_PATH, {
    source: 'src/live/record-copy.wat',
    command: 'pnpm --filter @dirtytrack/migration kernels',
    script: 'scripts/build-record-copy.mjs',
    module: 'record-copy',
    constName: 'RECORD_COPY_WASM_BASE64',
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { bytes, text } = await buildRecordCopy();
  writeFileSync(OUT_PATH, text);
  process.stdout.write(`wrote ${OUT_PATH} (${bytes.length} bytes of wasm)\n`);
}
