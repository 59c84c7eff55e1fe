/** Shared-memory layouts the worker fixtures and the tests that start them agree on. */

/** Int32 slots of the bitmap setters' control buffer. */
export const SETTER_CONTROL = {
  /** +1 by each worker once it has attached to the bitmap. */
  READY: 0,
  /** Set to 1 (and notified) by the main thread to start all setters at once. */
  GO: 1,
  /** +1 by each worker when it stops, successfully or not. */
  DONE: 2,
  /** +1 by each worker that threw. */
  FAILED: 3,
  LENGTH: 4,
} as const;

export interface SetterData {
  buffer: SharedArrayBuffer;
  byteOffset: number;
  bits: number;
  /** Pages this worker sets, in this order. */
  pages: Uint32Array;
  /** How many times the worker walks `pages`. */
  rounds: number;
  control: SharedArrayBuffer;
}
