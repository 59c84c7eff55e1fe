/* global Buffer */
// The packages' WebAssembly builds share this: a .wat source compiled with wabt (the WebAssembly
// Binary Toolkit's official JS build; simd, threads and bulk-memory enabled) into a generated .ts
// file holding the module bytes as a base64 constant. Each package passes its own wabt (a
// devDependency there) and names; its test checks the committed file equals a fresh build.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

export const FEATURES = { simd: true, threads: true, bulk_memory: true };

/**
 * Compiles `watPath`; returns the module bytes, their base64 and the text of the generated file.
 * `names`: `source` (the .wat's path in its package), `command` (how to regenerate), `script`
 * (the package's build script), `module` (what the bytes are) and `constName`.
 */
export async function compileWat(wabtInit, watPath, names) {
  const wabt = await wabtInit();
  const module = wabt.parseWat(basename(watPath), readFileSync(watPath, 'utf8'), FEATURES);
  try {
    module.resolveNames();
    module.validate(FEATURES); // validate takes the features too (wabt.js; its .d.ts omits the argument)
    const { buffer } = module.toBinary({ log: false, write_debug_names: false });
    const bytes = Uint8Array.from(buffer);
    const base64 = Buffer.from(bytes).toString('base64');
    const text = [
      `// GENERATED FILE — do not edit. Source: ${names.source}.`,
      `// Regenerate with \`${names.command}\` (${names.script}:`,
      '// wabt wat2wasm with simd, threads and bulk-memory). A test fails if this drifts from the .wat.',
      '',
      `/** The compiled ${names.module} module (${bytes.length} bytes), base64. */`,
      `export const ${names.constName} =`,
      `  '${base64}';`,
      '',
    ].join('\n');
    return { bytes, base64, text };
  } finally {
    module.destroy();
  }
}
