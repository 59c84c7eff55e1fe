export { createSingleHopSync, type SingleHopSyncOptions } from './single-hop-sync.js';
export {
  createBitmapKernels,
  createJsBitmapKernels,
  supportsWasmSimd,
  type BitmapKernels,
  type BitmapKernelsOptions,
  type KernelMemory,
} from './kernels/bitmap-kernels.js';
export { BITMAP_KERNELS_WASM_BASE64 } from './kernels/bitmap-kernels.wasm.js';
