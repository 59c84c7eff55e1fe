import {
  DirtytrackError,
  NS_PER_MS,
  type DirtytrackErrorCode,
  type WriteBatch,
  type Workload,
} from '@dirtytrack/core';

/** The first 8 bytes of a binary trace: `DTTRACE` and a NUL. */
export const TRACE_MAGIC = Uint8Array.of(0x44, 0x54, 0x54, 0x52, 0x41, 0x43, 0x45, 0x00);
/** The one format version this package reads and writes. */
export const TRACE_VERSION = 1;
/** Bytes of the binary header: magic, version, vCPUs, pages, period, records, reserved. */
export const TRACE_HEADER_BYTES = 40;
/** Bytes of a record's header: le64 time, le32 vCPU, le32 count (then `count` le32 pages). */
export const TRACE_RECORD_HEADER_BYTES = 16;
/** The first word of a text trace's header line. */
export const TRACE_TEXT_MAGIC = 'dirtytrack-trace';

/**
 * A parsed trace, struct-of-arrays (no per-record objects, ARCHITECTURE §3): record `r` says
 * that at `timeNs[r]` (from the start of the trace) vCPU `vcpu[r]` wrote the pages
 * `writes[end[r-1] .. end[r])` (`end[-1]` = 0), in that order. Records are in time order.
 */
export interface Trace {
  /** Format version the trace was read from. */
  readonly version: number;
  /** Pages of the traced guest: every page number is below it. */
  readonly pages: number;
  /** vCPUs of the traced guest: every record's vCPU is below it. */
  readonly vcpus: number;
  /** Length of the trace (ns): every record's time is below it; a looping replay repeats with it. */
  readonly periodNs: number;
  readonly records: number;
  readonly timeNs: Float64Array;
  readonly vcpu: Uint32Array;
  readonly end: Float64Array;
  readonly writes: Uint32Array;
}

/**
 * A malformed trace: a {@link DirtytrackError} from component `trace-workload` whose `offset` is
 * the byte of the file at fault (also in the message: `trace byte 40: …`). Structural damage
 * (magic, version, truncation, reserved bits, trailing bytes, time order, bad text) is
 * `invalid-argument`; a value outside what it addresses (a page ≥ the guest's pages, a vCPU ≥
 * the vCPU count, a time ≥ the period, a count running past the end) is `out-of-range`.
 */
export class TraceFormatError extends DirtytrackError {
  readonly offset: number;
  constructor(code: DirtytrackErrorCode, offset: number, message: string) {
    super(code, `trace byte ${offset}: ${message}`, { component: 'trace-workload', field: 'trace' });
    this.offset = offset;
  }
}

/** What a trace is made of, for {@link encodeTrace}: small traces written by hand or by tests. */
export interface TraceInput {
  pages: number;
  vcpus: number;
  periodNs: number;
  records: readonly { timeNs: number; vcpu: number; pages: ArrayLike<number> }[];
}

/** Streams records into a binary trace (the format in the package README). */
export interface TraceWriter {
  /**
   * Appends a record: at `timeNs` (not before the previous record's) vCPU `vcpu` wrote
   * `offsets[0..count)` (default: all of them). The pages are copied.
   */
  append(timeNs: number, vcpu: number, offsets: ArrayLike<number>, count?: number): void;
  /** Ends the trace with its period (> every record's time) and returns the file's bytes. */
  finish(periodNs: number): Uint8Array;
}

