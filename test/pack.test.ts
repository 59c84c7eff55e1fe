import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

/**
 * Every publishable package packs into a tarball whose package.json has no `workspace:` range
 * (pnpm rewrites them to real versions), ships its built entry points, and nothing private.
 */
const root = join(import.meta.dirname, '..');
const dirs = ['packages', 'apps'].flatMap((d) =>
  readdirSync(join(root, d)).map((name) => join(root, d, name)),
);
const manifests = dirs
  .filter((d) => existsSync(join(d, 'package.json')))
  .map((dir) => ({ dir, pkg: JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Manifest }));
const publishable = manifests.filter((m) => m.pkg.private !== true);
const out = mkdtempSync(join(tmpdir(), 'dirtytrack-pack-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

interface Manifest {
  name: string;
  version: string;
  private?: boolean;
  exports?: Record<string, unknown>;
  bin?: Record<string, string>;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

describe('packing', () => {
  it('finds the publishable packages', () => {
    expect(publishable.map((m) => m.pkg.name).sort()).toEqual([
      '@dirtytrack/cli',
      '@dirtytrack/core',
      '@dirtytrack/guest',
      '@dirtytrack/migration',
      '@dirtytrack/mmu',
      '@dirtytrack/qemu-layers',
      '@dirtytrack/reporters',
      '@dirtytrack/trackers',
    ]);
  });

  it('the leak check catches a tarball packed without rewriting (npm pack keeps workspace: ranges)', () => {
    const trackers = publishable.find((m) => m.pkg.name === '@dirtytrack/trackers');
    if (trackers === undefined) throw new Error('trackers not found');
    const printed = execFileSync('npm', ['pack', '--pack-destination', out, '--silent'], {
      cwd: trackers.dir,
      encoding: 'utf8',
    });
    const tarball = join(out, printed.trim().split('\n').pop() as string);
    const packed = execFileSync('tar', ['-xzOf', tarball, 'package/package.json'], { encoding: 'utf8' });
    expect(packed).toContain('workspace:');
    rmSync(tarball);
  });

  it.each(publishable.map((m) => [m.pkg.name, m] as const))(
    '%s packs without workspace: ranges',
    (_name, m) => {
      expect(
        existsSync(join(m.dir, 'dist', 'index.js')),
        `${m.pkg.name} is not built: run pnpm build first`,
      ).toBe(true);
      const pnpm = join(root, 'node_modules', '.bin', 'pnpm');
      const printed = execFileSync(pnpm, ['pack', '--pack-destination', out], {
        cwd: m.dir,
        encoding: 'utf8',
      });
      const tarball = printed.trim().split('\n').pop() as string;
      const listing = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n');
      const packed = JSON.parse(
        execFileSync('tar', ['-xzOf', tarball, 'package/package.json'], { encoding: 'utf8' }),
      ) as Manifest;
      const raw = JSON.stringify(packed);
      expect(raw).not.toContain('workspace:');
      for (const deps of [packed.dependencies, packed.peerDependencies, packed.devDependencies]) {
        for (const [dep, range] of Object.entries(deps ?? {})) {
          if (dep.startsWith('@dirtytrack/')) {
            const sibling = manifests.find((x) => x.pkg.name === dep);
            expect(range, `${dep} in ${m.pkg.name}`).toBe(`^${sibling?.pkg.version}`);
          }
        }
      }
      expect(listing).toContain('package/dist/index.js');
      expect(listing).toContain('package/dist/index.d.ts');
      expect(listing).toContain('package/README.md');
      expect(listing.filter((f) => f.endsWith('.test.ts'))).toEqual([]);
      for (const bin of Object.values(packed.bin ?? {}))
        expect(listing).toContain(`package/${bin.replace(/^\.\//, '')}`);
    },
  );
});
