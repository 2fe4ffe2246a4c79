// Stands in for node-gyp under prebuildify (PREBUILD_NODE_GYP): runs `cmake-js rebuild` instead.
// prebuildify passes node-gyp arguments (rebuild --target=V --devdir=D --arch=A --release); with
// N-API the target does not matter, and cmake-js takes its headers from node-api-headers.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const args = [require.resolve('cmake-js/bin/cmake-js'), 'rebuild'];
for (const a of process.argv.slice(2)) {
  if (a.startsWith('--arch=')) args.push('--arch', a.slice('--arch='.length));
  if (a === '--debug') args.push('--debug');
}
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
