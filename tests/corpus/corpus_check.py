#!/usr/bin/env python3
"""tests/corpus/corpus_check.py — `inlet parse` over every message of the shared corpus (issue 3, Tests).

For each file, `inlet parse FILE --recipient bob@Example.COM --sender alice@example.org --id corpus-test`
runs twice (two files at a time, a per-file timeout of 20 s, 80 s under sanitizers) and must:
  * exit 0 (no crash, no sanitizer report, no hang), within 512 MiB of address space (ulimit -v;
    INLET_CORPUS_MAX_VM_MB to change, 0 for none; not under sanitizers);
  * print one JSON object, valid UTF-8 (no lone surrogates either, not even as \\u escapes), no
    duplicate keys, with every SPEC §5 field present and of the right type (see check_shape);
  * print the same bytes both times.
Every file listed in the corpus's MANIFEST.tsv must also still have the sha256 given there.
Environment: INLET_BIN (the binary), INLET_CORPUS / INLET_CORPUS_DEFAULT (see corpuslib.py),
INLET_SANITIZED=1 (longer timeouts), INLET_CORPUS_JOBS (parallel files, default 2).
Exit 0 = pass, 1 = failures (each printed with its command and output), 77 = corpus absent.
"""
import base64
import binascii
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import time

import corpuslib

STRING_FIELDS = ["recipient", "sender", "from", "subject", "message-id", "domain", "body-plain", "body-html",
                 "stripped-text", "stripped-signature", "stripped-html", "id"]
FIELDS = STRING_FIELDS + ["message-headers", "attachments", "content-id-map", "parse-warnings"]
RECIPIENT, SENDER, MSGID = "bob@Example.COM", "alice@example.org", "corpus-test"


def command(inlet, path):
    return [inlet, "parse", path, "--recipient", RECIPIENT, "--sender", SENDER, "--id", MSGID]


def vm_limit_mb():
    """Address-space limit for each run (bounded memory: the largest corpus message, 3 MB, needs
    about 20 MB).  Off under sanitizers, whose shadow memory needs terabytes of address space."""
    if os.environ.get("INLET_SANITIZED") == "1":
        return 0
    return int(os.environ.get("INLET_CORPUS_MAX_VM_MB", "512"))


def limited(cmd):
    mb = vm_limit_mb()
    if mb <= 0:
        return cmd
    return ["/bin/sh", "-c", f'ulimit -v {mb * 1024} && exec "$@"', "sh"] + cmd