/** A binary trace writer for a guest of `pages` pages and `vcpus` vCPUs. */
export function createTraceWriter(options: { pages: number; vcpus: number }): TraceWriter {
  const { pages, vcpus } = options;
  if (!(Number.isInteger(pages) && pages >= 1 && pages <= 2 ** 32))
    fail('invalid-argument', 'pages', `${pages} is not an integer in [1, 2^32]`);
  if (!(Number.isInteger(vcpus) && vcpus >= 1 && vcpus <= 0xffff_ffff))
    fail('invalid-argument', 'vcpus', `${vcpus} is not an integer in [1, 2^32)`);
  let bytes = new Uint8Array(4096);
  let view = new DataView(bytes.buffer);
  let length = TRACE_HEADER_BYTES;
  let records = 0;
  let lastTime = 0;
  let finished = false;
  const reserve = (more: number): void => {
    if (length + more <= bytes.length) return;
    const next = new Uint8Array(Math.max(length + more, bytes.length * 2));
    next.set(bytes.subarray(0, length));
    bytes = next;
    view = new DataView(bytes.buffer);
  };
  const checkOpen = (): void => {
    if (finished) fail('invalid-state', 'trace', 'the writer has finished');
  };
  return {
    append(timeNs, vcpu, offsets, count = offsets.length) {
      checkOpen();
      if (!(Number.isSafeInteger(timeNs) && timeNs >= lastTime))
        fail(
          'invalid-argument',
          'time',
          `${timeNs} ns is not an integer >= the previous record's ${lastTime} ns`,
        );
      if (!(Number.isInteger(vcpu) && vcpu >= 0 && vcpu < vcpus))
        fail('out-of-range', 'vcpu', `vCPU ${vcpu} is not in [0, ${vcpus})`);
      if (!(Number.isInteger(count) && count >= 0 && count <= offsets.length && count <= 0xffff_ffff))
        fail('invalid-argument', 'count', `${count} is not an integer in [0, ${offsets.length}]`);
      if (records === 0xffff_ffff) fail('out-of-range', 'trace', 'a trace holds at most 2^32 - 1 records');
      reserve(TRACE_RECORD_HEADER_BYTES + 4 * count);
      const at = length;
      const first = at + TRACE_RECORD_HEADER_BYTES;
      if (LITTLE_ENDIAN_HOST && offsets instanceof Uint32Array) {
        // Already u32: one bounds check each, then a bulk copy (the buffer is 4-aligned).
        const bad = firstAtOrAbove(offsets, 0, count, pages);
        if (bad !== -1)
          fail(
            'out-of-range',
            'page',
            `page ${offsets[bad]} (write ${bad} of the record) is not in [0, ${pages})`,
          );
        new Uint32Array(bytes.buffer, first, count).set(offsets.subarray(0, count));
      } else {
        for (let i = 0; i < count; i++) {
          const p = offsets[i] as number;
          if (!(Number.isInteger(p) && p >= 0 && p < pages))
            fail('out-of-range', 'page', `page ${p} (write ${i} of the record) is not in [0, ${pages})`);
          view.setUint32(first + 4 * i, p, true);
        }
      }
      view.setBigUint64(at, BigInt(timeNs), true);
      view.setUint32(at + 8, vcpu, true);
      view.setUint32(at + 12, count, true);
      length = at + TRACE_RECORD_HEADER_BYTES + 4 * count;
      records++;
      lastTime = timeNs;
    },
    finish(periodNs) {
      checkOpen();
      if (!(Number.isSafeInteger(periodNs) && periodNs >= 1 && (records === 0 || periodNs > lastTime)))
        fail('invalid-argument', 'period', `${periodNs} ns is not an integer above every record's time`);
      finished = true;
      bytes.set(TRACE_MAGIC, 0);
      view.setUint32(8, TRACE_VERSION, true);
      view.setUint32(12, vcpus, true);
      view.setBigUint64(16, BigInt(pages), true);
      view.setBigUint64(24, BigInt(periodNs), true);
      view.setUint32(32, records, true);
      view.setUint32(36, 0, true);
      return prefix(bytes, length, new Uint8Array(length));
    },
  };
}

/** The binary trace of `input` (its records must be in time order). */
export function encodeTrace(input: TraceInput): Uint8Array {
  const writer = createTraceWriter({ pages: input.pages, vcpus: input.vcpus });
  for (const r of input.records) writer.append(r.timeNs, r.vcpu, r.pages);
  return writer.finish(input.periodNs);
}

