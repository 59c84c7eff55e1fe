/** A ` ```ts run ` block of a README: a whole module, and the lines its `// →` comments expect. */
export interface RunnableBlock {
  /** The README, relative to the repository. */
  file: string;
  /** The line of its opening fence (1-based). */
  line: number;
  code: string;
  /**
   * `serve=SIZE` after `run`: the snippet is a live migration's source. A `dirtytrack serve` of
   * that much memory must be listening first, its port in `DIRTYTRACK_PORT`.
   */
  serve?: string;
  /** Each `// → text` comment, in order: `text` up to ` — ` (an explanation), and its line. */
  expected: { text: string; line: number }[];
}

const FENCE_OPEN = /^```(\w+)[ \t]*(.*)$/;
const EXPECTED = /\/\/ → (.*)$/;

/** The runnable blocks of one README's text. */
export function parseRunnableBlocks(file: string, text: string): RunnableBlock[] {
  const lines = text.split('\n');
  const blocks: RunnableBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE_OPEN.exec(lines[i] as string);
    if (open === null) continue;
    const meta = (open[2] as string).split(/\s+/);
    const runnable = open[1] === 'ts' && meta.includes('run');
    const serve = meta.find((m) => m.startsWith('serve='))?.slice('serve='.length);
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !(lines[i] as string).startsWith('```'); i++) body.push(lines[i] as string);
    if (i === lines.length) throw new Error(`${file}:${start + 1}: a code block that never closes`);
    if (!runnable) continue;
    const expected: RunnableBlock['expected'] = [];
    body.forEach((l, k) => {
      const m = EXPECTED.exec(l);
      if (m !== null)
        expected.push({ text: (m[1] as string).split(' — ')[0] as string, line: start + 2 + k });
    });
    blocks.push({
      file,
      line: start + 1,
      code: body.join('\n') + '\n',
      ...(serve === undefined ? {} : { serve }),
      expected,
    });
  }
  return blocks;
}

/**
 * Whether a printed line is what a comment says: equal once all whitespace is dropped, where `…`
 * in the comment stands for any text.
 */
export function matchesExpected(printed: string, expected: string): boolean {
  const squeeze = (s: string): string => s.replace(/\s+/g, '');
  const parts = squeeze(expected)
    .split('…')
    .map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(`^${parts.join('.*')}$`, 's').test(squeeze(printed));
}
