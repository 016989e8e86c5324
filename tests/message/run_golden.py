#!/usr/bin/env python3
"""Golden test for `inlet parse`: each golden/NAME.eml must give exactly golden/NAME.json.

    run_golden.py INLET GOLDEN_DIR [--update]

Every file is parsed twice (the bytes must be the same: determinism), the output must be valid
UTF-8 JSON, and it must equal the golden file byte for byte; a mismatch prints a unified diff.
--update rewrites the .json files: read every changed one before keeping it.
Output is TAP (one line per message)."""
import difflib
import json
import pathlib
import subprocess
import sys


def parse(inlet, eml):
    args = [inlet, "parse", str(eml), "--recipient", "bob@Example.COM",
            "--sender", "alice@example.org", "--id", eml.stem]
    r = subprocess.run(args, capture_output=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def check(inlet, eml, update):
    rc, out, err = parse(inlet, eml)
    if rc != 0:
        return f"exit status {rc}: {err.decode(errors='replace')}"
    rc2, out2, _ = parse(inlet, eml)
    if rc2 != 0 or out2 != out:
        return "two runs gave different bytes"
    try:
        json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return f"not UTF-8 JSON: {e}"
    golden = eml.with_suffix(".json")
    if update:
        if not golden.exists() or golden.read_bytes() != out:
            golden.write_bytes(out)
            print(f"# updated {golden.name}")
        return None
    if not golden.exists():
        return f"no golden file {golden.name} (run with --update, then check it by eye)"
    want = golden.read_bytes()
    if want == out:
        return None
    diff = difflib.unified_diff(want.decode(errors="replace").splitlines(),
                                out.decode(errors="replace").splitlines(),
                                f"{golden.name} (expected)", "inlet parse", lineterm="")
    return "output differs from the golden file\n" + "\n".join(diff)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    inlet, folder = sys.argv[1], pathlib.Path(sys.argv[2])
    update = "--update" in sys.argv[3:]
    emls = sorted(folder.glob("*.eml"))
    failed = 0
    for i, eml in enumerate(emls, 1):
        problem = check(inlet, eml, update)
        if problem is None:
            print(f"ok {i} - {eml.name}")
        else:
            failed += 1
            print(f"not ok {i} - {eml.name}")
            for line in problem.splitlines():
                print(f"#   {line}")
    print(f"1..{len(emls)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
