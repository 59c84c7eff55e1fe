import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * Every runtime dependency is justified where a user reads about the package: its README's
 * `## Dependencies` section names each one (a sibling as `@dirtytrack/name`, `name` in backticks
 * after an `@dirtytrack/…` mention, or `@dirtytrack/*`).
 */
const root = join(import.meta.dirname, '..');
const dirs = ['packages', 'apps'].flatMap((d) => readdirSync(join(root, d)).map((name) => join(d, name)));

function dependenciesSection(readme: string): string | undefined {
  const at = readme.indexOf('\n## Dependencies\n');
  if (at < 0) return undefined;
  const rest = readme.slice(at + '\n## Dependencies\n'.length);
  const next = rest.indexOf('\n## ');
  return next < 0 ? rest : rest.slice(0, next);
}

function names(section: string, dependency: string): boolean {
  if (section.includes(dependency)) return true;
  const sibling = /^@dirtytrack\/(.+)$/.exec(dependency);
  return sibling !== null && (section.includes('@dirtytrack/*') || section.includes(`\`${sibling[1]}\``));
}

describe('package READMEs justify their runtime dependencies', () => {
  const withDeps = dirs.flatMap((dir) => {
    const manifest = join(root, dir, 'package.json');
    if (!existsSync(manifest)) return [];
    const deps = Object.keys(
      (JSON.parse(readFileSync(manifest, 'utf8')) as { dependencies?: Record<string, string> })
        .dependencies ?? {},
    );
    return deps.length === 0 ? [] : [[dir, deps] as const];
  });

  it('finds the packages that have dependencies', () => {
    expect(withDeps.map(([dir]) => dir)).toEqual(expect.arrayContaining(['apps/cli', 'packages/migration']));
  });

  it.each(withDeps)('%s', (dir, deps) => {
    const readme = readFileSync(join(root, dir, 'README.md'), 'utf8');
    const section = dependenciesSection(readme);
    expect(section, `${dir}/README.md has a ## Dependencies section`).toBeDefined();
    expect(deps.filter((d) => !names(section as string, d))).toEqual([]);
  });
});
