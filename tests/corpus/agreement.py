#!/usr/bin/env python3
"""tests/corpus/agreement.py — inlet's parse against Python's `email` package over the shared corpus.

For every corpus message, `inlet parse FILE` (JSON, SPEC §5) is compared with
`email.message_from_bytes(data, policy=email.policy.default)` on four fields:

from, subject
    Both values are compared with leading and trailing whitespace removed (inlet trims header
    values; Python keeps e.g. the space before a line end or after an encoded word).
from
    Python: `str(msg['from'])` ("" when there is no From header).  Python re-renders an address
    header from the addresses it parsed (quotes only where needed, comments dropped), inlet keeps the
    decoded text, so two values agree when they are equal, or when Python's rendering of inlet's
    value (`policy.header_factory('from', inlet_value)`) equals Python's value: the same mailboxes
    with the same display names, written differently.  Both counts are printed.
subject
    Python: `str(msg['subject'])` ("" when absent).  Otherwise compared exactly (both sides unfold).
body-plain
    Compared only when Python finds a text/plain body: `msg.get_body(('plain',))` is not None.
    Python: that part's `get_content()`.  Both sides are normalised: CRLF and lone CR become LF,
    trailing whitespace is removed from every line, trailing empty lines are removed.
    (inlet joins every text/plain body part with a blank line, SPEC §3; get_body returns only the
    first one, so a message with several is an expected disagreement, listed with a reason that
    starts "by design: joins"; for those the test checks that inlet's value is indeed the
    text/plain body parts of Python's tree, as defined for attachments below, joined by a blank
    line, both sides normalised as above and with runs of empty lines collapsed to one.)
attachments
    The list of attachment names, in order ("" for a part without a name).  inlet: `name` of each
    entry of `attachments`.  Python: the leaves of Python's MIME tree that are not bodies, in tree
    order, each as `part.get_filename() or ""`, where the tree and "body" are defined to match
    SPEC §3 ("every leaf part that is not a body, including inline images and forwarded
    message/rfc822 parts"):
      * a part whose content type is message/* (rfc822, delivery-status, partial, ...) is one leaf;
        it is not descended into;
      * a multipart part whose payload Python parsed into subparts (`is_multipart()`) is a node;
        a multipart/* part Python could not split (no boundary, no delimiter found) is neither a
        node nor an attachment: SPEC §3 reads what is not valid MIME as body text;
        any other part is a leaf;
      * the root is a body candidate; the children of a candidate multipart/related are not,
        except its root part (the `start` parameter's Content-ID, else the first child), which is;
        the children of any other candidate multipart (mixed, alternative, signed, report, digest,
        nested ones too) are candidates;
      * a leaf is a body when it is a candidate, its type is text/plain or text/html (Python's
        defaulting: no Content-Type means text/plain, an invalid one means text/plain too),
        `part.is_attachment()` is false (no `Content-Disposition: attachment`) and it has no file
        name (`part.get_filename()` is None: neither a `filename` nor a `name` parameter): a
        named text part is a file, even inline.
    This is `iter_attachments()` applied recursively, except that every unnamed inline text/plain
    and text/html part of a mixed-type multipart is a body (SPEC §3 joins them), not just the first
    of each type, and a named one is not.  A forwarded message without a filename has no name in Python; inlet names it
    after its Subject (SPEC §3 leaves the name open), so Python's entry for a message/rfc822,
    message/news or message/global leaf without a filename is the inner message's
    `str(inner['subject']).strip() + ".eml"`, or "message.eml" when that subject is empty.

A Python exception while reading a field gives the value "<python error: ...>", which then disagrees.

Expected disagreements are listed in python-disagreements.tsv (`file<TAB>field<TAB>reason`, `#`
comments).  The test fails on any disagreement that is not listed, and on any listed entry that
no longer disagrees (so the list stays true); entries for files absent from the corpus are ignored.

Usage: agreement.py [--list FILE] [--show] [--only NAME,...] [--template]
  --show      print both values of every disagreement (listed ones too)
  --template  print unlisted disagreements as TSV rows with an empty reason, to paste and explain
Environment: INLET_BIN, INLET_CORPUS / INLET_CORPUS_DEFAULT (see corpuslib.py), INLET_CORPUS_JOBS
(default 2).  Registered in the plain build only (tests/corpus/meson.build): the values do not depend on the build.
Exit 0 = agreement as listed, 1 = not, 77 = corpus absent.
"""
import argparse
import concurrent.futures
import email
import email.policy
import json
import os
import re
import subprocess
import sys
import time

import corpuslib

FIELDS = ["from", "subject", "body-plain", "attachments"]
# A listed body-plain reason that starts with this is checked: inlet's body-plain must equal the
# text/plain body parts of Python's tree (the attachment rule below) joined by a blank line.
JOINS = "by design: joins"
POLICY = email.policy.default


# ---- Python's side ----------------------------------------------------------------------------

def _err(e):
    return f"<python error: {type(e).__name__}: {e}>"


