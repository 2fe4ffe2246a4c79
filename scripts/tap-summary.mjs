// Prints "N passed, N failed, N skipped" for a run of `tap --reporter=tap`, from tap's own closing
// count ("# { total: 450, pass: 449, fail: 1, skip: 2 }"); without one, from the top-level test
// points. Exit status: 1 when anything failed or nothing ran, else 0.
//   node scripts/tap-summary.mjs FILE
import * as fs from 'node:fs';

const lines = fs.readFileSync(process.argv[2] ?? 0, 'utf8').split('\n');
let counts;
for (const line of lines) {
  const m = /^# \{ (total: \d+.*) \}$/.exec(line.trim());
  if (m === null) continue;
  counts = Object.fromEntries(m[1].split(', ').map((kv) => kv.split(': ')).map(([k, v]) => [k, Number(v)]));
}
let passed, failed, skipped;
if (counts !== undefined) {
  passed = counts.pass ?? 0;
  failed = counts.fail ?? 0;
  skipped = (counts.skip ?? 0) + (counts.todo ?? 0);
} else {
  // No closing count (the runner died): count the test files' own points.
  const top = lines.filter((l) => /^(not )?ok\b/.test(l));
  skipped = top.filter((l) => /#\s*(SKIP|TODO)\b/i.test(l)).length;
  failed = top.filter((l) => l.startsWith('not ok') && !/#\s*(SKIP|TODO)\b/i.test(l)).length;
  passed = top.length - skipped - failed;
  if (top.length === 0) failed = 1;
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed > 0 || passed + skipped === 0 ? 1 : 0);
