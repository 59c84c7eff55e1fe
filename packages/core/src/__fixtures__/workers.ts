import { Worker } from 'node:worker_threads';

/** Test helpers for worker_threads: start TypeScript workers, await their messages and exits. */

const BOOT = new URL('./ts-worker.mjs', import.meta.url);

/** Starts `entry` (a .ts worker module) in a new worker thread with `workerData`. */
export function startWorker(entry: URL, workerData: unknown): Worker {
  return new Worker(BOOT, { argv: [entry.href], workerData });
}

/** Resolves with the worker's first message that `accept` accepts; rejects on error or early exit. */
export function nextMessage<T>(worker: Worker, accept: (message: unknown) => message is T): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onMessage = (message: unknown): void => {
      if (!accept(message)) return;
      cleanup();
      resolve(message);
    };
    const onError = (error: unknown): void => {
      cleanup();
      reject(error instanceof Error ? error : new Error(String(error)));
    };
    const onExit = (code: number): void => {
      cleanup();
      reject(new Error(`worker exited with code ${code} before sending the expected message`));
    };
    const cleanup = (): void => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
    };
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  });
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
