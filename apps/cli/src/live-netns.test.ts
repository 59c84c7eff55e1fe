import { afterEach, describe, expect, it } from 'vitest';
import {
  createNetnsPair,
  listeningPort,
  netnsUnavailable,
  waitForConnection,
  within,
  type NetnsPair,
} from './__fixtures__/netns.js';
import type { MigrateResult } from './live.js';

// The Faults on a real link: source and destination in their own network namespaces
// joined by a veth pair, shaped with tbf (this kernel has no netem) and cut with `ip link set
// down` — no mocked socket. Every address is inside those namespaces.

const unavailable = netnsUnavailable();
if (unavailable !== undefined) console.warn(`live-netns.test.ts skipped: ${unavailable}`);

const TOKEN = 'netns-test-token';
let made = 0;
let pair: NetnsPair | undefined;

function newPair(): NetnsPair {
  pair = createNetnsPair(made++);
  return pair;
}

/** `serve --once --json` with the token in the destination namespace, and the port it took. */
async function serve(p: NetnsPair, memory = '32M') {
  const server = p.cli(
    p.dst,
    ...['serve', '--listen', `${p.dstAddr}:0`, '--token', TOKEN, '--memory', memory, '--once', '--json'],
  );
  const port = listeningPort(await within(server.firstLine, 15_000, 'serve to listen'));
  return { ...server, port };
}

function migrateArgs(p: NetnsPair, port: number, ...more: string[]): string[] {
  return [
    'migrate',
    '--to',
    `${p.dstAddr}:${port}`,
    '--token',
    TOKEN,
    '--memory',
    '32M',
    '--fill',
    'random',
    '--rate',
    '200',
    '--json',
    ...more,
  ];
}

