/**
 * JSON for files people edit: the same values as JSON.parse, but a syntax error says where (line and
 * column) and what was expected, and an object that names a key twice is an error (JSON.parse keeps
 * the last one silently, so `"priority": 2, ..., "priority": 12` would hide a mistake).
 */

export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly line: number,
    readonly column: number,
  ) {
    super(`${message} (line ${line}, column ${column})`);
  }
}

/** A key given twice; `path` leads to the object that holds it. */
export class JsonDuplicateKeyError extends Error {
  constructor(
    readonly path: ReadonlyArray<string | number>,
    readonly key: string,
    readonly line: number,
    readonly column: number,
  ) {
    super(`has the key ${JSON.stringify(key)} twice (line ${line}, column ${column})`);
  }
}

const NUMBER_RE = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const STRING_RE = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
const SPACE_RE = /[ \t\n\r]*/y;
const MAX_DEPTH = 64;

export function parseJsonStrict(text: string): unknown {
  let pos = 0;
  const where = (at: number): [number, number] => {
    const before = text.slice(0, at);
    const line = before.split('\n').length;
    return [line, at - before.lastIndexOf('\n')];
  };
  const fail = (what: string, at = pos): never => {
    const found = at >= text.length ? 'the end of the file' : JSON.stringify(text[at]);
    throw new JsonSyntaxError(`expected ${what}, found ${found}`, ...where(at));
  };
  const space = (): void => {
    SPACE_RE.lastIndex = pos;
    SPACE_RE.exec(text);
    pos = SPACE_RE.lastIndex;
  };
  const token = (re: RegExp): string | undefined => {
    re.lastIndex = pos;
    const m = re.exec(text);
    if (m === null) return undefined;
    pos = re.lastIndex;
    return m[0];
  };
  const string = (): string => {
    const s = token(STRING_RE);
    if (s === undefined) return fail(text[pos] === '"' ? 'a string with valid escapes and no control characters' : 'a string');
    return JSON.parse(s) as string;
  };
  const value = (path: Array<string | number>): unknown => {
    space();
    const c = text[pos];
    if ((c === '{' || c === '[') && path.length >= MAX_DEPTH) fail(`at most ${MAX_DEPTH} levels of nesting`);
    if (c === '{') {
      pos++;
      const out: Record<string, unknown> = {};
      space();
      if (text[pos] === '}') {
        pos++;
        return out;
      }
      for (;;) {
        space();
        const at = pos;
        if (text[pos] !== '"') fail('a key in double quotes');
        const key = string();
        if (Object.prototype.hasOwnProperty.call(out, key)) throw new JsonDuplicateKeyError(path, key, ...where(at));
        space();
        if (text[pos] !== ':') fail("':' after the key");
        pos++;
        // defineProperty: a key "__proto__" is data, as JSON.parse makes it
        Object.defineProperty(out, key, { value: value([...path, key]), enumerable: true, writable: true, configurable: true });
        space();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === '}') {
          pos++;
          return out;
        }
        fail("',' or '}'");
      }
    }
    if (c === '[') {
      pos++;
      const out: unknown[] = [];
      space();
      if (text[pos] === ']') {
        pos++;
        return out;
      }
      for (;;) {
        out.push(value([...path, out.length]));
        space();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === ']') {
          pos++;
          return out;
        }
        fail("',' or ']'");
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (text.startsWith(word, pos)) {
        pos += word.length;
        return v;
      }
    }
    const n = token(NUMBER_RE);
    if (n !== undefined) return Number(n);
    return fail('a value (an object, array, string, number, true, false or null)');
  };
  const out = value([]);
  space();
  if (pos < text.length) fail('the end of the file after the value');
  return out;
}
