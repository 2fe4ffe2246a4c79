// The device's scripts (bench/, test/gpu/) run only where a GPU is lent, and device time is scarce:
// a syntax error found there costs a machine start. Every Python script must parse, every shell
// script must pass `bash -n`, and the two bench runners, which import only the standard library at
// the top, must answer --help.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

const root = path.resolve(__dirname, '..');

function filesUnder(dir: string, ext: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(rel, ext));
    else if (e.name.endsWith(ext)) out.push(rel);
  }
  return out.sort();
}

const python = spawnSync('python3', ['--version']).status === 0;
const dirs = ['bench', 'test/gpu'];

t.test('every device Python script parses', { skip: python ? false : 'no python3 on this machine' }, (t) => {
  const scripts = dirs.flatMap((d) => filesUnder(d, '.py'));
  t.ok(scripts.length >= 10, `${scripts.length} scripts found`);
  // ast.parse, not py_compile: nothing is written next to the sources
  const check = 'import ast,sys\nfor p in sys.argv[1:]:\n    ast.parse(open(p).read(), p)\n';
  for (const s of scripts) {
    const r = spawnSync('python3', ['-c', check, s], { cwd: root, encoding: 'utf8' });
    t.equal(r.status, 0, `${s} ${r.stderr.trim().split('\n').slice(-2).join(' ')}`);
  }
  t.end();
});

t.test('every device shell script passes bash -n', (t) => {
  const scripts = [...dirs, '.ci'].flatMap((d) => filesUnder(d, '.sh'));
  scripts.push('.ci/run');
  t.ok(scripts.length >= 10, `${scripts.length} scripts found`);
  for (const s of scripts) {
    const r = spawnSync('bash', ['-n', s], { cwd: root, encoding: 'utf8' });
    t.equal(r.status, 0, `${s} ${r.stderr.trim()}`);
  }
  t.end();
});

t.test('the bench runners answer --help without a GPU', { skip: python ? false : 'no python3 on this machine' }, (t) => {
  for (const [script, option] of [
    ['bench/colocation/run.py', '--cases'],
    ['bench/colocation-micro/run.py', '--seconds'],
  ] as const) {
    const r = spawnSync('python3', [script, '--help'], { cwd: root, encoding: 'utf8', timeout: 30_000 });
    t.equal(r.status, 0, `${script} --help: ${r.stderr.trim()}`);
    t.match(r.stdout, option, `${script} lists ${option}`);
  }
  t.end();
});
