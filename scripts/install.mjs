// `npm install` hook: use the prebuild for this platform when there is one (prebuilds/<platform>-<arch>/
// with both the addon *.node and the agent libgvm.so), else build everything from source with cmake-js.
//
//   npm_config_build_from_source=true (npm install --build-from-source) or GVM_BUILD_FROM_SOURCE=1
//     always compiles.
//   GVM_BUILD_AGENT=0 skips the agent (developers working on the addon alone).
//   GVM_BUILD_JOBS=N sets cmake's parallel jobs (default: the number of CPUs).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const truthy = (v) => v !== undefined && v !== '' && v !== '0' && v !== 'false';

function prebuildDir() {
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  let files;
  try {
    files = fs.readdirSync(dir);
  } catch {
    return null;
  }
  const addon = files.some((f) => f.endsWith('.node'));
  const agent = files.includes('libgvm.so');
  return addon && agent ? dir : null;
}

const fromSource = truthy(process.env.npm_config_build_from_source) || truthy(process.env.GVM_BUILD_FROM_SOURCE);
const prebuilt = fromSource ? null : prebuildDir();
if (prebuilt !== null) {
  console.log(`gvm: using the prebuilt addon and agent in ${path.relative(root, prebuilt) || prebuilt}`);
  process.exit(0);
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const jobs = Number(process.env.GVM_BUILD_JOBS) || os.availableParallelism?.() || os.cpus().length || 1;
const args = [cmakeJs, 'rebuild', '--parallel', String(jobs)];
if (process.env.GVM_BUILD_AGENT !== undefined && !truthy(process.env.GVM_BUILD_AGENT)) args.push('--CDGVM_BUILD_AGENT=OFF');
console.log(`gvm: building from source: node ${args.map((a) => path.relative(root, a).startsWith('node_modules') ? path.relative(root, a) : a).join(' ')}`);
const result = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (result.error) {
  console.error(`gvm: cannot run cmake-js: ${result.error.message}`);
  process.exit(1);
}
if (result.status !== 0) {
  console.error(
    'gvm: the native build failed. It needs cmake (>= 3.18), a C/C++ compiler, make and the CUDA toolkit headers\n' +
      '(cuda.h under $CUDA_PATH/include or /usr/local/cuda/include). On Debian: apt-get install cmake g++ make.',
  );
  process.exit(result.status ?? 1);
}
