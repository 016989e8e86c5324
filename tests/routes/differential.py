#!/usr/bin/env python3
"""tests/routes/differential.py — the regex layer of routes/ against Python's re.match.

    differential.py REGEX_DRIVER CASES.tsv EXPECTED_DIFFS.tsv

Runs REGEX_DRIVER over CASES.tsv (format: see regex_driver.c) and evaluates every case with
Python's re.compile(pattern).match(subject) here, then compares the two answers line by line:
ERR / NOMATCH / MATCH with the byte spans of the match and of every group, and the named groups
with their numbers.

Subjects are bytes.  Python gets them decoded as UTF-8 with errors='surrogateescape', so an
invalid byte becomes one lone surrogate U+DC80..U+DCFF; spans are converted back to byte
offsets by encoding the prefix the same way.  PCRE2 (PCRE2_MATCH_INVALID_UTF) never lets any
pattern item match an invalid byte, while Python's surrogate matches '.', \\W, \\S, [^...]: a
case where the match has to consume such a byte differs, and is listed as expected.

A match- or depth-limit answer from PCRE2 (LIMIT) is compared as NOMATCH: inlet treats it so.

EXPECTED_DIFFS.tsv: "PATTERN<TAB>SUBJECT<TAB>REASON" (the first two fields exactly as in
CASES.tsv).  A listed case must differ (a listed case that now agrees fails too, so that the
list stays true); any other difference fails.
"""
import re
import subprocess
import sys
import warnings


def decode_subject(s):
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == '\\' and i + 1 < len(s):
            n = s[i + 1]
            if n == 't':
                out += b'\t'; i += 2; continue
            if n == 'n':
                out += b'\n'; i += 2; continue
            if n == 'r':
                out += b'\r'; i += 2; continue
            if n == '\\':
                out += b'\\'; i += 2; continue
            if n == 'x' and re.fullmatch(r'[0-9A-Fa-f]{2}', s[i + 2:i + 4]):
                out.append(int(s[i + 2:i + 4], 16)); i += 4; continue
        out += c.encode('utf-8')
        i += 1
    return bytes(out)


def python_answer(pattern, subject_bytes):
    subject = subject_bytes.decode('utf-8', 'surrogateescape')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            rx = re.compile(pattern)
        except (re.error, OverflowError, RecursionError):
            return 'ERR'
    m = rx.match(subject)
    if not m:
        return 'NOMATCH'

    def boff(i):
        return len(subject[:i].encode('utf-8', 'surrogateescape'))

    fields = ['MATCH', '%d,%d' % (boff(m.start()), boff(m.end()))]
    for g in range(1, rx.groups + 1):
        s, e = m.span(g)
        fields.append('-' if s < 0 else '%d,%d' % (boff(s), boff(e)))
    names = sorted(rx.groupindex.items(), key=lambda kv: kv[1])
    fields.append('names:' + ','.join('%s=%d' % kv for kv in names))
    return '\t'.join(fields)


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    driver, cases_path, expected_path = sys.argv[1:]
    out = subprocess.run([driver, cases_path], capture_output=True, check=True).stdout.decode('utf-8', 'replace')
    c_answers = {}
    for line in out.splitlines():
        num, _, rest = line.partition('\t')
        c_answers[int(num)] = 'NOMATCH' if rest == 'LIMIT' else rest

    expected = {}
    with open(expected_path, encoding='utf-8') as f:
        for line in f:
            line = line.rstrip('\n')
            if not line or line.startswith('#'):
                continue
            parts = line.split('\t')
            if len(parts) != 3:
                print('bad line in %s: %r' % (expected_path, line))
                return 2
            expected[(parts[0], parts[1])] = parts[2]

    failures = 0
    cases = 0
    seen_expected = set()
    with open(cases_path, encoding='utf-8') as f:
        for num, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line or line.startswith('#'):
                continue
            cases += 1
            pattern, _, subject = line.partition('\t')
            py = python_answer(pattern, decode_subject(subject))
            c = c_answers.get(num, '(missing)')
            key = (pattern, subject)
            if key in expected:
                seen_expected.add(key)
                if py == c:
                    print('STALE line %d: listed as a difference but both say %s: %r %r' % (num, c, pattern, subject))
                    failures += 1
                else:
                    print('expected difference line %d (%s): %r %r\n    python: %s\n    inlet:  %s'
                          % (num, expected[key], pattern, subject, py, c))
            elif py != c:
                print('DIFF line %d: %r %r\n    python: %s\n    inlet:  %s' % (num, pattern, subject, py, c))
                failures += 1
    for key in expected:
        if key not in seen_expected:
            print('STALE: expected difference not among the cases: %r' % (key,))
            failures += 1
    print('%d cases, %d expected differences, %d failures' % (cases, len(expected), failures))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
