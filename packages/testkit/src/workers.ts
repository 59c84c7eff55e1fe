import { Worker } from 'node:worker_threads';

/**
 * Helpers for tests that run real worker threads (producer vCPUs, lock contenders).
 *
 * Node 20 workers do not apply `execArgv: ['--import', 'tsx']` to their entry file, so a worker
 * boots from a one-line eval that loads the .ts entry through tsx's `tsImport`, with the
 * `@dirtytrack/source` condition so sibling packages resolve to their `src/` as in the tests.
 * (`@dirtytrack/core` keeps its own copy in its fixtures: it cannot depend on testkit.)
 */
export function startWorker(entry: URL, workerData: unknown): Worker {
  const boot = `import('tsx/esm/api').then((api) => api.tsImport(process.argv.at(-1), ${JSON.stringify(entry.href)}))`;
  return new Worker(boot, {
    eval: true,
    argv: [entry.href],
    workerData,
    execArgv: [...process.execArgv, '--conditions=@dirtytrack/source'],
  });
}

/** Resolves with the worker's exit code; rejects if the worker throws. */
export function exited(worker: Worker): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('exit', resolve);
  });
}

/** Resolves with each worker's exit code; a worker that throws rejects with its error. */
export function exitCodes(workers: readonly Worker[]): Promise<number[]> {
  return Promise.all(workers.map(exited));
}

/** Polls `condition` (without blocking the event loop) until it holds; throws after `timeoutMs`. */
export async function waitUntil(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/**
 * Blocks this thread until `control[index] >= value` (the main thread may block: the workers run
 * without it). Throws after `timeoutMs`, or as soon as `control[failed]` is non-zero.
 */
export function blockUntil(
  control: Int32Array,
  index: number,
  value: number,
  failed: number,
  timeoutMs: number,
  what: string,
): void {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const seen = Atomics.load(control, index);
    if (seen >= value) return;
    if (Atomics.load(control, failed) !== 0) throw new Error(`a worker failed while waiting for ${what}`);
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    Atomics.wait(control, index, seen, 20);
  }
}

/** Sleeps this thread for `ms` without the event loop (Atomics.wait on a private word). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Terminates every worker still running (for `finally` blocks after a failure). */
export async function terminateAll(workers: readonly Worker[]): Promise<void> {
  await Promise.all(workers.map((w) => w.terminate()));
}
