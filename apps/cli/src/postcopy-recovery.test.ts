import { describe, expect, it } from 'vitest';
import { run, runJson } from './__fixtures__/run.js';

/**
 * `simulate` with a link that drops during postcopy and comes back (`link.recover-at`), and
 * `migration.capabilities.postcopy-preempt` (reference/qemu.md §3): a 256 MiB guest writing
 * 100 MiB/s uniformly over 400 Mbit/s with 1 ms latency, switched to postcopy at 2 s.
 */
const base = [
  'memory=256M',
  'workload.working-set=256M',
  'workload.kind=uniform',
  'workload.rate=100M',
  'vcpus=1',
  'link.bandwidth=400Mbit',
  'link.latency=1',
  'migration.parameters.max-bandwidth=0',
  'migration.capabilities.postcopy-ram=true',
  'migration.start-postcopy-at=2',
  'time-limit=120',
];
const argv = (...sets: string[]) => ['simulate', ...base.concat(sets).flatMap((kv) => ['--set', kv])];

describe('simulate: postcopy recovery and preempt', () => {
  it('a drop at 2.5 s pauses postcopy; link.recover-at 4 resumes it to completed, byte-identical JSON', async () => {
    const a = await runJson(...argv('link.drop-at=2.5', 'link.recover-at=4'));
    const b = await runJson(...argv('link.drop-at=2.5', 'link.recover-at=4'));
    expect(a.stdout).toBe(b.stdout);
    const r = a.result;
    expect(r.dirtytrack.events.map((e) => [e.status, e.time])).toEqual([
      ['setup', 0],
      ['active', 0.156],
      ['postcopy-active', 2005.801],
      ['postcopy-paused', 2500],
      ['postcopy-recover-setup', 4000],
      ['postcopy-recover', 4000],
      ['postcopy-active', 4004.165],
      ['completed', 8790.248],
    ]);
    expect([r.status, r.dirtytrack['stop-reason'], r.ram.remaining]).toEqual(['completed', 'converged', 0]);
    expect(r.ram['postcopy-requests']).toBe(38645);
    expect(r['postcopy-blocktime']).toBe(2793.447);
    const m = r.dirtytrack.migration;
    // RP RECV_BITMAP for 65536 pages: 27 bytes of framing + 8192 bitmap bytes.
    expect([m['postcopy-pauses'], m['postcopy-recv-bitmap-bytes'], m['postcopy-placed']]).toEqual([
      1, 8219, 54378,
    ]);
    // Without recover-at it stays paused at the drop.
    const paused = (await runJson(...argv('link.drop-at=2.5'))).result;
    expect([paused.status, paused.dirtytrack.events.at(-1)?.status]).toEqual([
      'postcopy-paused',
      'postcopy-paused',
    ]);
  });

  it('migration.capabilities.postcopy-preempt lowers blocktime and request latency for the same requests', async () => {
    const off = (await runJson(...argv())).result;
    const on = (await runJson(...argv('migration.capabilities.postcopy-preempt=true'))).result;
    expect([off.ram['postcopy-requests'], on.ram['postcopy-requests']]).toEqual([38460, 38460]);
    expect([off['postcopy-blocktime'], on['postcopy-blocktime']]).toEqual([1278.69, 815.493]);
    expect([
      off.dirtytrack.migration['postcopy-request-latency'],
      on.dirtytrack.migration['postcopy-request-latency'],
    ]).toEqual([14.245, 12.898]);
    expect([off['total-time'], on['total-time']]).toEqual([7275.491, 6815.211]);
  });

  it('rejects recover-at without a drop before it, and preempt without postcopy-ram', async () => {
    const noDrop = await run('simulate', '--set', 'link.recover-at=4');
    expect(noDrop.code).toBe(2);
    expect(noDrop.stderr).toMatch(/link\.recover-at.*needs link\.drop-at/);
    const early = await run('simulate', '--set', 'link.drop-at=5', '--set', 'link.recover-at=4');
    expect(early.code).toBe(2);
    expect(early.stderr).toMatch(/link\.recover-at.*must be after link\.drop-at/);
    const preempt = await run('simulate', '--set', 'migration.capabilities.postcopy-preempt=true');
    expect(preempt.code).toBe(2);
    expect(preempt.stderr).toMatch(
      /migration\.capabilities\.postcopy-preempt.*needs migration\.capabilities\.postcopy-ram/,
    );
  });

  it('postcopy with multifd (QEMU 10.x): precopy on the channels, postcopy pages on the main stream', async () => {
    const r = (
      await runJson(...argv('migration.capabilities.multifd=true', 'migration.parameters.multifd-channels=4'))
    ).result;
    expect(r.status).toBe('completed');
    expect(r.ram['multifd-bytes']).toBeGreaterThan(0);
    expect(r.ram['postcopy-bytes']).toBeGreaterThan(0);
    expect(r.ram['postcopy-requests']).toBeGreaterThan(0);
    // Postcopy's pages are whole page records (4104 B each) on the main stream, not multifd packets.
    expect((r.ram['postcopy-bytes'] ?? 0) % 4104).toBe(0);
  });
});
