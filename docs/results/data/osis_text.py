"""Plain text from a SWORD module's ``mod2imp`` output (OSIS markup), laid out like the KJV of
Debian's ``bible-kjv``: a line ``Book C`` at each chapter, then ``  V text`` per verse; two blank
lines between chapters (so ``cram redundancy --text`` reads each chapter as a document).

    mod2imp engWEB2015eb | python docs/results/data/osis_text.py > web.txt

The held-out corpus of docs/results/language.md ("Subword study"): the World English Bible
(public domain) beside the KJV the models train on. Footnotes (``<note>``), headings inside verses
(``<title>``) and every tag are dropped (line and block tags leave a space); entities are
unescaped; whitespace collapses to single spaces, none before closing punctuation; entries that are not verses (``Book 0:0`` prefaces, module and testament headings)
are skipped. Reads standard input (or the file named first), writes standard output.
"""

from __future__ import annotations

import html
import re
import sys

HEAD = re.compile(r"^\$\$\$(.+) (\d+):(\d+)$")
DROP = re.compile(r"<(note|title)\b[^>]*>.*?</\1>", re.S)
BLOCK = re.compile(r"</?(l|lb|lg|div|p|item|list|milestone|chapter|verse)\b[^>]*>")  # between words
TAG = re.compile(r"<[^>]+>")  # inside words (<w>, <q>, <seg>, ...)
SPACE = re.compile(r"\s+")
BEFORE = re.compile(r" (?=[,.;:!?\u201d\u2019)])")  # a space a dropped note left before punctuation


def verse_text(markup: str) -> str:
    text = TAG.sub("", BLOCK.sub(" ", DROP.sub(" ", markup)))
    return BEFORE.sub("", SPACE.sub(" ", html.unescape(text))).strip()


def convert(lines, out) -> int:
    """Write the verses of ``lines`` (mod2imp output) to ``out``; returns how many were written."""
    chapter, ref, body, n = None, None, [], 0

    def flush():
        nonlocal chapter, n
        if ref is None:
            return
        text = verse_text(" ".join(body))
        if not text:
            return
        book, c, v = ref
        if (book, c) != chapter:
            out.write(("\n\n" if chapter else "") + f"{book} {c}\n\n")
            chapter = (book, c)
        out.write(f"  {v} {text}\n")
        n += 1

    for line in lines:
        if line.startswith("$$$"):
            flush()
            m = HEAD.match(line.rstrip("\n"))
            ref = (m.group(1), int(m.group(2)), int(m.group(3))) if m and int(m.group(2)) and int(m.group(3)) else None
            body = []
        elif ref is not None:
            body.append(line)
    flush()
    return n


def main() -> None:
    src = open(sys.argv[1], encoding="utf-8") if len(sys.argv) > 1 else sys.stdin
    n = convert(src, sys.stdout)
    print(f"{n} verses", file=sys.stderr)


if __name__ == "__main__":
    main()
