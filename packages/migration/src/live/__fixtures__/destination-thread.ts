import type { Worker } from 'node:worker_threads';
import { startWorker } from '@dirtytrack/testkit';
import type { DestinationResult } from '../destination.js';
import type { DestinationWorkerData } from './destination-worker.js';

export interface DestinationThread {
  readonly host: string;
  readonly port: number;
  /** The destination's result (its memory is the SharedArrayBuffer passed in). */
  readonly result: Promise<Omit<DestinationResult, 'memory'>>;
  readonly worker: Worker;
  /** The thread had loaded libc through koffi when it began to listen. */
  readonly libcLoaded: boolean;
  /** With `guest`: the destination guest's writes after it ran on (and its error, if any). */
  readonly guest: Promise<{ writes: number; error?: string }>;
  /** With `cut`: resolves when the relay cut the link. */
  readonly cut: Promise<void>;
  /** Kills the destination thread at once (its sockets die with it). */
  kill(): void;
}

/** Starts `createDestination` on a worker thread, receiving into `memory`. */
export async function startDestinationThread(
  memory: SharedArrayBuffer,
  options: Omit<DestinationWorkerData, 'memory' | 'port'> = {},
): Promise<DestinationThread> {
  const worker = startWorker(new URL('./destination-worker.ts', import.meta.url), {
    port: 0,
    memory,
    ...options,
  });
  const listening = new Promise<{ host: string; port: number; libcLoaded: boolean }>((resolve, reject) => {
    worker.once('error', reject);
    worker.on('message', (m: { kind: string; host: string; port: number; libcLoaded: boolean }) => {
      if (m.kind === 'listening') resolve(m);
    });
  });
  const result = new Promise<Omit<DestinationResult, 'memory'>>((resolve, reject) => {
    worker.on('message', (m: { kind: string; result: Omit<DestinationResult, 'memory'> }) => {
      if (m.kind === 'result') resolve(m.result);
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`destination thread exited (${code}) without a result`)));
  });
  result.catch(() => {});
  const guest = new Promise<{ writes: number; error?: string }>((resolve) => {
    worker.on('message', (m: { kind: string; writes: number; error?: string }) => {
      if (m.kind === 'guest') resolve(m.error === undefined ? { writes: m.writes } : m);
    });
  });
  const cut = new Promise<void>((resolve) => {
    worker.on('message', (m: { kind: string }) => {
      if (m.kind === 'cut') resolve();
    });
  });
  const { host, port, libcLoaded } = await listening;
  return {
    host,
    port,
    libcLoaded,
    result,
    worker,
    guest,
    cut,
    kill() {
      void worker.terminate();
    },
  };
}
