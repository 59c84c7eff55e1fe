import { createRealClock, type Clock } from '@dirtytrack/core';
import { afterEach, describe, expect, it } from 'vitest';
import { startDestinationThread, type DestinationThread } from './__fixtures__/destination-thread.js';
import { randomSharedMemory } from './__fixtures__/random-memory.js';
import { openLiveLink, type LiveLink } from './live-link.js';
import { fdWritesAvailable } from './fd-writer.js';
import type { SendFrom } from './link-layout.js';
import { encodeMemSize, encodeSection, VM_ITEM } from './wire.js';

// The live link driven by hand, as runPrecopy drives it: sink operations, then `transmit`, into a
// destination thread over loopback TCP. Exact bytes on the wire; no timing is asserted.

const PAGES = 1024; // 4 MiB: a batch of ≥ 1 MiB is one the link measures
const RECORD = 8 + 4096; // a PAGE record with CONTINUE: header, then the page
const EOS = 8;

let link: LiveLink | undefined;
let destination: DestinationThread | undefined;
afterEach(async () => {
  await link?.close().catch(() => {});
  await destination?.worker.terminate();
  link = undefined;
  destination = undefined;
});

const randomMemory = (seed: number): SharedArrayBuffer => randomSharedMemory(PAGES * 4096, seed);

async function open(
  memory: SharedArrayBuffer,
  clock: Clock,
  bandwidth?: number,
  sendFrom?: SendFrom,
  pipelined?: boolean,
  fdWrites?: boolean,
): Promise<LiveLink> {
  destination = await startDestinationThread(new SharedArrayBuffer(memory.byteLength));
  link = await openLiveLink({
    host: destination.host,
    port: destination.port,
    memory,
    channels: 0,
    clock,
    ...(bandwidth === undefined ? {} : { bandwidth }),
    ...(sendFrom === undefined ? {} : { sendFrom }),
    ...(pipelined === undefined ? {} : { pipelined }),
    ...(fdWrites === undefined ? {} : { fdWrites }),
  });
  link.sink.begin({ multifd: false, channels: 0, zeroPages: 'record' });
  return link;
}

/** `Transport.settle`, which the live link always has. */
function settle(l: LiveLink): number {
  if (l.link.settle === undefined) throw new Error('the live link has no settle');
  return l.link.settle();
}