/**
 * Reads a trace, binary (starts with {@link TRACE_MAGIC}) or text (starts with
 * `dirtytrack-trace`), bounds-checking every field; a bad one is a {@link TraceFormatError}
 * naming its byte offset. Nothing is allocated from a header's counts before the bytes behind
 * them are known to exist.
 */
export function parseTrace(bytes: Uint8Array): Trace {
  if (startsWith(bytes, TEXT_MAGIC_BYTES)) return parseTextTrace(bytes);
  return parseBinaryTrace(bytes);
}

/** The text form of a trace (see the package README); `parseTrace` reads it back. */
export function formatTraceText(trace: Trace): string {
  const lines = [
    `${TRACE_TEXT_MAGIC} ${TRACE_VERSION} pages=${trace.pages} vcpus=${trace.vcpus} period=${trace.periodNs}`,
  ];
  let start = 0;
  for (let r = 0; r < trace.records; r++) {
    const end = trace.end[r] as number;
    lines.push(`${trace.timeNs[r]} ${trace.vcpu[r]} ${trace.writes.subarray(start, end).join(',')}`);
    start = end;
  }
  return lines.join('\n') + '\n';
}

/** How {@link recordTrace} samples a workload. */
export interface RecordTraceOptions {
  /** Pages of the guest the workload writes (the trace's page count). */
  pages: number;
  /** Virtual time to record (ns); also the trace's period. */
  durationNs: number;
  /** Quantum of the `generate` calls; each batch is stamped with its quantum's start. Default 1 ms. */
  quantumNs?: number;
}

/**
 * Records `durationNs` of any workload at full speed into a binary trace: `generate` is called
 * on `[k·q, (k+1)·q)` for quantum q, as the model engine calls it when run in steps of q, and
 * each batch becomes one record stamped `k·q`. Replaying the trace in steps of q gives back the
 * very same batches (the write slot is not recorded: a trace is one slot).
 */
export function recordTrace(workload: Workload, options: RecordTraceOptions): Uint8Array {
  const quantum = options.quantumNs ?? NS_PER_MS;
  const duration = options.durationNs;
  if (!(Number.isSafeInteger(duration) && duration >= 1))
    fail('invalid-argument', 'duration', `${duration} ns is not an integer >= 1`);
  if (!(Number.isSafeInteger(quantum) && quantum >= 1))
    fail('invalid-argument', 'quantum', `${quantum} ns is not an integer >= 1`);
  const writer = createTraceWriter({ pages: options.pages, vcpus: workload.vcpus });
  for (let t = 0; t < duration; t += quantum) {
    const stamp = t;
    workload.generate(t, Math.min(t + quantum, duration), 1, (b) =>
      writer.append(stamp, b.vcpu, b.offsets, b.count),
    );
  }
  return writer.finish(duration);
}

/** Options of {@link createTraceWorkload}. */
export interface TraceWorkloadOptions {
  /** The trace: a file's bytes (binary or text) or a parsed {@link Trace}. */
  trace: Uint8Array | Trace;
  /** Pages in the slot the replay writes to; must equal the trace's unless `scale`. */
  pages: number;
  /** vCPUs of the guest; at least the trace's (extra vCPUs stay idle). */
  vcpus: number;
  /** Slot id the writes go to. Default 0. */
  slot?: number;
  /** Repeat the trace with its period. Default false: the guest goes idle once the trace ends. */
  loop?: boolean;
  /**
   * Replay a trace taken on a guest of another size, mapping page p to
   * `floor(p × pages / tracePages)`. Default false: a size mismatch is an error.
   */
  scale?: boolean;
}

/**
 * Replays a trace: the recorded writes, at their recorded times, as one batch per vCPU per
 * `generate` call (copies of contiguous runs of the trace: `TypedArray.set`, no per-page calls).
 *
 * Time: each vCPU has its own replay clock, which starts at 0 at the first `generate` call and
 * advances by `(toNs − fromNs) × speed × vcpuSpeeds[v]` per call; a call emits the vCPU's
 * records whose time falls in `[clock before, clock after)`. At full speed the replay clock is
 * the guest's running time, so records land at their recorded times. A throttled vCPU runs the
 * same program slower — the same writes, proportionally later and so fewer per second, as the
 * sweep workload's cursor advances only with the writes made — and a paused guest (no
 * `generate` calls) does not advance its trace.
 */
