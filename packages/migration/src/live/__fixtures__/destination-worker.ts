/**
 * A migration destination on its own thread, for tests whose source blocks its thread (the live
 * source runs `runPrecopy` synchronously). Posts `{ host, port }` once listening, then the result
 * (its memory is the SharedArrayBuffer the test passed in, filled in place).
 *
 * Postcopy: with `guest`, POSTCOPY_RUN boots a live guest here whose vCPUs write through the
 * destination's missing-page faults; once the migration ended it runs on for `guest.afterMs` and
 * its stats are posted (`kind: 'guest'`). With `cut`, the source connects through a TCP relay on
 * this thread that drops every connection `cut.afterRunMs` after POSTCOPY_RUN (both directions
 * reset: a link cut) and refuses connections for `cut.downMs` (the link is down) — and, with
 * `cut.refuseAtLeast`, until it has refused that many — then relays again.
 */
import { createServer, connect, type Socket } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { createLiveGuest, createVcpuStandby, type LiveGuest } from '@dirtytrack/guest';
import { createDestination, type DestinationOptions } from '../destination.js';
import { libcLoaded } from '../libc.js';

export interface DestinationWorkerData extends DestinationOptions {
  guest?: { vcpus: number; rate: number; seed: number; afterMs: number };
  /**
   * The relay cuts the link `afterRunMs` after POSTCOPY_RUN, or — with `flag` — once the test
   * stores 1 in `flag`'s first Int32 (from any thread: the source's blocks in runPrecopy).
   */
  cut?: { afterRunMs?: number; flag?: SharedArrayBuffer; downMs: number; refuseAtLeast?: number };
}

const port = parentPort as NonNullable<typeof parentPort>;
const { guest: guestOptions, cut, ...options } = workerData as DestinationWorkerData;
let guest: LiveGuest | undefined;
let runAt: (() => void) | undefined;
const ran = new Promise<void>((resolve) => (runAt = resolve));
// The guest's vCPUs exist before it arrives (as serve's, and QEMU's): booted now, run at the switch.
const standby =
  guestOptions === undefined
    ? undefined
    : createVcpuStandby({
        vcpus: guestOptions.vcpus,
        preload: ['@dirtytrack/migration'],
        resolveFrom: import.meta.url,
      });
const destination = await createDestination({
  ...options,
  ...(guestOptions === undefined ? {} : { guestVcpus: guestOptions.vcpus }),
  async onPostcopyRun({ memory, faults }) {
    runAt?.();
    if (guestOptions === undefined) return;
    guest = createLiveGuest({
      memory,
      vcpus: guestOptions.vcpus,
      tracker: faults.tracker,
      sink: faults.sink,
      slot: 0,
      pages: memory.byteLength / 4096,
      seed: guestOptions.seed,
      rate: guestOptions.rate,
      workload: { kind: 'uniform' },
      resolveFrom: import.meta.url,
      ...(standby === undefined ? {} : { standby }),
    });
    // The value first: a vCPU stores from its first write on, and a store of the initial 0 before
    // setValue would look like a corrupted page to the test's byte compare.
    guest.setValue(9);
    await guest.start();
  },
});

let address = { host: destination.host, port: destination.port };
if (cut !== undefined) {
  // The relay: a link that goes down after the switch, then comes back.
  const pairs = new Set<[Socket, Socket]>();
  let down = false;
  // The link comes back once `downMs` passed and `refuseAtLeast` connections were refused: a
  // test whose source notices the cut late (a loaded machine) still sees its first retry fail.
  let downTimeOver = false;
  let refused = 0;
  const maybeUp = (): void => {
    if (down && downTimeOver && refused >= (cut.refuseAtLeast ?? 0)) down = false;
  };
  const sockets = new Set<Socket>();
  const relay = createServer((inbound) => {
    if (down) {
      refused++;
      inbound.resetAndDestroy();
      maybeUp();
      return;
    }
    const outbound = connect(destination.port, destination.host);
    for (const s of [inbound, outbound]) sockets.add(s.once('close', () => sockets.delete(s)));
    const pair: [Socket, Socket] = [inbound, outbound];
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      if (!inbound.destroyed) inbound.resetAndDestroy();
      if (!outbound.destroyed) outbound.resetAndDestroy();
    };
    inbound.on('error', drop).on('close', drop);
    outbound.on('error', drop).on('close', drop);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  const a = relay.address();
  address = { host: '127.0.0.1', port: typeof a === 'object' && a !== null ? a.port : 0 };
  const cutNow = (): void => {
    down = true;
    for (const [inbound, outbound] of [...pairs]) {
      inbound.resetAndDestroy();
      outbound.resetAndDestroy();
    }
    pairs.clear();
    port.postMessage({ kind: 'cut' });
    downTimeOver = false;
    setTimeout(() => {
      downTimeOver = true;
      maybeUp();
    }, cut.downMs);
  };
  if (cut.afterRunMs !== undefined) {
    const after = cut.afterRunMs;
    void ran.then(() => setTimeout(cutNow, after));
  }
  if (cut.flag !== undefined) {
    const flag = new Int32Array(cut.flag);
    const poll = setInterval(() => {
      if (Atomics.load(flag, 0) !== 1) return;
      clearInterval(poll);
      cutNow();
    }, 1);
    void destination.result.then(() => clearInterval(poll));
  }
  void destination.result.then(() => {
    relay.close();
    for (const s of sockets) s.destroy();
  });
}

port.postMessage({ kind: 'listening', ...address, libcLoaded: libcLoaded() });
const result = await destination.result;
const { memory: _memory, ...rest } = result;
await standby?.close(); // what no guest took (a migration that never switched)
port.postMessage({ kind: 'result', result: rest });
if (guest !== undefined) {
  // The guest runs on here after the migration (QEMU's check 1), then stops.
  await new Promise((resolve) => setTimeout(resolve, guestOptions?.afterMs ?? 0));
  let error: string | undefined;
  try {
    guest.check();
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  }
  const stats = await guest.stop();
  port.postMessage({ kind: 'guest', writes: stats.writes, error });
}
await destination.close();
// Nothing may outlive the migration here (a relay socket left over kept the thread from being
// terminated): end the thread.
process.exit(0);