def no_dup_keys(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def check_utf8_strings(v, where="$"):
    """Every string (keys too) must encode as strict UTF-8: catches lone surrogates from \\ud800 escapes."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{where}: string is not valid Unicode ({e})")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            check_utf8_strings(x, f"{where}[{i}]")
    elif isinstance(v, dict):
        for k, x in v.items():
            check_utf8_strings(k, f"{where}.<key>")
            check_utf8_strings(x, f"{where}.{k}")


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_shape(doc):
    """Returns a list of problems with the SPEC §5 shape (empty when fine)."""
    errs = []
    if not isinstance(doc, dict):
        return [f"top level is {type(doc).__name__}, not an object"]
    for f in FIELDS:
        if f not in doc:
            errs.append(f"field {f!r} missing")
    for f in STRING_FIELDS:
        if f in doc and not isinstance(doc[f], str):
            errs.append(f"{f!r} is {type(doc[f]).__name__}, not a string")
    for f in ("timestamp", "token", "signature"):
        if f in doc:
            errs.append(f"{f!r} present (inlet parse prints no signature fields)")
    if doc.get("recipient") not in (None, RECIPIENT):
        errs.append(f"recipient {doc.get('recipient')!r} != {RECIPIENT!r}")
    if doc.get("sender") not in (None, SENDER):
        errs.append(f"sender {doc.get('sender')!r} != {SENDER!r}")
    if doc.get("id") not in (None, MSGID):
        errs.append(f"id {doc.get('id')!r} != {MSGID!r}")
    if doc.get("domain") not in (None, "example.com"):
        errs.append(f"domain {doc.get('domain')!r} != 'example.com' (recipient's domain, lower case)")

    hs = doc.get("message-headers", [])
    if not isinstance(hs, list):
        errs.append("'message-headers' is not an array")
    else:
        for i, h in enumerate(hs):
            if not (isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)):
                errs.append(f"message-headers[{i}] is not [string, string]: {h!r:.200}")
                break

    atts = doc.get("attachments", [])
    if not isinstance(atts, list):
        errs.append("'attachments' is not an array")
        atts = []
    for i, a in enumerate(atts):
        if not isinstance(a, dict):
            errs.append(f"attachments[{i}] is not an object")
            continue
        for k in ("name", "content-type", "content-id"):
            if not isinstance(a.get(k), str):
                errs.append(f"attachments[{i}].{k} missing or not a string")
        if not is_int(a.get("size")) or a["size"] < 0:
            errs.append(f"attachments[{i}].size missing or not a non-negative integer")
        if "content" not in a and "url" not in a:
            errs.append(f"attachments[{i}] has neither 'content' nor 'url'")
        c = a.get("content")
        if c is not None:
            if not isinstance(c, str):
                errs.append(f"attachments[{i}].content is neither a base64 string nor null")
            else:
                try:
                    raw = base64.b64decode(c, validate=True)
                    if is_int(a.get("size")) and len(raw) != a["size"]:
                        errs.append(f"attachments[{i}]: content decodes to {len(raw)} bytes, size says {a['size']}")
                except (binascii.Error, ValueError) as e:
                    errs.append(f"attachments[{i}].content is not valid base64 ({e})")

    cmap = doc.get("content-id-map", {})
    if not isinstance(cmap, dict):
        errs.append("'content-id-map' is not an object")
    else:
        for cid, e in cmap.items():
            if not isinstance(e, dict):
                errs.append(f"content-id-map[{cid!r}] is not an object")
                continue
            for k in ("name", "content-type"):
                if not isinstance(e.get(k), str):
                    errs.append(f"content-id-map[{cid!r}].{k} missing or not a string")
            if not is_int(e.get("size")):
                errs.append(f"content-id-map[{cid!r}].size missing or not an integer")
            idx = e.get("index")
            if not is_int(idx) or not 0 <= idx < len(atts):
                errs.append(f"content-id-map[{cid!r}].index {idx!r} is not a position in attachments")
            elif isinstance(atts[idx], dict) and atts[idx].get("content-id") != cid:
                errs.append(f"content-id-map[{cid!r}].index {idx} points at an attachment whose content-id "
                            f"is {atts[idx].get('content-id')!r}")

    pw = doc.get("parse-warnings", [])
    if not (isinstance(pw, list) and all(isinstance(x, str) for x in pw)):
        errs.append("'parse-warnings' is not an array of strings")
    return errs


def run_once(cmd, timeout):
    t0 = time.monotonic()
    try:
        p = subprocess.run(limited(cmd), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or b"", e.stderr or b"", time.monotonic() - t0
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t0


def describe_rc(rc):
    if rc is None:
        return "timed out"
    if rc < 0:
        return f"killed by signal {-rc}"
    return f"exit status {rc}"


def check_file(inlet, path, timeout):
    """Returns (path, seconds, list of problems, stderr tail)."""
    cmd = command(inlet, path)
    rc, out, err, secs = run_once(cmd, timeout)
    probs = []
    if rc != 0:
        probs.append(f"{describe_rc(rc)} (timeout {timeout:.0f} s)" if rc is None else describe_rc(rc)
                     + (f" (address space limited to {vm_limit_mb()} MiB)" if vm_limit_mb() else ""))
        return path, secs, probs, err
    try:
        text = out.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        return path, secs, [f"stdout is not valid UTF-8: {e}"], err
    try:
        doc = json.loads(text, object_pairs_hook=no_dup_keys)
    except ValueError as e:
        return path, secs, [f"stdout is not one JSON value: {e}"], err
    try:
        check_utf8_strings(doc)
    except ValueError as e:
        probs.append(str(e))
    probs += check_shape(doc)
    rc2, out2, err2, secs2 = run_once(cmd, timeout)
    secs += secs2
    if rc2 != 0:
        probs.append(f"second run: {describe_rc(rc2)}")
        err = err2
    elif out2 != out:
        i = next((k for k in range(min(len(out), len(out2))) if out[k] != out2[k]), min(len(out), len(out2)))
        probs.append(f"second run printed different bytes (first difference at byte {i}: "
                     f"{out[max(0, i - 40):i + 40]!r} vs {out2[max(0, i - 40):i + 40]!r})")
    return path, secs, probs, err


def manifest_mismatches(files):
    """Files whose bytes differ from MANIFEST.tsv's sha256 (a corpus rewritten by git or an editor, e.g.
    CRLF conversion, would no longer test what it says).  Files without a manifest row are not checked."""
    manifest = os.path.join(os.path.dirname(os.path.dirname(files[0])), "MANIFEST.tsv")
    if not os.path.isfile(manifest):
        return []
    want = {}
    with open(manifest, encoding="utf-8") as f:
        for row in f.read().splitlines()[1:]:
            cols = row.split("\t")
            if len(cols) >= 7:
                want[cols[0]] = cols[6]
    bad = []
    for path in files:
        name = os.path.basename(path)
        if name in want:
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != want[name]:
                    bad.append(name)
    return bad


def main():
    files = corpuslib.corpus_files("corpus-parse")
    inlet = corpuslib.inlet_bin()
    if not os.access(inlet, os.X_OK):
        print(f"corpus-parse: {inlet} is not an executable (set INLET_BIN)")
        return 1
    timeout = corpuslib.timeout_s(20.0)
    jobs = int(os.environ.get("INLET_CORPUS_JOBS", "2"))
    t0 = time.monotonic()
    failed, slowest = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        for path, secs, probs, err in ex.map(lambda f: check_file(inlet, f, timeout), files):
            slowest.append((secs, os.path.basename(path)))
            if probs:
                failed.append(path)
                print(f"FAIL {os.path.basename(path)}")
                print(f"  command: {' '.join(command(inlet, path))}")
                for p in probs[:20]:
                    print(f"  - {p}")
                tail = err.decode("utf-8", "replace").strip().splitlines()[-15:]
                for line in tail:
                    print(f"  stderr: {line}")
    for name in manifest_mismatches(files):
        failed.append(name)
        print(f"FAIL {name}: sha256 differs from MANIFEST.tsv (the file was modified)")
    wall = time.monotonic() - t0
    slowest.sort(reverse=True)
    print(f"corpus-parse: {len(files) - len(failed)}/{len(files)} files ok, {len(failed)} failed, "
          f"{wall:.1f} s wall ({jobs} jobs, timeout {timeout:.0f} s per run"
          + (f", address space {vm_limit_mb()} MiB" if vm_limit_mb() else "") + "); slowest: "
          + ", ".join(f"{n} {s:.2f} s" for s, n in slowest[:3]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
