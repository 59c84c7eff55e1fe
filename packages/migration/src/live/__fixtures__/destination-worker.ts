/**
 * A migration destination on its own thread, for tests whose source blocks its thread (the live
 * source runs `runPrecopy` synchronously). Posts `{ host, port }` once listening, then the result
 * (its memory is the SharedArrayBuffer the test passed in, filled in place).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createDestination } from '../destination.js';

const port = parentPort as NonNullable<typeof parentPort>;
const options = workerData as Parameters<typeof createDestination>[0];
const destination = await createDestination(options);
port.postMessage({ kind: 'listening', host: destination.host, port: destination.port });
const result = await destination.result;
const { memory: _memory, ...rest } = result;
port.postMessage({ kind: 'result', result: rest });
await destination.close();
