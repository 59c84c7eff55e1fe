// GENERATED FILE — do not edit. Source: src/live/record-copy.wat.
// Regenerate with `pnpm --filter @dirtytrack/migration kernels` (scripts/build-record-copy.mjs:
// wabt wat2wasm with simd, threads and bulk-memory). A test fails if this drifts from the .wat.

/** The compiled record-copy module (217 bytes), base64. */
export const RECORD_COPY_WASM_BASE64 =
  'AGFzbQEAAAABDQJgAX8Bf2ADf39/AX8CEgEDZW52Bm1lbW9yeQIDAYCABAMDAgABBw8BC3BsYWNlX3BhZ2VzAAEKlQECIwAgAEEYdCAAQYD+A3FBCHRyIABBCHZBgP4DcSAAQRh2cnILbwEEfwJAA0AgASADa0GIIEkNASAAIANqIQQgBCgCAEEARw0BIAQoAgQQACEFIAVB/x9xQShHDQEgBUGAYHEhBiACQYAgSQ0BIAYgAkGAIGtLDQEgBiAEQQhqQYAg/AoAACADQYggaiEDDAALCyADCw==';