export function createTraceWorkload(options: TraceWorkloadOptions): Workload {
  const trace = options.trace instanceof Uint8Array ? parseTrace(options.trace) : options.trace;
  const { pages, vcpus } = options;
  const slot = options.slot ?? 0;
  const loop = options.loop ?? false;
  if (!(Number.isInteger(vcpus) && vcpus >= 1))
    fail('invalid-argument', 'vcpus', `${vcpus} is not an integer >= 1`);
  if (!(Number.isInteger(pages) && pages >= 1 && pages <= 2 ** 32))
    fail('invalid-argument', 'pages', `${pages} is not an integer in [1, 2^32]`);
  if (trace.vcpus > vcpus) {
    fail(
      'invalid-argument',
      'vcpus',
      `the trace was taken on ${trace.vcpus} vCPUs, this guest has ${vcpus} (accepted: at least ${trace.vcpus})`,
    );
  }
  const scale = trace.pages !== pages;
  if (scale && options.scale !== true) {
    fail(
      'invalid-argument',
      'scale',
      `the trace was taken on a guest of ${trace.pages} pages, this guest has ${pages} (accepted: the same size, or scale: true)`,
    );
  }
  // Per vCPU, its records' times, the end of each record in its page run, and the pages.
  const perVcpuRecords = new Float64Array(vcpus);
  const perVcpuWrites = new Float64Array(vcpus);
  for (let r = 0, start = 0; r < trace.records; r++) {
    const v = trace.vcpu[r] as number;
    const end = trace.end[r] as number;
    perVcpuRecords[v] = (perVcpuRecords[v] as number) + 1;
    perVcpuWrites[v] = (perVcpuWrites[v] as number) + end - start;
    start = end;
  }
  const times = Array.from({ length: vcpus }, (_, v) => new Float64Array(perVcpuRecords[v] as number));
  const ends = Array.from({ length: vcpus }, (_, v) => new Float64Array(perVcpuRecords[v] as number));
  const runs = Array.from({ length: vcpus }, (_, v) => new Uint32Array(perVcpuWrites[v] as number));
  perVcpuRecords.fill(0);
  perVcpuWrites.fill(0);
  for (let r = 0, start = 0; r < trace.records; r++) {
    const v = trace.vcpu[r] as number;
    const end = trace.end[r] as number;
    const i = perVcpuRecords[v] as number;
    const w = perVcpuWrites[v] as number;
    (runs[v] as Uint32Array).set(trace.writes.subarray(start, end), w);
    (times[v] as Float64Array)[i] = trace.timeNs[r] as number;
    (ends[v] as Float64Array)[i] = w + end - start;
    perVcpuRecords[v] = i + 1;
    perVcpuWrites[v] = w + end - start;
    start = end;
  }
  if (scale) for (const run of runs) scalePages(run, pages, trace.pages);

  const period = trace.periodNs;
  const clocks = new Float64Array(vcpus); // each vCPU's replay clock (ns of trace time)
  const cursors = new Float64Array(vcpus); // its next record
  const bases = new Float64Array(vcpus); // trace time at which its current pass began (loop)
  let scratch = new Uint32Array(1024);
  const batch = { vcpu: 0, slot, offsets: scratch, count: 0 };
  const append = (from: Uint32Array, a: number, b: number, at: number): number => {
    const n = at + b - a;
    if (n > scratch.length) {
      const next = new Uint32Array(Math.max(n, scratch.length * 2));
      next.set(scratch.subarray(0, at));
      scratch = next;
      batch.offsets = scratch;
    }
    scratch.set(from.subarray(a, b), at);
    return n;
  };
  return {
    kind: 'trace',
    vcpus,
    generate(fromNs, toNs, speed, emit, vcpuSpeeds) {
      if (
        !(Number.isFinite(fromNs) && Number.isFinite(toNs) && toNs >= fromNs) ||
        !(speed >= 0 && speed <= 1)
      ) {
        throw new DirtytrackError(
          'invalid-argument',
          `generate: need finite fromNs <= toNs and speed in [0, 1], got ${fromNs}, ${toNs}, ${speed}`,
          { component: 'trace-workload' },
        );
      }
      if (vcpuSpeeds !== undefined && vcpuSpeeds.length < vcpus) {
        throw new DirtytrackError(
          'invalid-argument',
          `generate: ${vcpuSpeeds.length} vCPU speeds for ${vcpus} vCPUs`,
          { component: 'trace-workload' },
        );
      }
      const dt = toNs - fromNs;
      for (let v = 0; v < vcpus; v++) {
        const s = vcpuSpeeds === undefined ? speed : speed * (vcpuSpeeds[v] as number);
        const after = (clocks[v] as number) + dt * s;
        clocks[v] = after;
        const t = times[v] as Float64Array;
        const n = t.length;
        if (n === 0) continue;
        const e = ends[v] as Float64Array;
        const run = runs[v] as Uint32Array;
        let cursor = cursors[v] as number;
        let base = bases[v] as number;
        let count = 0;
        for (;;) {
          if (cursor === n) {
            if (!loop) break;
            cursor = 0;
            base += period;
          }
          // One comparison form throughout, so a record is due exactly once.
          const due = after - base;
          if ((t[cursor] as number) >= due) break;
          const next = firstAtOrAfter(t, cursor, n, due);
          count = append(run, cursor === 0 ? 0 : (e[cursor - 1] as number), e[next - 1] as number, count);
          cursor = next;
        }
        cursors[v] = cursor;
        bases[v] = base;
        if (count === 0) continue;
        batch.vcpu = v;
        batch.count = count;
        emit(batch as WriteBatch);
      }
    },
  };
}

