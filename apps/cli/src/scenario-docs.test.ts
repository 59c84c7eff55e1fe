import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { z } from 'zod';

import { scenarioSchema } from './scenario.js';

/**
 * The README's "Scenario keys" block against the schema: it is a valid scenario as written, and
 * with its commented-out keys (`# key: value`) it names every key the schema takes, and no other —
 * a key added to the schema and not to the README fails here.
 */

/** `cost-model` takes any CostModel entry: the README shows one, the schema all. */
const LEAVES = new Set(['cost-model']);

function readmeBlock(): string {
  const readme = readFileSync(join(import.meta.dirname, '..', 'README.md'), 'utf8');
  const at = readme.indexOf('## Scenario keys');
  const open = readme.indexOf('```yaml\n', at);
  const close = readme.indexOf('\n```', open + 8);
  if (at < 0 || open < 0 || close < 0) throw new Error('the README has no Scenario keys block');
  return readme.slice(open + 8, close);
}

/** A schema's object type under its defaults, optionals and refinements. */
function unwrap(type: z.ZodTypeAny): z.ZodTypeAny {
  for (;;) {
    const def = type._def as { innerType?: z.ZodTypeAny; schema?: z.ZodTypeAny };
    const inner = def.innerType ?? def.schema;
    if (inner === undefined) return type;
    type = inner;
  }
}

function schemaKeys(type: z.ZodTypeAny, prefix = ''): string[] {
  const object = unwrap(type);
  if (!(object instanceof z.ZodObject)) return [];
  return Object.entries(object.shape as Record<string, z.ZodTypeAny>).flatMap(([k, v]) => [
    prefix + k,
    ...(LEAVES.has(prefix + k) ? [] : schemaKeys(v, `${prefix}${k}.`)),
  ]);
}

function documentedKeys(value: unknown, prefix = ''): string[] {
  if (typeof value !== 'object' || value === null) return [];
  return Object.entries(value).flatMap(([k, v]) => [
    prefix + k,
    ...(LEAVES.has(prefix + k) ? [] : documentedKeys(v, `${prefix}${k}.`)),
  ]);
}

describe('the README documents the scenario schema', () => {
  it('its example is a valid scenario as written', () => {
    expect(() => scenarioSchema.parse(parse(readmeBlock()))).not.toThrow();
  });

  it('names every key the schema takes (commented-out ones included), and no other', () => {
    const uncommented = readmeBlock().replace(/^(\s*)# ([\w-]+: )/gm, '$1$2');
    const documented = documentedKeys(parse(uncommented)).sort();
    const schema = schemaKeys(scenarioSchema).sort();
    expect(schema.length).toBeGreaterThan(50);
    expect(documented).toEqual(schema);
  });
});
