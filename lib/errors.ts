/**
 * The one error class of gvm. Every failure the library reports is a GvmError with a stable string
 * `code`; the native addon throws this same class (handed to it at start-up by native.ts).
 */

export const GVM_ERROR_CODES = [
  'EGVM_NOT_FOUND', // no such process, block, GPU or file
  'EGVM_PERMISSION', // the block belongs to another user (or was opened read-only)
  'EGVM_INVALID', // a bad argument, or a value the agent refused
  'EGVM_VERSION', // not a control block, or one of another major version
  'EGVM_TIMEOUT', // the agent did not answer in time
  'EGVM_UNSUPPORTED', // the agent or driver cannot do this
  'EGVM_AGENT', // the agent reported a failure (status and agentMessage say which)
  'EGVM_CLOSED', // the handle was closed
  'EGVM_IO', // any other system error
] as const;

export type GvmErrorCode = (typeof GVM_ERROR_CODES)[number];

/** Agent status codes (enum gvm_status in include/gvm/control_block.h). */
export const GvmStatus = {
  OK: 0,
  INVALID: 1,
  UNSUPPORTED: 2,
  NO_GPU: 3,
  DRIVER: 4,
  BUSY: 5,
  TIMEOUT: 6,
} as const;

export type GvmStatusName = keyof typeof GvmStatus;

export interface GvmErrorOptions {
  /** The agent's status code, for errors that come from an agent's answer. */
  status?: number;
  /** The agent's own message, when it sent one. */
  agentMessage?: string;
  cause?: unknown;
}

export class GvmError extends Error {
  readonly code: GvmErrorCode;
  readonly status?: number;
  readonly agentMessage?: string;

  constructor(message: string, code: GvmErrorCode, options: GvmErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = GVM_ERROR_CODES.includes(code) ? code : 'EGVM_IO';
    if (options.status !== undefined) this.status = options.status;
    if (options.agentMessage !== undefined) this.agentMessage = options.agentMessage;
  }

  override get name(): string {
    return 'GvmError';
  }
}

export function isGvmError(e: unknown, code?: GvmErrorCode): e is GvmError {
  return e instanceof GvmError && (code === undefined || e.code === code);
}

export function statusName(status: number): string {
  for (const [name, value] of Object.entries(GvmStatus)) if (value === status) return name;
  return `status ${status}`;
}

/** The error code an agent status maps to (undefined for OK). */
export function codeForStatus(status: number): GvmErrorCode | undefined {
  switch (status) {
    case GvmStatus.OK:
      return undefined;
    case GvmStatus.INVALID:
      return 'EGVM_INVALID';
    case GvmStatus.UNSUPPORTED:
      return 'EGVM_UNSUPPORTED';
    case GvmStatus.NO_GPU:
      return 'EGVM_NOT_FOUND';
    case GvmStatus.TIMEOUT:
      return 'EGVM_TIMEOUT';
    case GvmStatus.DRIVER:
    case GvmStatus.BUSY:
    default:
      return 'EGVM_AGENT';
  }
}

/** Node's system errors (fs) turned into GvmError, so callers see one error type. */
export function fromSystemError(e: unknown, what: string): GvmError {
  const err = e as NodeJS.ErrnoException;
  const text = `${what}: ${err?.message ?? String(e)}`;
  switch (err?.code) {
    case 'ENOENT':
      return new GvmError(text, 'EGVM_NOT_FOUND', { cause: e });
    case 'EACCES':
    case 'EPERM':
      return new GvmError(text, 'EGVM_PERMISSION', { cause: e });
    default:
      return new GvmError(text, 'EGVM_IO', { cause: e });
  }
}
