import { describe, expect, it } from 'vitest';
import { DEFAULT_COST_MODEL, createCostModel } from './cost-model.js';
import { DirtytrackError } from './errors.js';

const KEYS = [
  'bitmapXchgNsPerWord',
  'bitmapCopyNsPerWord',
  'rearmNsPerPage',
  'enableLoggingNsPerPage',
  'tlbFlushNs',
  'writeFaultNs',
  'slowFaultNs',
  'hugePageSplitNs',
  'ringEntryNs',
  'pageSendCopyNs',
  'pageSendZeroCopyNs',
];

function expectRejected(overrides: Record<string, unknown>, field: string): DirtytrackError {
  let caught: unknown;
  try {
    createCostModel(overrides as Parameters<typeof createCostModel>[0]);
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(DirtytrackError);
  const error = caught as DirtytrackError;
  expect(error.code).toBe('invalid-argument');
  expect(error.component).toBe('cost-model');
  expect(error.field).toBe(field);
  return error;
}

describe('DEFAULT_COST_MODEL', () => {
  it('holds the slides numbers: 240 ms / 80 ms over the 33,554,432 words of a 256 MiB bitmap', () => {
    expect((256 * 2 ** 20) / 8).toBe(33_554_432);
    expect(DEFAULT_COST_MODEL.bitmapXchgNsPerWord).toBe(7.152557373046875);
    expect(DEFAULT_COST_MODEL.bitmapXchgNsPerWord).toBe(240e6 / 33_554_432);
    expect(DEFAULT_COST_MODEL.bitmapCopyNsPerWord).toBe(80e6 / 33_554_432);
    expect(DEFAULT_COST_MODEL.bitmapCopyNsPerWord).toBe(2.384185791015625);
  });

  it('holds the documented estimates, and nothing else', () => {
    expect(DEFAULT_COST_MODEL).toEqual({
      bitmapXchgNsPerWord: 7.152557373046875,
      bitmapCopyNsPerWord: 2.384185791015625,
      rearmNsPerPage: 40,
      enableLoggingNsPerPage: 2,
      tlbFlushNs: 20_000,
      writeFaultNs: 1_500,
      slowFaultNs: 3_000,
      hugePageSplitNs: 2_000,
      ringEntryNs: 10,
      pageSendCopyNs: 2_000,
      pageSendZeroCopyNs: 500,
    });
    expect(Object.keys(DEFAULT_COST_MODEL)).toEqual(KEYS);
  });

  it('is frozen', () => {
    expect(Object.isFrozen(DEFAULT_COST_MODEL)).toBe(true);
    expect(() => {
      (DEFAULT_COST_MODEL as { rearmNsPerPage: number }).rearmNsPerPage = 1;
    }).toThrow(TypeError);
    expect(DEFAULT_COST_MODEL.rearmNsPerPage).toBe(40);
  });
});

describe('createCostModel', () => {
  it('returns the defaults, as a new frozen object, without overrides', () => {
    const model = createCostModel();
    expect(model).toEqual(DEFAULT_COST_MODEL);
    expect(model).not.toBe(DEFAULT_COST_MODEL);
    expect(Object.isFrozen(model)).toBe(true);
    expect(createCostModel({})).toEqual(DEFAULT_COST_MODEL);
  });

  it('applies overrides over the defaults (0 is a valid cost)', () => {
    const model = createCostModel({ rearmNsPerPage: 55, tlbFlushNs: 0 });
    expect(model).toEqual({ ...DEFAULT_COST_MODEL, rearmNsPerPage: 55, tlbFlushNs: 0 });
    expect(DEFAULT_COST_MODEL.rearmNsPerPage).toBe(40); // defaults untouched
    // An override given as undefined means "not given" (e.g. an optional scenario field).
    expect(createCostModel({ writeFaultNs: undefined, rearmNsPerPage: 1 })).toEqual({
      ...DEFAULT_COST_MODEL,
      rearmNsPerPage: 1,
    });
  });

  it('rejects negative, NaN, infinite and non-number costs, naming the field', () => {
    expect(expectRejected({ writeFaultNs: -1 }, 'writeFaultNs').message).toBe(
      '[dirtytrack] [cost-model] writeFaultNs: cost -1 must be a finite number >= 0',
    );
    expectRejected({ rearmNsPerPage: NaN }, 'rearmNsPerPage');
    expectRejected({ tlbFlushNs: Infinity }, 'tlbFlushNs');
    expectRejected({ bitmapCopyNsPerWord: '5' }, 'bitmapCopyNsPerWord');
  });

  it('rejects unknown keys, naming the field and listing the accepted ones', () => {
    expect(expectRejected({ rearmNsPerPages: 40 }, 'rearmNsPerPages').message).toBe(
      `[dirtytrack] [cost-model] rearmNsPerPages: unknown cost (accepted: ${KEYS.join(', ')})`,
    );
  });
});
