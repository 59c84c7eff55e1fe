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

/** A ` ```console run ` block: shell commands, each with the lines it prints (stdout and stderr). */
export interface Transcript {
  file: string;
  /** The line of its opening fence (1-based). */
  line: number;
  /** `cwd=DIR` after `run`: the commands run there (relative to the repository), not in a scratch directory. */
  cwd?: string;
  commands: { command: string; line: number; expected: string[] }[];
}

const FENCE_OPEN = /^```(\w+)[ \t]*(.*)$/;
const EXPECTED = /\/\/ → (.*)$/;

/** A fenced code block with a language: its fence's words, its line, and its body's lines. */
interface Fenced {
  lang: string;
  meta: string[];
  /** The line of its opening fence (1-based); body line k (0-based) is line `line + 1 + k`. */
  line: number;
  body: string[];
}

/** The fenced blocks of a README's text that name a language (` ```ts `, ` ```console run `…). */
function fencedBlocks(file: string, text: string): Fenced[] {
  const lines = text.split('\n');
  const blocks: Fenced[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE_OPEN.exec(lines[i] as string);
    if (open === null) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !(lines[i] as string).startsWith('```'); i++) body.push(lines[i] as string);
    if (i === lines.length) throw new Error(`${file}:${start + 1}: a code block that never closes`);
    blocks.push({ lang: open[1] as string, meta: (open[2] as string).split(/\s+/), line: start + 1, body });
  }
  return blocks;
}

/** The runnable blocks of one README's text. */
export function parseRunnableBlocks(file: string, text: string): RunnableBlock[] {
  return fencedBlocks(file, text)
    .filter((b) => b.lang === 'ts' && b.meta.includes('run'))
    .map(({ meta, line, body }) => {
      const serve = meta.find((m) => m.startsWith('serve='))?.slice('serve='.length);
      const expected: RunnableBlock['expected'] = [];
      body.forEach((l, k) => {
        const m = EXPECTED.exec(l);
        if (m !== null)
          expected.push({ text: (m[1] as string).split(' — ')[0] as string, line: line + 1 + k });
      });
      return {
        file,
        line,
        code: body.join('\n') + '\n',
        ...(serve === undefined ? {} : { serve }),
        expected,
      };
    });
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

/**
 * The runnable transcripts of one README's text: in a ` ```console run ` block, a line `$ …` is a
 * command (a line ending in `\\` goes on in the next), and the lines after it, up to the next
 * `$ `, what it prints.
 */
export function parseTranscripts(file: string, text: string): Transcript[] {
  return fencedBlocks(file, text)
    .filter((b) => b.lang === 'console' && b.meta.includes('run'))
    .map(({ meta, line, body }) => {
      const cwd = meta.find((m) => m.startsWith('cwd='))?.slice('cwd='.length);
      const commands: Transcript['commands'] = [];
      for (let k = 0; k < body.length; k++) {
        const l = body[k] as string;
        if (l.startsWith('$ ')) {
          const at = line + 1 + k;
          let command = l.slice(2);
          while (command.endsWith('\\') && k + 1 < body.length)
            command = command.slice(0, -1) + (body[++k] as string).trim();
          commands.push({ command, line: at, expected: [] });
        } else if (commands.length === 0) {
          throw new Error(`${file}:${line + 1 + k}: a console block's output before any $ command`);
        } else (commands[commands.length - 1] as Transcript['commands'][number]).expected.push(l);
      }
      return { file, line, ...(cwd === undefined ? {} : { cwd }), commands };
    });
}
