import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { PRESETS } from './presets.js';
import { acceptedKeys, resolveScenarioPaths, scenarioSchema, type Scenario } from './scenario.js';

/** Bad input from the user: the CLI prints `message` on one line and exits with code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  constructor(
    readonly field: string,
    detail: string,
  ) {
    super(`${field}: ${detail}`);
  }
}

/**
 * An integer flag in `[min, max]` (decimal digits only), else a one-line {@link UsageError} naming
 * the flag: `"<text>" is not an integer in [min, max]`.
 */
export function intFlag(flag: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(flag, `${JSON.stringify(text)} is not an integer in [${min}, ${max}]`);
  }
  return n;
}

export interface ScenarioSources {
  preset?: string | undefined;
  scenarioFile?: string | undefined;
  sets?: readonly string[] | undefined;
}

/**
 * Builds a scenario from a preset (default `small` when no file is given), a YAML/JSON file
 * laid over it, then `--set key=value` overrides (dotted keys, values read as YAML scalars),
 * and validates the result.
 */
export function loadScenario(sources: ScenarioSources): Scenario {
  let raw: Record<string, unknown> = {};
  const presetName = sources.preset ?? (sources.scenarioFile === undefined ? 'small' : undefined);
  if (presetName !== undefined) {
    if (!Object.hasOwn(PRESETS, presetName)) {
      throw new UsageError(
        '--preset',
        `unknown preset ${JSON.stringify(presetName)} (accepted: ${Object.keys(PRESETS).join(', ')})`,
      );
    }
    raw = structuredClone(PRESETS[presetName as keyof typeof PRESETS]) as Record<string, unknown>;
  }
  // A relative path inside a scenario file (a trace) means "beside the file".
  if (sources.scenarioFile !== undefined)
    raw = merge(
      raw,
      resolveScenarioPaths(readScenarioFile(sources.scenarioFile), dirname(sources.scenarioFile)),
    );
  for (const assignment of sources.sets ?? []) applySet(raw, assignment);
  const parsed = scenarioSchema.safeParse(raw);
  if (!parsed.success) throw toUsageError(parsed.error);
  return parsed.data;
}

function readScenarioFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new UsageError(
      '--scenario',
      `cannot read ${path}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
    );
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { uniqueKeys: true });
  } catch (cause) {
    const first = String((cause as Error).message).split('\n')[0];
    throw new UsageError(
      '--scenario',
      `${path} is not valid YAML or JSON: ${first} (accepted: a YAML or JSON mapping of scenario keys)`,
    );
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new UsageError(
      '--scenario',
      `${path} holds ${Array.isArray(doc) ? 'a list' : doc === null ? 'nothing' : `a ${typeof doc}`}, not a mapping (accepted: a YAML or JSON mapping of scenario keys)`,
    );
  }
  return doc as Record<string, unknown>;
}

function applySet(target: Record<string, unknown>, assignment: string): void {
  const eq = assignment.indexOf('=');
  if (eq <= 0)
    throw new UsageError('--set', `${JSON.stringify(assignment)} is not key=value (e.g. --set memory=8G)`);
  const path = assignment.slice(0, eq).split('.');
  const text = assignment.slice(eq + 1);
  if (path.some((k) => k === ''))
    throw new UsageError('--set', `${JSON.stringify(assignment.slice(0, eq))} is not a dotted key`);
  let value: unknown;
  try {
    value = parseYaml(text);
  } catch {
    value = text;
  }
  const forbidden = path.find((k) => FORBIDDEN_KEYS.has(k));
  if (forbidden !== undefined)
    throw new UsageError(path.join('.'), `${JSON.stringify(forbidden)} is not a scenario key`);
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1] as string] = value ?? text;
}

/** Keys that would reach `Object.prototype` if assigned: never scenario keys. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

function merge(
  base: Record<string, unknown>,
  over: Record<string, unknown>,
  path: string[] = [],
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (FORBIDDEN_KEYS.has(k))
      throw new UsageError([...path, k].join('.'), `${JSON.stringify(k)} is not a scenario key`);
    const b = out[k];
    out[k] =
      v !== null &&
      typeof v === 'object' &&
      !Array.isArray(v) &&
      b !== null &&
      typeof b === 'object' &&
      !Array.isArray(b)
        ? merge(b as Record<string, unknown>, v as Record<string, unknown>, [...path, k])
        : v;
  }
  return out;
}

function toUsageError(error: z.ZodError): UsageError {
  const issue = error.issues[0];
  if (issue === undefined) return new UsageError('scenario', 'invalid');
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '';
    const field = [...issue.path, key].join('.');
    const accepted = acceptedKeys(issue.path);
    return new UsageError(field, `unknown key (accepted: ${accepted.join(', ')})`);
  }
  const field = issue.path.join('.') || 'scenario';
  if (issue.code === 'invalid_enum_value') {
    return new UsageError(
      field,
      `${JSON.stringify(issue.received)} is not accepted (accepted: ${issue.options.join(', ')})`,
    );
  }
  if (issue.code === 'invalid_type' && issue.expected === 'object') {
    return new UsageError(
      field,
      `expected a mapping (accepted keys: ${acceptedKeys(issue.path).join(', ')})`,
    );
  }
  if (issue.code === 'invalid_union') {
    return new UsageError(field, 'expected a number or a string');
  }
  return new UsageError(field, issue.message);
}