describe.skipIf(unavailable !== undefined)('serve and migrate over a real link (network namespaces)', () => {
  afterEach(async () => {
    await pair?.cleanup();
    pair = undefined;
  });

  it('a 100 Mbit/s tbf link: completed, verified, at 40–100 Mbit/s', async () => {
    const p = newPair();
    p.shape('100mbit');
    const server = await serve(p);
    const m = await within(p.cli(p.src, ...migrateArgs(p, server.port)).done, 30_000, 'migrate');
    expect(m.stderr).toBe('');
    expect(m.code).toBe(0);
    const r = JSON.parse(m.stdout) as MigrateResult;
    expect(r).toMatchObject({ status: 'completed', verified: true });
    // Every page is random: all 8192 went as normal pages, some twice (the vCPUs dirtied them).
    expect(r.ram.normal).toBeGreaterThanOrEqual(8192);
    const mbps = (r.ram.transferred * 8) / (r['total-time'] * 1000);
    console.info(
      `live-netns: ${r.ram.transferred} bytes in ${r['total-time']} ms = ${mbps.toFixed(1)} Mbit/s on a 100mbit tbf`,
    );
    expect(mbps).toBeLessThanOrEqual(100);
    expect(mbps).toBeGreaterThanOrEqual(40);
    const s = await within(server.done, 10_000, 'serve to exit');
    expect(s.code).toBe(0);
    expect(JSON.parse(s.stdout.slice(s.stdout.indexOf('{')))).toMatchObject({
      status: 'completed',
      verified: true,
      normal: r.ram.normal,
      duplicate: r.ram.duplicate,
    });
  }, 40_000);

  it('authentication is mandatory off loopback: no token refuses to start, a wrong token fails', async () => {
    const p = newPair();
    const bare = await within(p.cli(p.dst, 'serve', '--listen', `${p.dstAddr}:0`).done, 15_000, 'serve');
    expect(bare.code).toBe(2);
    expect(bare.stdout).toBe('');
    expect(bare.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(bare.stderr).toMatch(/^dirtytrack: --token: .*not a loopback address/);

    const server = await serve(p);
    const args = migrateArgs(p, server.port);
    args[args.indexOf(TOKEN)] = 'not-the-token';
    const m = await within(p.cli(p.src, ...args).done, 20_000, 'migrate');
    expect(m.code).toBe(1);
    expect(m.stdout).toBe('');
    expect(m.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(m.stderr).toMatch(/authentication failed/);
  }, 40_000);

  // A cut link errors nowhere (TCP retries for ~15 min): the sender's progress stops, and after
  // --link-timeout the link is declared dead and dropped without waiting for TCP.
  it('the link cut during precopy: failed after --link-timeout, the source guest runs on', async () => {
    const p = newPair();
    // 64 MiB of random pages at 40 Mbit/s: ~13 s of precopy, so the cut lands in it. The sender
    // reports progress per written slice (2 MiB, ~0.4 s here): the link timeout must exceed it.
    p.shape('40mbit');
    const server = await serve(p, '64M');
    const migrate = p.cli(p.src, ...migrateArgs(p, server.port, '--memory', '64M', '--link-timeout', '6000'));
    // 30 s: migrate runs from source through tsx (its workers too), slow to start on a loaded machine.
    await waitForConnection(p.src, p.dstAddr, server.port, 30_000, migrate);
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    p.cut();
    const cutAt = Date.now();
    const m = await within(migrate.done, 20_000, 'migrate to fail after the cut');
    const after = Date.now() - cutAt;
    expect(m.code).toBe(1);
    const r = JSON.parse(m.stdout) as MigrateResult;
    expect(r).toMatchObject({ status: 'failed', verified: false });
    expect(r['error-desc']).toMatch(/no progress for 6000 ms \(link down\?\)/);
    expect(r.ram.transferred).toBeLessThan(64 * 2 ** 20);
    // The last progress was at most a slice before the cut; the failure follows the timeout.
    expect(after).toBeGreaterThanOrEqual(2_000);
    expect(after).toBeLessThan(12_000);
    expectGuestRanOn(r);
  }, 60_000);

  it('the destination killed during precopy: failed at once with the reset, the source guest runs on', async () => {
    const p = newPair();
    p.shape('20mbit');
    const server = await serve(p);
    // The default link timeout (30 s): the failure must come from the reset, not from waiting.
    const migrate = p.cli(p.src, ...migrateArgs(p, server.port));
    // 30 s: migrate runs from source through tsx (its workers too), slow to start on a loaded machine.
    await waitForConnection(p.src, p.dstAddr, server.port, 30_000, migrate);
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    server.child.kill('SIGKILL');
    const killedAt = Date.now();
    const m = await within(migrate.done, 15_000, 'migrate to fail after the kill');
    const after = Date.now() - killedAt;
    expect(m.code).toBe(1);
    const r = JSON.parse(m.stdout) as MigrateResult;
    expect(r).toMatchObject({ status: 'failed', verified: false });
    expect(r['error-desc']).toMatch(/ECONNRESET|reset|closed the connection/);
    expect(after).toBeLessThan(5_000);
    expectGuestRanOn(r);
  }, 60_000);
});

describe.skipIf(unavailable !== undefined)('postcopy over a real link (network namespaces)', () => {
  afterEach(async () => {
    await pair?.cleanup();
    pair = undefined;
  });

  // The link goes down during postcopy and comes back: neither side can run the guest alone now
  // (it lives on the destination, its pages partly on the source), so both pause; the source
  // notices after --link-timeout, retries resume every second, and once the link is up the
  // destination's received bitmap says what is still missing.
  it('the link cut during postcopy and mended: paused, resumed, completed and verified', async () => {
    const p = newPair();
    p.shape('40mbit');
    const server = await serve(p);
    const migrate = p.cli(
      p.src,
      ...migrateArgs(
        p,
        server.port,
        // Precopy capped at 4 MB/s: its first batch is small (sized for a 100 ms window), so the
        // switch comes at 0.5 s and not after a batch sized by the 100 MB/s first guess (2 s here).
        '--max-bandwidth',
        '4M',
        '--postcopy-after',
        '500',
        '--link-timeout',
        '2000',
        '--recover-every',
        '1000',
        '--recover-attempts',
        '20',
      ),
    );
    // 30 s: migrate runs from source through tsx (its workers too), slow to start on a loaded machine.
    await waitForConnection(p.src, p.dstAddr, server.port, 30_000, migrate);
    // 32 MiB of random pages at 40 Mbit/s: ~7 s, so 2.5 s in is well inside postcopy.
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    p.cut();
    await new Promise((resolve) => setTimeout(resolve, 4_000));
    p.restore();
    const m = await within(migrate.done, 60_000, 'migrate to resume and complete');
    const s = await within(server.done, 10_000, 'serve to end');
    expect(
      m.code,
      `migrate: ${m.stdout.slice(0, 1500)} ${m.stderr.slice(0, 500)}; serve: ${s.stdout.slice(-800)}`,
    ).toBe(0);
    const r = JSON.parse(m.stdout) as MigrateResult;
    expect(r).toMatchObject({ status: 'completed', verified: true, 'verify-mismatches': 0 });
    expect(r['error-desc']).toBeUndefined();
    const d = JSON.parse(s.stdout.slice(s.stdout.indexOf('{'))) as {
      status: string;
      verified: boolean;
      postcopy: { 'postcopy-pauses': number; 'postcopy-requests': number };
    };
    expect(d).toMatchObject({ status: 'completed', verified: true });
    // One pause for the cut (a starved, loaded machine may add one more: no progress for 2 s).
    expect(d.postcopy['postcopy-pauses']).toBeGreaterThanOrEqual(1);
    expect(d.postcopy['postcopy-requests']).toBeGreaterThan(0);
  }, 120_000);
});

/** QEMU resumes the source VM on a failed migration: its vCPUs kept writing after the failure. */
function expectGuestRanOn(r: MigrateResult): void {
  const watch = r.dirtytrack['after-failure'];
  expect(watch).toMatchObject({ ms: 200, running: true });
  expect(watch?.['guest-writes']).toBeGreaterThan(watch?.['guest-writes-at-failure'] ?? Infinity);
  expect(r.dirtytrack['guest-writes']).toBeGreaterThanOrEqual(watch?.['guest-writes'] ?? Infinity);
}