const TEXT_MAGIC_BYTES = new TextEncoder().encode(TRACE_TEXT_MAGIC);
const LITTLE_ENDIAN_HOST = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

function parseBinaryTrace(bytes: Uint8Array): Trace {
  const len = bytes.length;
  const magicSeen = Math.min(len, TRACE_MAGIC.length);
  for (let i = 0; i < magicSeen; i++) {
    if (bytes[i] !== TRACE_MAGIC[i]) {
      throw new TraceFormatError(
        'invalid-argument',
        0,
        `bad magic (accepted: a binary trace starting "DTTRACE\\0", or a text trace starting "${TRACE_TEXT_MAGIC}")`,
      );
    }
  }
  if (len < TRACE_HEADER_BYTES) {
    throw new TraceFormatError(
      'invalid-argument',
      len,
      `truncated header: ${len} bytes, a header has ${TRACE_HEADER_BYTES}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, len);
  const version = view.getUint32(8, true);
  if (version !== TRACE_VERSION)
    throw new TraceFormatError(
      'invalid-argument',
      8,
      `unknown version ${version} (accepted: ${TRACE_VERSION})`,
    );
  const vcpus = view.getUint32(12, true);
  if (vcpus === 0) throw new TraceFormatError('invalid-argument', 12, 'vCPU count 0 (accepted: >= 1)');
  const pages = view.getBigUint64(16, true);
  if (pages === 0n || pages > 2n ** 32n)
    throw new TraceFormatError('out-of-range', 16, `page count ${pages} is not in [1, 2^32]`);
  const period = view.getBigUint64(24, true);
  if (period === 0n || period > BigInt(Number.MAX_SAFE_INTEGER))
    throw new TraceFormatError('out-of-range', 24, `period ${period} ns is not in [1, 2^53)`);
  const records = view.getUint32(32, true);
  const reserved = view.getUint32(36, true);
  if (reserved !== 0)
    throw new TraceFormatError('invalid-argument', 36, `reserved word is ${reserved} (accepted: 0)`);
  const body = len - TRACE_HEADER_BYTES;
  if (records * TRACE_RECORD_HEADER_BYTES > body) {
    throw new TraceFormatError(
      'invalid-argument',
      len,
      `truncated: ${records} records need at least ${records * TRACE_RECORD_HEADER_BYTES} bytes after the header, the file has ${body}`,
    );
  }
  const pageCount = Number(pages);
  const periodNs = Number(period);
  const timeNs = new Float64Array(records);
  const vcpu = new Uint32Array(records);
  const end = new Float64Array(records);
  const writes = new Uint32Array(Math.floor((body - records * TRACE_RECORD_HEADER_BYTES) / 4));
  let at = TRACE_HEADER_BYTES;
  let w = 0;
  let last = 0;
  for (let r = 0; r < records; r++) {
    if (at + TRACE_RECORD_HEADER_BYTES > len) {
      throw new TraceFormatError(
        'invalid-argument',
        len,
        `truncated: record ${r} of ${records} starts at byte ${at}, its header needs ${TRACE_RECORD_HEADER_BYTES} bytes`,
      );
    }
    // le64 as two words: exact below 2^53, and anything at or above the period is rejected.
    const t = view.getUint32(at, true) + view.getUint32(at + 4, true) * 0x1_0000_0000;
    if (t >= periodNs) {
      throw new TraceFormatError(
        'out-of-range',
        at,
        `record ${r}: time ${view.getBigUint64(at, true)} ns is not below the period ${periodNs} ns`,
      );
    }
    if (t < last) {
      throw new TraceFormatError(
        'invalid-argument',
        at,
        `record ${r}: time ${t} ns is before the previous record's ${last} ns (records must be in time order)`,
      );
    }
    const v = view.getUint32(at + 8, true);
    if (v >= vcpus)
      throw new TraceFormatError('out-of-range', at + 8, `record ${r}: vCPU ${v} is not in [0, ${vcpus})`);
    const count = view.getUint32(at + 12, true);
    const first = at + TRACE_RECORD_HEADER_BYTES;
    if (count > (len - first) / 4) {
      throw new TraceFormatError(
        'out-of-range',
        at + 12,
        `record ${r}: ${count} pages run past the end of the file (${Math.floor((len - first) / 4)} fit)`,
      );
    }
    if (w + count > writes.length) {
      // The header promised more records than the bytes after this one can hold.
      throw new TraceFormatError(
        'invalid-argument',
        len,
        `truncated: after record ${r}'s ${count} pages the ${records - r - 1} records left cannot fit`,
      );
    }
    // Page numbers: a bulk copy where the host and alignment allow (little-endian, 4-aligned),
    // then one bounds check each; else one DataView read each.
    if (LITTLE_ENDIAN_HOST && (bytes.byteOffset + first) % 4 === 0) {
      writes.set(new Uint32Array(bytes.buffer, bytes.byteOffset + first, count), w);
    } else {
      for (let i = 0; i < count; i++) writes[w + i] = view.getUint32(first + 4 * i, true);
    }
    const bad = firstAtOrAbove(writes, w, w + count, pageCount);
    if (bad !== -1) {
      throw new TraceFormatError(
        'out-of-range',
        first + 4 * (bad - w),
        `record ${r}: page ${writes[bad]} is not in [0, ${pageCount})`,
      );
    }
    w += count;
    timeNs[r] = t;
    vcpu[r] = v;
    end[r] = w;
    last = t;
    at = first + 4 * count;
  }
  if (at !== len)
    throw new TraceFormatError(
      'invalid-argument',
      at,
      `${len - at} trailing bytes after the last of ${records} records`,
    );
  // A file that parses has no slack: `writes` is exactly full.
  return { version, pages: pageCount, vcpus, periodNs, records, timeNs, vcpu, end, writes };
}

