import t from 'tap';

import { GvmError } from '../lib/errors';
import { formatBytes, parseBytes } from '../lib/units';

t.test('plain bytes and binary suffixes', async (t) => {
  const cases: [string, bigint][] = [
    ['0', 0n],
    ['1', 1n],
    ['1048576', 1048576n],
    ['512B', 512n],
    ['512 b', 512n],
    ['1K', 1024n],
    ['1k', 1024n],
    ['1KiB', 1024n],
    ['1kib', 1024n],
    ['2M', 2n * 1024n * 1024n],
    ['2MiB', 2n * 1024n * 1024n],
    ['8G', 8n << 30n],
    ['8GiB', 8n << 30n],
    ['8 G', 8n << 30n],
    ['  8G  ', 8n << 30n],
    ['3T', 3n << 40n],
    ['3TiB', 3n << 40n],
    ['1.5G', 3n << 29n],
    ['1.5K', 1536n],
    ['0.5K', 512n],
    ['2.0', 2n],
    ['007', 7n],
    ['8388607T', 8388607n << 40n],
    ['9223372036854775807', 9223372036854775807n],
  ];
  for (const [input, bytes] of cases) t.equal(parseBytes(input), bytes, JSON.stringify(input));
  t.equal(parseBytes(4096), 4096n, 'a safe integer number');
  t.equal(parseBytes(5n), 5n, 'a bigint');
});

t.test('every bad input is EGVM_INVALID', async (t) => {
  const bad: (string | number | bigint)[] = [
    '',
    ' ',
    '-1',
    '-1G',
    '- 1',
    '+1',
    '1.5',
    '0.1K',
    '1.0000001K',
    '.5G',
    '5.G',
    'G',
    'abc',
    '1X',
    '1KB',
    '1MB',
    '1 GB',
    '1PiB',
    '1e9',
    '0x10',
    '1_000',
    '1,000',
    '1 2',
    '1G G',
    '1  G',
    'Infinity',
    'NaN',
    '9223372036854775808',
    '8388608T',
    '99999999999999999999999',
    -1,
    1.5,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    2 ** 60,
    -1n,
    1n << 63n,
  ];
  for (const input of bad) {
    t.throws(() => parseBytes(input as string), { code: 'EGVM_INVALID' }, `rejects ${typeof input === 'bigint' ? `${input}n` : JSON.stringify(input)}`);
  }
  const err = (() => {
    try {
      parseBytes('-5G');
    } catch (e) {
      return e;
    }
  })();
  t.type(err, GvmError);
  t.match((err as Error).message, /negative/);
  t.throws(() => parseBytes(undefined as unknown as string), { code: 'EGVM_INVALID' }, 'rejects undefined');
});

t.test('formatBytes', async (t) => {
  const cases: [number | bigint, string][] = [
    [0, '0 B'],
    [1, '1 B'],
    [1023, '1023 B'],
    [1024, '1 KiB'],
    [1536, '1.5 KiB'],
    [1048575, '1 MiB'],
    [8 * 2 ** 30, '8 GiB'],
    [23.4 * 2 ** 30, '23.4 GiB'],
    [80 * 2 ** 30, '80 GiB'],
    [2 ** 40, '1 TiB'],
    [2n ** 62n, '4 EiB'],
  ];
  for (const [n, text] of cases) t.equal(formatBytes(n), text, String(n));
  t.equal(formatBytes(-1), '-1', 'negative numbers are shown as they are');
});

t.test('round trip', async (t) => {
  for (const text of ['1K', '1.5M', '8G', '3T']) {
    t.equal(parseBytes(formatBytes(parseBytes(text)).replace(' ', '')), parseBytes(text), text);
  }
});