def py_header(msg, name):
    try:
        h = msg[name]
        return "" if h is None else str(h)
    except Exception as e:  # noqa: BLE001 — Python's header parser has its own bugs; they are data here
        return _err(e)


def py_body(msg):
    """None when Python finds no text/plain body; else its decoded text."""
    try:
        part = msg.get_body(("plain",))
    except Exception as e:  # noqa: BLE001
        return _err(e)
    if part is None:
        return None
    try:
        return part.get_content()
    except Exception as e:  # noqa: BLE001
        return _err(e)


def _ctype(part):
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001
        return "text/plain"


def py_tree(msg):
    """(attachment names, text/plain body parts) by the rule of the docstring."""
    out, plain = [], []

    def leaf(part, candidate):
        ct = _ctype(part)
        if ct.startswith("multipart/"):
            return  # not split by Python: body text (see the docstring)
        try:
            is_att = part.is_attachment()
        except Exception:  # noqa: BLE001
            is_att = False
        try:
            named = part.get_filename() is not None
        except Exception:  # noqa: BLE001
            named = False
        if candidate and ct in ("text/plain", "text/html") and not is_att and not named:
            if ct == "text/plain":
                plain.append(part)
            return
        try:
            name = part.get_filename() or ""
            if not name and ct in ("message/rfc822", "message/news", "message/global"):
                inner = part.get_payload(0) if part.is_multipart() else None
                subject = py_header(inner, "subject").strip() if inner is not None else ""
                name = subject + ".eml" if subject else "message.eml"
            out.append(name)
        except Exception as e:  # noqa: BLE001
            out.append(_err(e))

    def walk(part, candidate):
        ct = _ctype(part)
        if ct.startswith("message/") or not part.is_multipart():
            leaf(part, candidate)
            return
        children = part.get_payload()
        if ct == "multipart/related":
            root = None
            start = part.get_param("start")
            if start:
                root = next((c for c in children if c.get("content-id") == start), None)
            if root is None and children:
                root = children[0]
            for c in children:
                walk(c, candidate and c is root)
        else:
            for c in children:
                walk(c, candidate)

    try:
        walk(msg, True)
    except Exception as e:  # noqa: BLE001
        out.append(_err(e))
    return out, plain


def collapse_blank_lines(s):
    return re.sub(r"\n{3,}", "\n\n", s)


def py_joined_plain(parts):
    """Python's text of every text/plain body part, joined by a blank line, normalised (norm_body),
    with runs of empty lines collapsed to one: SPEC §3's rule computed on Python's tree (used only to
    check "joins" reasons in the list; compared with inlet's value normalised the same way)."""
    texts = []
    for p in parts:
        try:
            texts.append(p.get_content())
        except Exception as e:  # noqa: BLE001
            texts.append(_err(e))
    return collapse_blank_lines(norm_body("\n\n".join(texts)))


def python_view(data):
    try:
        msg = email.message_from_bytes(data, policy=POLICY)
    except Exception as e:  # noqa: BLE001
        err = _err(e)
        return {"from": err, "subject": err, "body-plain": err, "attachments": [err], "joined": err,
                "nplain": 0}
    atts, plain = py_tree(msg)
    return {"from": py_header(msg, "from"), "subject": py_header(msg, "subject"), "body-plain": py_body(msg),
            "attachments": atts, "joined": py_joined_plain(plain), "nplain": len(plain)}


# ---- comparison -------------------------------------------------------------------------------

def norm_body(s):
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in s.split("\n")).rstrip("\n")


def python_renders_from(value):
    try:
        return str(POLICY.header_factory("from", value))
    except Exception as e:  # noqa: BLE001
        return _err(e)


def compare(field, inlet_v, py_v):
    """'same' | 'equivalent' (from only: same after Python's rendering) | 'differ' | 'n/a'."""
    if field in ("from", "subject"):
        inlet_v, py_v = inlet_v.strip(), py_v.strip()
    if field == "from":
        if inlet_v == py_v:
            return "same"
        return "equivalent" if python_renders_from(inlet_v).strip() == py_v else "differ"
    if field == "subject":
        return "same" if inlet_v == py_v else "differ"
    if field == "body-plain":
        if py_v is None:
            return "n/a"
        return "same" if norm_body(inlet_v) == norm_body(py_v) else "differ"
    if field == "attachments":
        return "same" if inlet_v == py_v else "differ"
    raise ValueError(field)


# ---- inlet's side -----------------------------------------------------------------------------

def inlet_view(inlet, path, timeout):
    cmd = [inlet, "parse", path]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"{' '.join(cmd)}: timed out after {timeout:.0f} s"
    if p.returncode != 0:
        return None, (f"{' '.join(cmd)}: exit status {p.returncode}: "
                      + p.stderr.decode("utf-8", "replace").strip()[-400:])
    try:
        doc = json.loads(p.stdout.decode("utf-8"))
        return {"from": doc["from"], "subject": doc["subject"], "body-plain": doc["body-plain"],
                "attachments": [a["name"] for a in doc["attachments"]]}, None
    except (ValueError, KeyError, TypeError) as e:
        return None, f"{' '.join(cmd)}: output is not the JSON of SPEC §5: {e}"