/**
 * The text form: a header line `dirtytrack-trace 1 pages=N vcpus=V period=NS`, then one record
 * per line, `timeNs vcpu page[,page…]`; blank lines and lines starting with `#` are skipped.
 * Parsed byte by byte (ASCII), so errors name exact byte offsets like the binary form's.
 */
function parseTextTrace(bytes: Uint8Array): Trace {
  const len = bytes.length;
  let at = 0;
  const lineEnd = (from: number): number => {
    const nl = bytes.indexOf(0x0a, from);
    return nl === -1 ? len : nl;
  };
  /** The unsigned decimal at `pos` (up to `stop`), and where it ends; an error if there is none. */
  const readNumber = (pos: number, stop: number, what: string): [number, number] => {
    let n = 0;
    let i = pos;
    while (i < stop && (bytes[i] as number) >= 0x30 && (bytes[i] as number) <= 0x39) {
      n = n * 10 + ((bytes[i] as number) - 0x30);
      i++;
    }
    if (i === pos) throw new TraceFormatError('invalid-argument', pos, `expected ${what} (a decimal number)`);
    if (!Number.isSafeInteger(n)) throw new TraceFormatError('out-of-range', pos, `${what} is above 2^53`);
    return [n, i];
  };
  const skipSpaces = (pos: number, stop: number): number => {
    let i = pos;
    while (i < stop && (bytes[i] === 0x20 || bytes[i] === 0x09 || bytes[i] === 0x0d)) i++;
    return i;
  };
  const expectWord = (pos: number, stop: number, word: string): number => {
    const i = skipSpaces(pos, stop);
    for (let k = 0; k < word.length; k++) {
      if (bytes[i + k] !== word.charCodeAt(k) || i + k >= stop)
        throw new TraceFormatError('invalid-argument', i, `expected "${word}" in the header line`);
    }
    return i + word.length;
  };

  // Header line.
  const headerEnd = lineEnd(0);
  at = expectWord(0, headerEnd, TRACE_TEXT_MAGIC);
  const versionAt = skipSpaces(at, headerEnd);
  const [version, afterVersion] = readNumber(versionAt, headerEnd, 'the version');
  if (version !== TRACE_VERSION)
    throw new TraceFormatError(
      'invalid-argument',
      versionAt,
      `unknown version ${version} (accepted: ${TRACE_VERSION})`,
    );
  at = expectWord(afterVersion, headerEnd, 'pages=');
  const [pages, afterPages] = readNumber(at, headerEnd, 'pages');
  if (!(pages >= 1 && pages <= 2 ** 32))
    throw new TraceFormatError('out-of-range', at, `page count ${pages} is not in [1, 2^32]`);
  at = expectWord(afterPages, headerEnd, 'vcpus=');
  const [vcpus, afterVcpus] = readNumber(at, headerEnd, 'vcpus');
  if (!(vcpus >= 1 && vcpus <= 0xffff_ffff))
    throw new TraceFormatError('invalid-argument', at, `vCPU count ${vcpus} is not in [1, 2^32)`);
  at = expectWord(afterVcpus, headerEnd, 'period=');
  const [periodNs, afterPeriod] = readNumber(at, headerEnd, 'period');
  if (periodNs < 1) throw new TraceFormatError('out-of-range', at, 'period 0 ns (accepted: >= 1)');
  at = skipSpaces(afterPeriod, headerEnd);
  if (at !== headerEnd)
    throw new TraceFormatError('invalid-argument', at, 'unexpected text after the header');

  // Records: the writes array grows by doubling; no per-record objects.
  let timeNs = new Float64Array(64);
  let vcpu = new Uint32Array(64);
  let end = new Float64Array(64);
  let writes = new Uint32Array(1024);
  let records = 0;
  let w = 0;
  let last = 0;
  for (let line = headerEnd + 1; line < len; line = lineEnd(line) + 1) {
    const stop = lineEnd(line);
    let i = skipSpaces(line, stop);
    if (i === stop || bytes[i] === 0x23) continue;
    const [t, afterTime] = readNumber(i, stop, 'a time (ns)');
    if (t >= periodNs)
      throw new TraceFormatError('out-of-range', i, `time ${t} ns is not below the period ${periodNs} ns`);
    if (t < last)
      throw new TraceFormatError(
        'invalid-argument',
        i,
        `time ${t} ns is before the previous record's ${last} ns`,
      );
    i = skipSpaces(afterTime, stop);
    const [v, afterVcpu] = readNumber(i, stop, 'a vCPU');
    if (v >= vcpus) throw new TraceFormatError('out-of-range', i, `vCPU ${v} is not in [0, ${vcpus})`);
    i = skipSpaces(afterVcpu, stop);
    for (;;) {
      const [p, afterPage] = readNumber(i, stop, 'a page number');
      if (p >= pages) throw new TraceFormatError('out-of-range', i, `page ${p} is not in [0, ${pages})`);
      if (w === writes.length) writes = grow(writes, new Uint32Array(w * 2));
      writes[w++] = p;
      i = afterPage;
      if (bytes[i] !== 0x2c || i >= stop) break;
      i++;
    }
    i = skipSpaces(i, stop);
    if (i !== stop)
      throw new TraceFormatError(
        'invalid-argument',
        i,
        'expected "timeNs vcpu page[,page…]" and nothing after',
      );
    if (records === timeNs.length) {
      timeNs = grow(timeNs, new Float64Array(records * 2));
      vcpu = grow(vcpu, new Uint32Array(records * 2));
      end = grow(end, new Float64Array(records * 2));
    }
    timeNs[records] = t;
    vcpu[records] = v;
    end[records] = w;
    records++;
    last = t;
  }
  return {
    version,
    pages,
    vcpus,
    periodNs,
    records,
    timeNs: prefix(timeNs, records, new Float64Array(records)),
    vcpu: prefix(vcpu, records, new Uint32Array(records)),
    end: prefix(end, records, new Float64Array(records)),
    writes: prefix(writes, w, new Uint32Array(w)),
  };
}

