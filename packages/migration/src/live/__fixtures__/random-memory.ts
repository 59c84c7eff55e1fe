import { createRng } from '@dirtytrack/core';

/** `bytes` of guest-like memory (a SharedArrayBuffer) filled with the seed's random 32-bit words. */
export function randomSharedMemory(bytes: number, seed: number): SharedArrayBuffer {
  const memory = new SharedArrayBuffer(bytes);
  const words = new Uint32Array(memory);
  const rng = createRng(seed);
  for (let i = 0; i < words.length; i++) words[i] = rng.nextU32();
  return memory;
}
