/** gvm doctor: what gvm can do on this machine, and what to do about what it cannot. */
import { diagnose } from '../doctor';
import { isHelp, out, USAGE, UsageError } from './common';

export async function cmdDoctor(args: string[]): Promise<number> {
  let json = false;
  for (const arg of args) {
    if (arg === '--json') json = true;
    else if (isHelp(arg)) {
      out(USAGE.doctor!);
      return 0;
    } else throw new UsageError(`unexpected argument '${arg}'`, 'doctor');
  }
  const checks = await diagnose();
  if (json) {
    out(`${JSON.stringify(checks, null, 2)}\n`);
  } else {
    const width = Math.max(...checks.map((c) => c.name.length));
    const lines = checks.map((c) => {
      const head = `${c.status.padEnd(5)} ${c.name.padEnd(width)}  ${c.detail}`;
      return c.fix !== undefined && c.status !== 'ok' ? `${head}\n${' '.repeat(width + 8)}fix: ${c.fix}` : head;
    });
    out(`${lines.join('\n')}\n`);
  }
  return checks.some((c) => c.status === 'fail') ? 1 : 0;
}
