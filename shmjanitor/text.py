r"""Text from outside made safe to print: every printer passes it through `printable`.

Process names are anybody's to choose (prctl(PR_SET_NAME), or a write to
/proc/self/comm: 15 bytes, any but NUL), and so are the bytes of user names, file
names and the error messages that quote them. Printed raw, an escape sequence rewrites
root's terminal (OSC 0 sets its title, CSI 2K erases the line, CR returns to its
start) and a newline forges a line of the journal. So every character that does not
print as itself becomes a visible backslash escape that a reader can undo:

* a backslash is doubled (`\\`), so every other backslash starts an escape;
* tab, newline and CR are `\t`, `\n`, `\r`;
* other ASCII controls (C0, DEL) are `\xNN`, ESC being `\x1b`;
* a byte that was not UTF-8 (os.fsdecode and psutil keep it as a lone surrogate
  U+DC80..U+DCFF, PEP 383) is `\xNN` with NN the byte, 80 to ff;
* any other character Python does not call printable (C1 controls, other lone
  surrogates, format characters such as U+202E RIGHT-TO-LEFT OVERRIDE, line and
  paragraph separators, spaces other than " ") is `\uNNNN` or `\UNNNNNNNN`.

`\xNN` is therefore always one byte of the original name (below 0x80 the byte is the
character) and `\u` always a character. JSON output needs none of this: its encoder
escapes every non-ASCII character itself (see render.json_string).
"""

from __future__ import annotations

_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    if n < 0x80:
        return f"\\x{n:02x}"
    if 0xDC80 <= n <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{n - 0xDC00:02x}"
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def printable(text: str) -> str:
    """`text` with every character that is not printable, and backslash, escaped."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, at C speed
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)