describe('live link', { timeout: 60_000 }, () => {
  it('refuses an unknown sendFrom before connecting (invalid-argument naming the field)', async () => {
    await expect(
      openLiveLink({
        host: '127.0.0.1',
        port: 1,
        memory: new SharedArrayBuffer(4096),
        channels: 0,
        sendFrom: 'disk' as SendFrom,
      }),
    ).rejects.toMatchObject({
      code: 'invalid-argument',
      message: expect.stringContaining("sendFrom must be 'staging', 'guest-memory' or 'auto'") as string,
      field: 'sendFrom',
    });
  });

  it.each([
    [{ channels: 0 }, 'zeroCopySend needs multifd channels'],
    [{ channels: 2, sendFrom: 'staging' as SendFrom }, "not with sendFrom 'staging' or fdWrites false"],
    [{ channels: 2, fdWrites: false }, "not with sendFrom 'staging' or fdWrites false"],
  ])('refuses zeroCopySend with %o before connecting', async (more, why) => {
    await expect(
      openLiveLink({
        host: '127.0.0.1',
        port: 1,
        memory: new SharedArrayBuffer(4096),
        zeroCopySend: true,
        ...more,
      }),
    ).rejects.toMatchObject({
      code: 'invalid-argument',
      message: expect.stringContaining(why) as string,
      field: 'zeroCopySend',
    });
  });

  it('times a batch on its own clock: a caller whose clock runs ahead still gets a measured bandwidth', async () => {
    const clock = createRealClock();
    const l = await open(randomMemory(9), clock, 1);
    expect(l.link.bandwidth).toBe(1);
    for (let w = 0; w < PAGES / 32; w++) l.sink.pages(w, -1, -1);
    // The live engine's clock started before the link's: its `now` is ahead of the link's.
    const t0 = clock.now();
    const atNs = t0 + 10e9;
    const t1 = l.link.transmit(PAGES * RECORD, atNs);
    expect(t1).toBeLessThan(atNs);
    expect(t1).toBeLessThanOrEqual(clock.now());
    expect(l.link.bytesSent).toBe(PAGES * RECORD);
    // Pipelined, the batch may still be draining: settle waits until it has left, and measures it.
    const t2 = settle(l);
    expect(t2).toBeGreaterThanOrEqual(t1);
    // The batch's own rate, not an average with the first guess (1 B/s): at least what it was
    // from before the call until it had left.
    expect(l.link.bandwidth).toBeGreaterThanOrEqual((PAGES * RECORD * 1e9) / (t2 - t0));
  });

  it('pipelined: transmit returns once the batch before has left; settle waits for all; unpipelined, each transmit waits for its own', async () => {
    const memory = randomMemory(11);
    const setup = encodeSection(VM_ITEM.SECTION_START).length + encodeMemSize(memory.byteLength).length + EOS;
    const batch = encodeSection(VM_ITEM.SECTION_PART).length + (PAGES / 4) * RECORD + EOS;
    const piped = await open(memory, createRealClock());
    const quarter = (l: LiveLink, q: number, bytes = 0) => {
      for (let w = (q * PAGES) / 128; w < ((q + 1) * PAGES) / 128; w++) l.sink.pages(w, -1, -1);
      l.link.transmit(bytes, 0);
    };
    quarter(piped, 0, 1000);
    quarter(piped, 1, 2000);
    // The first batch has left (the second may still be on its way, and counts as in flight).
    expect(piped.stats()['main-bytes']).toBeGreaterThanOrEqual(setup + batch);
    expect([0, 2000]).toContain(piped.link.bytesInFlight);
    settle(piped);
    expect(piped.link.bytesInFlight).toBe(0);
    expect(piped.stats()['main-bytes']).toBe(setup + 2 * batch);
    quarter(piped, 2);
    quarter(piped, 3);
    // COMPLETE stops the guest: that batch waits until it has left, with the one before.
    piped.sink.complete();
    piped.link.transmit(0, 0);
    expect(piped.stats()['main-bytes']).toBe(setup + 4 * batch);
    expect(await piped.verify()).toEqual({ pages: PAGES, mismatched: 0, firstMismatch: -1 });
    await piped.close();
    await destination?.worker.terminate();

    const each = await open(memory, createRealClock(), undefined, undefined, false);
    for (let q = 0; q < 4; q++) {
      quarter(each, q, 1000);
      expect(each.stats()['main-bytes']).toBe(setup + (q + 1) * batch);
      expect(each.link.bytesInFlight).toBe(0);
    }
    each.sink.complete();
    each.link.transmit(0, 0);
    expect(await each.verify()).toEqual({ pages: PAGES, mismatched: 0, firstMismatch: -1 });
  });

  it("sends a batch's discard ranges before the page ops after them: pages re-sent after their discard stay", async () => {
    const memory = randomMemory(11);
    const l = await open(memory, createRealClock());
    for (let w = 0; w < PAGES / 32; w++) l.sink.pages(w, -1, -1);
    l.link.transmit(0, 0);
    settle(l);
    // One batch: pages 0–63 discarded (the destination zeroes them), then sent again. Were the
    // discard sent after the pages, as the sender gathers consecutive discards, they would stay zero.
    if (l.sink.discard === undefined) throw new Error('the live sink has no discard');
    l.sink.discard(0, 64);
    l.sink.pages(0, -1, -1);
    l.sink.pages(1, -1, -1);
    l.sink.complete();
    l.link.transmit(0, 0);
    expect(await l.verify()).toEqual({ pages: PAGES, mismatched: 0, firstMismatch: -1 });
  });

  // fdWrites false: the path of a machine where koffi cannot load (Node's stream), taken here too.
  it.each([
    ['staging', true],
    ['guest-memory', true],
    ['auto', true],
    ['guest-memory', false],
    ['auto', false],
  ] as const)(
    'puts exact bytes on the main connection and the destination verifies every page (sending from %s, fdWrites %s)',
    async (sendFrom, fdWrites) => {
      const memory = randomMemory(10);
      const l = await open(memory, createRealClock(), undefined, sendFrom, undefined, fdWrites);
      const direct = sendFrom !== 'staging' && fdWrites && fdWritesAvailable();
      const staged = sendFrom === 'staging' || (sendFrom === 'auto' && !direct);
      const setup =
        encodeSection(VM_ITEM.SECTION_START).length + encodeMemSize(memory.byteLength).length + EOS;
      expect(l.stats()['main-bytes']).toBe(setup);
      // Two batches of half the RAM each, the second ending with the stop-and-copy's mark.
      for (let w = 0; w < PAGES / 64; w++) l.sink.pages(w, -1, -1);
      l.link.transmit(0, 0);
      settle(l);
      const part = encodeSection(VM_ITEM.SECTION_PART).length;
      expect(l.stats()['main-bytes']).toBe(setup + part + (PAGES / 2) * RECORD + EOS);
      for (let w = PAGES / 64; w < PAGES / 32; w++) l.sink.pages(w, -1, -1);
      l.sink.complete();
      l.link.transmit(0, 0);
      const { 'writev-calls': writevCalls, ...stats } = l.stats();
      expect(stats).toEqual({
        'main-bytes': setup + 2 * (part + (PAGES / 2) * RECORD + EOS),
        'multifd-bytes': 0,
        'multifd-packets': 0,
        // auto writes page records from guest memory as guest-memory does (writev through
        // koffi); where koffi cannot load it stages them, as staging does.
        'zero-copy-bytes': staged ? 0 : PAGES * 4096,
        'staged-bytes': staged ? PAGES * 4096 : 0,
        // The 8 staging buffers made before connecting were enough: none was allocated in the run.
        'staging-buffers': staged ? 8 : 0,
        // No zero-copy-send: no multifd channel, and records never go through a pipe.
        'spliced-bytes': 0,
        'preempt-bytes': 0,
      });
      // Two iovecs per page, at most 1024 per writev (more calls when the socket was full).
      if (direct) expect(writevCalls).toBeGreaterThanOrEqual(PAGES / 512);
      else expect(writevCalls).toBe(0);
      expect(await l.verify()).toEqual({ pages: PAGES, mismatched: 0, firstMismatch: -1 });
    },
  );
});
