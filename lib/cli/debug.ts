/** gvm debug rm: what the agent's RM observer saw of the process's own client, groups and channels. */
import { Gvm } from '../index';
import { isHelp, out, USAGE, UsageError } from './common';
import { parseTarget, selectGpu } from './get';

const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

export async function cmdDebug(args: string[]): Promise<number> {
  if (args.length === 0) throw new UsageError('missing a debug view (rm)', 'debug');
  if (isHelp(args[0]!)) {
    out(USAGE.debug!);
    return 0;
  }
  if (args[0] !== 'rm') throw new UsageError(`unknown debug view '${args[0]}'`, 'debug');
  if (args.length !== 2) throw new UsageError('expected: debug rm PID[:GPU]', 'debug');
  const target = parseTarget(args[1], 'debug');
  using p = await Gvm.process(target.pid);
  const g = selectGpu(p, target.gpu);
  const rm = g.rm();
  const lines = [
    `process ${p.pid} GPU ${g.index} (ordinal ${g.ordinal}, ${g.pciBusId || 'no PCI bus id'}, ${g.name || 'unnamed'})`,
    `RM fd ${rm.fd}  client ${hex(rm.client)}  device ${hex(rm.device)}  subdevice ${hex(rm.subdevice)}`,
    `TSGs: ${rm.tsgs.length}`,
  ];
  if (rm.tsgs.length > 0) {
    lines.push('  HANDLE      ENGINE              CHANNELS  PARENT      TIMESLICE');
    for (const t of rm.tsgs) {
      const engine = t.engineType === 1 ? 'compute (GR)' : `copy (CE, type ${t.engineType})`;
      const slice = t.timesliceUs === 0 ? 'unknown' : `${t.timesliceUs} us`;
      lines.push(`  ${hex(t.handle)}  ${engine.padEnd(18)}  ${String(t.channelCount).padStart(8)}  ${hex(t.parent)}  ${slice}`);
    }
  }
  lines.push(`channels: ${rm.channels.length}`);
  if (rm.channels.length > 0) {
    lines.push('  HANDLE      TSG         CLASS');
    for (const c of rm.channels) lines.push(`  ${hex(c.handle)}  ${hex(c.tsg)}  0x${c.classId.toString(16)}`);
  }
  out(lines.join('\n'));
  return 0;
}