function grow<T extends Float64Array | Uint32Array>(old: T, next: T): T {
  next.set(old);
  return next;
}

/**
 * The first `n` elements of `from`, copied into `into`: `set` of a `subarray` is a memcpy, where
 * Node 20's `TypedArray.prototype.slice` of 16 M elements took 400 ms on this machine.
 */
function prefix<T extends Uint8Array | Float64Array | Uint32Array>(from: T, n: number, into: T): T {
  into.set(from.subarray(0, n));
  return into;
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

/** First index in `[from, to)` whose value is `>= limit`, or -1: the parser's page bounds check. */
function firstAtOrAbove(values: Uint32Array, from: number, to: number, limit: number): number {
  for (let i = from; i < to; i++) if ((values[i] as number) >= limit) return i;
  return -1;
}

/** First index in `[lo, hi)` whose time is `>= due`, or `hi`; `t` is sorted ascending. */
function firstAtOrAfter(t: Float64Array, lo: number, hi: number, due: number): number {
  let a = lo;
  let b = hi;
  while (a < b) {
    const mid = (a + b) >>> 1;
    if ((t[mid] as number) < due) a = mid + 1;
    else b = mid;
  }
  return a;
}

/** `run[i] = floor(run[i] × pages / tracePages)`, exactly (the product can exceed 2^53). */
function scalePages(run: Uint32Array, pages: number, tracePages: number): void {
  const big = BigInt(pages);
  const den = BigInt(tracePages);
  for (let i = 0; i < run.length; i++) {
    const p = run[i] as number;
    const product = p * pages;
    if (product <= Number.MAX_SAFE_INTEGER) {
      // Exact product; correct the rounded quotient by at most one either way.
      let q = Math.floor(product / tracePages);
      if (q * tracePages > product) q--;
      else if ((q + 1) * tracePages <= product) q++;
      run[i] = q;
    } else {
      run[i] = Number((BigInt(p) * big) / den);
    }
  }
}

function fail(code: DirtytrackErrorCode, field: string, what: string): never {
  throw new DirtytrackError(code, `${field}: ${what}`, { component: 'trace-workload', field });
}
