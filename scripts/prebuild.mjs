// `npm run prebuild`: a prebuildify prebuild (N-API, stripped) of the addon, built through cmake-js,
// plus the agent libgvm.so in the same prebuilds/<platform>-<arch>/ folder.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);

function run(cmd, args, env = process.env) {
  console.log(`gvm prebuild: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (r.error) throw r.error;
  if (r.status !== 0) process.exit(r.status ?? 1);
}

fs.rmSync(dir, { recursive: true, force: true });

// prebuildify drives node-gyp; PREBUILD_NODE_GYP swaps in our cmake-js backend, which builds the
// addon and the agent into build/Release (prebuild.mjs keeps only those two in prebuilds/).
const backend = path.join(root, 'scripts', 'prebuild-backend.mjs');
const prebuildify = require.resolve('prebuildify/bin.js');
run(process.execPath, [prebuildify, '--napi', '--strip'], {
  ...process.env,
  PREBUILD_NODE_GYP: `"${process.execPath}" "${backend}"`,
  PREBUILD_SHELL: '/bin/sh',
});

// prebuildify copies the shared libraries it finds next to the addon; make sure of the agent.
const agent = path.join(root, 'build', 'Release', 'libgvm.so');
const dest = path.join(dir, 'libgvm.so');
if (!fs.existsSync(agent)) {
  console.error('gvm prebuild: build/Release/libgvm.so was not built (no agent sources?)');
  process.exit(1);
}
fs.copyFileSync(agent, dest);
run('strip', ['--strip-unneeded', dest]);

// gvmd's FUSE tree is a module of its own (only gvmd needs libfuse3), in a sub-folder so that
// node-gyp-build never mistakes it for the main addon.
const fuse = path.join(root, 'build', 'Release', 'fuse', 'gvm_fuse.node');
if (fs.existsSync(fuse)) {
  fs.mkdirSync(path.join(dir, 'fuse'), { recursive: true });
  const fuseDest = path.join(dir, 'fuse', 'gvm_fuse.node');
  fs.copyFileSync(fuse, fuseDest);
  run('strip', ['--strip-unneeded', fuseDest]);
}
for (const f of fs.readdirSync(dir)) {
  if (f !== 'libgvm.so' && f !== 'fuse' && !f.endsWith('.node')) fs.rmSync(path.join(dir, f));
}
console.log(`gvm prebuild: ${fs.readdirSync(dir).map((f) => path.join(path.relative(root, dir), f)).join(', ')}`);

// prebuildify moved the addon out of build/Release; put a copy back so the build tree stays whole.
const built = fs.readdirSync(dir).find((f) => f.endsWith('.node'));
if (built !== undefined) fs.copyFileSync(path.join(dir, built), path.join(root, 'build', 'Release', 'gvm.node'));
