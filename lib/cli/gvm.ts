#!/usr/bin/env node
/**
 * gvm: the command-line controller. See docs/cli.md. One module per command family in this folder.
 *   exit 0: done; 1: a GvmError (printed as "gvm: <message> (<code>)"); 2: bad arguments (usage).
 */
import { isGvmError } from '../errors';
import { isSortKey, runTop, SortKey } from '../top/top';
import { isHelp, out, USAGE, UsageError, version } from './common';
import { cmdDebug } from './debug';
import { cmdDoctor } from './doctor';
import { cmdGet } from './get';
import { cmdPs } from './ps';
import { cmdRun } from './run';
import { cmdFreeze, cmdSet } from './set';

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case undefined:
        throw new UsageError('missing a command', undefined);
      case '-h':
      case '--help':
        out(USAGE.main!);
        return 0;
      case '-V':
      case '--version':
        out(version());
        return 0;
      case 'help': {
        const topic = rest[0];
        if (topic === undefined) out(USAGE.main!);
        else if (USAGE[topic] !== undefined && topic !== 'main') out(USAGE[topic]!);
        else throw new UsageError(`no help for '${topic}'`, undefined);
        return 0;
      }
      case 'run':
        return await cmdRun(rest);
      case 'ps':
        return await cmdPs(rest);
      case 'get':
        return await cmdGet(rest);
      case 'set':
        return await cmdSet(rest);
      case 'freeze':
        return await cmdFreeze(rest, true);
      case 'thaw':
        return await cmdFreeze(rest, false);
      case 'debug':
        return await cmdDebug(rest);
      case 'doctor':
        return await cmdDoctor(rest);
      case 'daemon':
        // loaded only here: gvmd pulls in prom-client and the FUSE module, which no other command needs
        return await (require('../daemon/gvmd') as typeof import('../daemon/gvmd.js')).main(rest);
      case 'top': {
        let once = false;
        let sort: SortKey = 'memory';
        for (let i = 0; i < rest.length; i++) {
          const a = rest[i]!;
          if (a === '--once') once = true;
          else if (a === '--sort') {
            const v = rest[++i];
            if (!isSortKey(v)) throw new UsageError(`--sort must be memory, rate, pid or priority, not '${v}'`, 'top');
            sort = v;
          } else if (isHelp(a)) {
            out(USAGE.top!);
            return 0;
          } else throw new UsageError(`unexpected argument '${a}'`, 'top');
        }
        return await runTop({ once, sort });
      }
      default:
        throw new UsageError(`unknown command '${command}'`, undefined);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`gvm: ${e.message}\n\n${USAGE[e.command ?? 'main']}`);
      return 2;
    }
    if (isGvmError(e)) {
      process.stderr.write(`gvm: ${e.message} (${e.code})\n`);
      return 1;
    }
    process.stderr.write(`gvm: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (status) => {
      process.exitCode = status;
    },
    (e: unknown) => {
      process.stderr.write(`gvm: ${String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
