/**
 * gvm top: a live view of every GPU and every process under gvm (memory bars with the limit and
 * swap, priority, frozen, kernel rate and pending), redrawn about every second. Keys: s sort, j/k or
 * the arrows select, f freeze and t thaw the selected process on that GPU, q quit. `--once` prints
 * one frame for scripts.
 */
import { Gvm } from '../index';
import { renderFrame } from './render';
import { RateMemory, readRows, Row, SORT_KEYS, SortKey, sortRows } from './rows';

export { isSortKey, SORT_KEYS, SortKey } from './rows';

export interface TopOptions {
  once: boolean;
  sort: SortKey;
  shmDir?: string;
  intervalMs?: number;
}

/** One frame for scripts: two readings 200 ms apart, so kernel rates are real. */
async function printOnce(options: TopOptions): Promise<number> {
  const previous: RateMemory = new Map();
  await readRows(previous, options.shmDir);
  await new Promise((r) => setTimeout(r, 200));
  const rows = sortRows(await readRows(previous, options.shmDir), options.sort);
  process.stdout.write(renderFrame(rows, options.sort, -1, process.stdout.columns ?? 200));
  return 0;
}

/** Freezes or thaws one process on one GPU; resolves with the line to show. */
async function freezeRow(row: Row, freeze: boolean, shmDir?: string): Promise<string> {
  try {
    using p = await Gvm.process(row.pid, { shmDir });
    const g = p.gpuByIndex(row.gpu);
    const r = freeze ? await g.freeze() : await g.thaw();
    return `${row.pid}:${row.gpu} ${r.message}`;
  } catch (e) {
    return `${row.pid}:${row.gpu} ${(e as Error).message}`;
  }
}

/** Keys typed quickly (or sent by tmux) arrive together: one entry per key, arrows kept whole. */
export function splitKeys(input: string): string[] {
  const keys: string[] = [];
  for (let i = 0; i < input.length; ) {
    const n = input.startsWith('\x1b[', i) && i + 2 < input.length ? 3 : 1;
    keys.push(input.slice(i, i + n));
    i += n;
  }
  return keys;
}

const ENTER = '\x1b[?1049h\x1b[?25l'; // alternate screen, cursor hidden
const LEAVE = '\x1b[?25h\x1b[?1049l';

export async function runTop(options: TopOptions): Promise<number> {
  if (options.once) return printOnce(options);
  const out = process.stdout;
  const stdin = process.stdin;
  const previous: RateMemory = new Map();
  let sort = options.sort;
  let selected = 0;
  let selectedKey: string | undefined; // pid:gpu, so the selection follows its row when the order changes
  let rows: Row[] = [];
  let message = '';

  const draw = (): void => {
    if (selectedKey !== undefined) {
      const i = rows.findIndex((r) => `${r.pid}:${r.gpu}` === selectedKey);
      if (i >= 0) selected = i;
    }
    selected = Math.max(0, Math.min(selected, rows.length - 1));
    const row = rows[selected];
    selectedKey = row ? `${row.pid}:${row.gpu}` : undefined;
    const frame = renderFrame(rows, sort, selected, out.columns ?? 120);
    out.write(`\x1b[H\x1b[2J${frame}${message ? `\n${message}\n` : ''}`);
  };
  const refresh = async (): Promise<void> => {
    try {
      rows = sortRows(await readRows(previous, options.shmDir), sort);
    } catch (e) {
      message = `cannot read the control blocks: ${(e as Error).message}`;
    }
    draw();
  };

  out.write(ENTER);
  await refresh();
  const timer = setInterval(() => void refresh(), options.intervalMs ?? 1000);
  out.on('resize', draw);
  return new Promise<number>((resolve) => {
    const quit = (): void => {
      clearInterval(timer);
      out.off('resize', draw);
      if (stdin.isTTY) stdin.setRawMode(false);
      stdin.pause();
      out.write(LEAVE);
      resolve(0);
    };
    process.once('SIGTERM', quit);
    if (stdin.isTTY) stdin.setRawMode(true);
    stdin.resume();
    stdin.on('data', (data: Buffer) => {
      for (const key of splitKeys(data.toString())) {
        if (onKey(key) === 'quit') return quit();
      }
      draw();
    });
    const onKey = (key: string): 'quit' | undefined => {
      if (key === 'q' || key === '\u0003') return 'quit';
      if (key === 's') {
        sort = SORT_KEYS[(SORT_KEYS.indexOf(sort) + 1) % SORT_KEYS.length]!;
        rows = sortRows(rows, sort);
      } else if (key === 'j' || key === '\x1b[B') {
        selected = Math.min(selected + 1, rows.length - 1);
        selectedKey = undefined;
      } else if (key === 'k' || key === '\x1b[A') {
        selected = Math.max(selected - 1, 0);
        selectedKey = undefined;
      } else if (key === 'f' || key === 't') {
        const row = rows[selected];
        if (row) {
          message = `${key === 'f' ? 'freezing' : 'thawing'} ${row.pid}:${row.gpu} ...`;
          void freezeRow(row, key === 'f', options.shmDir).then((line) => {
            message = line;
            return refresh();
          });
        }
      }
      return undefined;
    };
  });
}
