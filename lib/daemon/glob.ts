/**
 * Shell-style globs for the policy file's match keys, compiled to anchored regular expressions.
 *
 *   *       any run of characters except '/'        **      any run of characters, '/' included
 *   ?       one character except '/'                [abc] [a-z] [!a-z] [^a-z]   one character of a set
 *   \x      the character x itself
 *
 * Matching is case-sensitive and covers the whole string. A pattern without '/' behaves as fnmatch(3)
 * does on a name; with '/' it behaves as fnmatch with FNM_PATHNAME, plus '**' to cross components.
 */

export interface Glob {
  readonly source: string;
  test(text: string): boolean;
}

/** Compiles `pattern`; throws an Error whose message says what is wrong (the caller adds where). */
export function compileGlob(pattern: string): Glob {
  if (pattern === '') throw new Error('an empty pattern');
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') {
      let stars = 1;
      while (pattern[i + 1] === '*') {
        stars++;
        i++;
      }
      re += stars >= 2 ? '.*' : '[^/]*';
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '\\') {
      const next = pattern[i + 1];
      if (next === undefined) throw new Error(`a trailing '\\' in '${pattern}'`);
      re += escapeRegExp(next);
      i++;
    } else if (c === '[') {
      const [cls, end] = charClass(pattern, i);
      re += cls;
      i = end;
    } else {
      re += escapeRegExp(c);
    }
  }
  const regexp = new RegExp(`^${re}$`, 's');
  return { source: pattern, test: (text) => regexp.test(text) };
}

/** The class starting at pattern[start] === '[': its regexp text and the index of its ']'. */
function charClass(pattern: string, start: number): [string, number] {
  let i = start + 1;
  let negate = false;
  if (pattern[i] === '!' || pattern[i] === '^') {
    negate = true;
    i++;
  }
  const items: string[] = [];
  let first = true;
  for (; i < pattern.length; i++) {
    let c = pattern[i]!;
    if (c === ']' && !first) {
      if (items.length === 0) throw new Error(`an empty set '[]' in '${pattern}'`);
      // a negated set never matches '/': like '*' and '?', a set stays inside one path component
      return [negate ? `[^/${items.join('')}]` : `(?!/)[${items.join('')}]`, i];
    }
    first = false;
    if (c === '\\') {
      const next = pattern[i + 1];
      if (next === undefined) break;
      c = next;
      i++;
    }
    if (pattern[i + 1] === '-' && pattern[i + 2] !== undefined && pattern[i + 2] !== ']') {
      let hi = pattern[i + 2]!;
      let skip = 2;
      if (hi === '\\') {
        const escaped = pattern[i + 3];
        if (escaped === undefined) break;
        hi = escaped;
        skip = 3;
      }
      if (hi.codePointAt(0)! < c.codePointAt(0)!) throw new Error(`a reversed range '${c}-${hi}' in '${pattern}'`);
      items.push(`${escapeClass(c)}-${escapeClass(hi)}`);
      i += skip;
    } else {
      items.push(escapeClass(c));
    }
  }
  throw new Error(`an unterminated '[' in '${pattern}'`);
}

function escapeRegExp(c: string): string {
  return /[.*+?^${}()|[\]\\/-]/.test(c) ? `\\${c}` : c;
}

function escapeClass(c: string): string {
  return /[\]\\^\-[]/.test(c) ? `\\${c}` : c;
}
