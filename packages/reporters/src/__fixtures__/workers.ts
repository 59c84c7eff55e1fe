import { Worker } from 'node:worker_threads';

/**
 * Test helpers for worker_threads (the approach of core's fixtures): start TypeScript workers
 * through `ts-worker.mjs`, which loads the .ts entry with tsx's `tsImport` (Node 20 workers do
 * not honour `execArgv: ['--import', 'tsx']`). `--conditions=@dirtytrack/source` makes
 * `@dirtytrack/core` resolve to its `src/` in the worker too, as vitest does on the main thread.
 */

const BOOT = new URL('./ts-worker.mjs', import.meta.url);

/** Starts `entry` (a .ts worker module) in a new worker thread with `workerData`. */
export function startWorker(entry: URL, workerData: unknown): Worker {
  return new Worker(BOOT, { argv: [entry.href], workerData, execArgv: ['--conditions=@dirtytrack/source'] });
}

/** Resolves with the exit code; rejects if the worker throws. */
export function exited(worker: Worker): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('exit', resolve);
  });
}

/** Polls `condition` (without blocking the event loop) until it holds; throws after `timeoutMs`. */
export async function waitUntil(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Terminates every worker still running (for `finally` blocks after a failure). */
export async function terminateAll(workers: readonly Worker[]): Promise<void> {
  await Promise.all(workers.map((w) => w.terminate()));
}
