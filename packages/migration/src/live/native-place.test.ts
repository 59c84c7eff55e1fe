import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadLibc } from './libc.js';
import { loadNativePlacePages, PLACE_PAGES_NT_ASM, PLACE_PAGES_NT_HEX } from './native-place.js';

/** GNU `as` and `objcopy` (binutils), where they run; the reason otherwise. */
function binutils(): true | string {
  if (process.arch !== 'x64') return `this is ${process.arch}, not x86-64`;
  try {
    execFileSync('as', ['--version'], { stdio: 'ignore' });
    execFileSync('objcopy', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return 'no GNU as and objcopy here (binutils)';
  }
}

const tools = binutils();
if (tools !== true) console.log(`native-place.test: the machine code is not assembled again: ${tools}`);
const native = loadNativePlacePages();
if (native === null)
  console.log('native-place.test: the machine code is not called: it needs Linux on x86-64 and koffi');

describe('native-place: place_pages with non-temporal stores, in machine code', () => {
  it.skipIf(tools !== true)('the committed bytes are what GNU as makes of the committed assembly', () => {
    const dir = mkdtempSync(join(tmpdir(), 'native-place-'));
    try {
      writeFileSync(join(dir, 'p.s'), PLACE_PAGES_NT_ASM);
      execFileSync('as', ['-o', join(dir, 'p.o'), join(dir, 'p.s')]);
      execFileSync('objcopy', ['-O', 'binary', '-j', '.text', join(dir, 'p.o'), join(dir, 'p.bin')]);
      expect(readFileSync(join(dir, 'p.bin')).toString('hex')).toBe(PLACE_PAGES_NT_HEX);
      expect(PLACE_PAGES_NT_HEX.length / 2).toBe(177);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(native === null)(
    'copies records exactly over a memory it is given the address of, and nothing else',
    () => {
      const place = native as NonNullable<typeof native>;
      const memory = new SharedArrayBuffer(16 * 4096 + 4 * 4104);
      const bytes = new Uint8Array(memory);
      const view = new DataView(memory);
      const base = (loadLibc() as NonNullable<ReturnType<typeof loadLibc>>).addressOf(bytes);
      const ram = 16 * 4096;
      // Records for pages 9 and 2, then page 16 (one past RAM): two taken.
      [9, 2, 16].forEach((page, i) => {
        const at = ram + i * 4104;
        view.setUint32(at, 0);
        view.setUint32(at + 4, page * 4096 + 0x28);
        bytes.fill(page + 1, at + 8, at + 4104);
      });
      expect(place(base, ram, 3 * 4104, ram)).toBe(2 * 4104);
      for (let page = 0; page < 16; page++) {
        const want = page === 9 ? 10 : page === 2 ? 3 : 0;
        expect([page, bytes.subarray(page * 4096, (page + 1) * 4096).every((b) => b === want)]).toEqual([
          page,
          true,
        ]);
      }
      // A RAM smaller than a page takes nothing; so does a length short of one whole record.
      expect(place(base, ram, 3 * 4104, 4095)).toBe(0);
      expect(place(base, ram, 4103, ram)).toBe(0);
      // Taken up to the length given, whatever follows.
      expect(place(base, ram, 4104, ram)).toBe(4104);
    },
  );
});
