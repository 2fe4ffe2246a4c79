/** Byte sizes: parsing what people type (binary units), and formatting for people. */
import { GvmError } from './errors';

const MAX_BYTES = (1n << 63n) - 1n;

const MULTIPLIERS: Record<string, bigint> = {
  '': 1n,
  b: 1n,
  k: 1n << 10n,
  kib: 1n << 10n,
  m: 1n << 20n,
  mib: 1n << 20n,
  g: 1n << 30n,
  gib: 1n << 30n,
  t: 1n << 40n,
  tib: 1n << 40n,
};

const SIZE_RE = /^(\d+)(?:\.(\d+))?\s?([a-z]*)$/i;

/**
 * Parses a byte size: plain bytes ("1048576", "512B"), or a number with a binary suffix
 * K/M/G/T or KiB/MiB/GiB/TiB (case-insensitive; 1K = 1024). A decimal point is allowed when the
 * result is a whole number of bytes ("1.5G"). Negative, fractional-byte, malformed values and
 * values above 2^63 - 1 throw GvmError EGVM_INVALID.
 */
export function parseBytes(input: string | number | bigint): bigint {
  if (typeof input === 'bigint') {
    if (input < 0n || input > MAX_BYTES) throw invalid(String(input), 'out of range 0 .. 2^63-1');
    return input;
  }
  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input) || input < 0) throw invalid(String(input), 'not a whole, non-negative number of bytes');
    return BigInt(input);
  }
  if (typeof input !== 'string') throw invalid(String(input), 'not a string');
  const text = input.trim();
  const m = SIZE_RE.exec(text);
  if (m === null) {
    if (/^\s*-/.test(input)) throw invalid(input, 'sizes cannot be negative');
    throw invalid(input, 'expected a number of bytes, optionally with K, M, G, T (or KiB, MiB, GiB, TiB)');
  }
  const [, whole, fraction = '', unitText] = m as unknown as [string, string, string | undefined, string];
  const multiplier = MULTIPLIERS[unitText.toLowerCase()];
  if (multiplier === undefined) throw invalid(input, `unknown unit '${unitText}' (use K, M, G, T, KiB, MiB, GiB or TiB)`);
  const scale = 10n ** BigInt(fraction.length);
  const scaled = (BigInt(whole) * scale + (fraction === '' ? 0n : BigInt(fraction))) * multiplier;
  if (scaled % scale !== 0n) throw invalid(input, 'not a whole number of bytes');
  const bytes = scaled / scale;
  if (bytes > MAX_BYTES) throw invalid(input, 'larger than 2^63-1 bytes');
  return bytes;
}

function invalid(input: string, why: string): GvmError {
  return new GvmError(`invalid size '${input}': ${why}`, 'EGVM_INVALID');
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/** "0 B", "512 B", "1.5 KiB", "8 GiB", "23.4 GiB": one decimal at most, none when it is 0. */
export function formatBytes(bytes: number | bigint): string {
  let value = typeof bytes === 'bigint' ? Number(bytes) : bytes;
  if (!Number.isFinite(value) || value < 0) return String(bytes);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${value} B`;
  let text = value.toFixed(1);
  if (text.endsWith('.0')) text = text.slice(0, -2);
  if (text === '1024' && unit < UNITS.length - 1) return `1 ${UNITS[unit + 1]}`;
  return `${text} ${UNITS[unit]}`;
}