def load_list(path):
    """{(file, field): reason}, and the Python version named by a '# python: X.Y' line (or None)."""
    listed, version = {}, None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            m = re.match(r"#\s*python:\s*(\d+\.\d+)", line)
            if m:
                version = m.group(1)
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 3 or cols[1] not in FIELDS or not cols[2].strip():
                raise SystemExit(f"{path}:{n}: want file<TAB>field<TAB>reason with field in {FIELDS}: {line!r}")
            key = (cols[0], cols[1])
            if key in listed:
                raise SystemExit(f"{path}:{n}: {cols[0]} {cols[1]} listed twice")
            listed[key] = cols[2]
    return listed, version


def clip(v, n=600):
    r = repr(v)
    return r if len(r) <= n else r[:n] + f"... ({len(r)} chars)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "python-disagreements.tsv"))
    ap.add_argument("--show", action="store_true")
    ap.add_argument("--template", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args()

    files = corpuslib.corpus_files("corpus-python-agreement")
    if args.only:
        want = set(args.only.split(","))
        files = [f for f in files if os.path.basename(f) in want]
    inlet = corpuslib.inlet_bin()
    listed, list_python = load_list(args.list)
    this_python = "%d.%d" % sys.version_info[:2]
    timeout = corpuslib.timeout_s(20.0)
    jobs = int(os.environ.get("INLET_CORPUS_JOBS", "2"))
    t0 = time.monotonic()

    def one(path):
        with open(path, "rb") as f:
            data = f.read()
        iv, err = inlet_view(inlet, path, timeout)
        return path, iv, err, python_view(data)

    counts = {f: {"same": 0, "equivalent": 0, "differ": 0, "n/a": 0} for f in FIELDS}
    failures, unexpected, names, differing = [], [], set(), set()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        for path, iv, err, pv in ex.map(one, files):
            name = os.path.basename(path)
            names.add(name)
            if err:
                failures.append(f"{name}: inlet failed: {err}")
                continue
            for field in FIELDS:
                verdict = compare(field, iv[field], pv[field])
                counts[field][verdict] += 1
                if verdict != "differ":
                    continue
                differing.add((name, field))
                is_listed = (name, field) in listed
                joins = field == "body-plain" and pv["nplain"] > 1 and collapse_blank_lines(norm_body(iv[field])) == pv["joined"]
                if is_listed and listed[(name, field)].startswith(JOINS) and not joins:
                    failures.append(f"{name} {field}: listed as '{JOINS}...', but inlet's body-plain is not "
                                    f"the {pv['nplain']} text/plain body parts Python finds, joined")
                if not is_listed:
                    unexpected.append((name, field))
                if args.show or not is_listed:
                    print(f"{'LISTED' if is_listed else 'UNEXPECTED'} {name} {field}"
                          + (f"  [{listed[(name, field)]}]" if is_listed else ""))
                    print(f"    inlet:  {clip(iv[field])}")
                    print(f"    python: {clip(pv[field])}")
                    if joins:
                        print(f"    (inlet's body-plain is Python's {pv['nplain']} text/plain body parts joined)")
                    print(f"    command: {inlet} parse {path}")
    stale = sorted(k for k in listed if k[0] in names and k not in differing)
    for name, field in stale:
        failures.append(f"{name} {field}: listed as a disagreement ({listed[(name, field)]}) but now agrees; "
                        "remove the line from the list")
    for name, field in unexpected:
        failures.append(f"{name} {field}: disagreement not in {os.path.basename(args.list)}")

    total_ok = total_n = 0
    parts = []
    for field in FIELDS:
        c = counts[field]
        n = c["same"] + c["equivalent"] + c["differ"]
        ok = c["same"] + c["equivalent"]
        total_ok += ok
        total_n += n
        extra = []
        if field == "from":
            extra.append(f"{c['same']} identical, {c['equivalent']} same mailboxes rendered differently")
        if c["n/a"]:
            extra.append(f"{c['n/a']} without a text/plain body not compared")
        pct = 100.0 * ok / n if n else 100.0
        parts.append(f"{field} {ok}/{n} ({pct:.1f}%)" + (f" [{'; '.join(extra)}]" if extra else ""))
    print("agreement: " + ", ".join(parts))
    print(f"agreement overall: {total_ok}/{total_n} ({100.0 * total_ok / max(total_n, 1):.1f}%) over "
          f"{len(names)} files; {len(differing)} disagreements, {len(listed)} listed, "
          f"Python {sys.version.split()[0]}, {time.monotonic() - t0:.1f} s")
    if args.template:
        for name, field in unexpected:
            print(f"{name}\t{field}\t")
    for f in failures:
        print("FAIL " + f)
    if failures and list_python and list_python != this_python:
        print(f"NOTE: the list was written against Python {list_python}'s email package and this is Python "
              f"{this_python}: a changed Python can explain some of the failures above")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
