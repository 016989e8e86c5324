#!/usr/bin/env python3
"""tests/fuzz/run_corpus.py PROGRAM — runs a plain (non-libFuzzer) fuzz program over every corpus message.

The files are split into INLET_CORPUS_JOBS (default 2) slices, one process per slice, with a timeout of
20 s per file (80 s under INLET_SANITIZED=1) summed over the slice.  The corpus folder and the
skip rule (exit 77 when absent, failure when CI is set) are those of tests/corpus/corpuslib.py.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus"))
import corpuslib  # noqa: E402


def culprit(prog, files):
    """Reruns the slice printing "FILE: ok" per file: the first file not reported is the one that failed."""
    try:
        p = subprocess.run([prog] + files, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           timeout=corpuslib.timeout_s(20.0) * len(files))
        ok = {line[:-4] for line in p.stdout.decode("utf-8", "replace").splitlines() if line.endswith(": ok")}
    except subprocess.TimeoutExpired as e:
        ok = {line[:-4] for line in (e.stdout or b"").decode("utf-8", "replace").splitlines()
              if line.endswith(": ok")}
    bad = next((f for f in files if f not in ok), None)
    return f"{bad}  (reproduce: {prog} {bad})" if bad else "(not found on a second run)"


def main():
    prog = sys.argv[1]
    files = corpuslib.corpus_files("fuzz-message-corpus")
    jobs = max(1, int(os.environ.get("INLET_CORPUS_JOBS", "2")))
    # Largest files first, dealt round-robin, so that the slices take about the same time.
    by_size = sorted(files, key=lambda f: -os.path.getsize(f))
    slices = [by_size[i::jobs] for i in range(jobs)]
    t0 = time.monotonic()
    procs = [(s, subprocess.Popen([prog, "-q"] + s, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
             for s in slices if s]
    rc = 0
    for s, p in procs:
        try:
            out, _ = p.communicate(timeout=corpuslib.timeout_s(20.0) * len(s))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            print(f"TIMEOUT: {prog} over {len(s)} files")
            rc = 1
        text = out.decode("utf-8", "replace")
        if p.returncode != 0:
            rc = 1
            # The program prints "fuzz-message: FILE: what" before it aborts on a broken contract, but
            # a sanitizer report or a signal names no file: culprit() finds it.
            print(f"FAIL: {prog} -q <{len(s)} files> exited with {p.returncode}")
            print("\n".join(text.splitlines()[-60:]))
            print(f"FAIL: crashing input: {culprit(prog, s)}")
        else:
            print(text.strip())
    print(f"fuzz-message-corpus: {len(files)} files, {time.monotonic() - t0:.1f} s, "
          + ("ok" if rc == 0 else "FAILED"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
