"""Reading a launch script as bash runs it, without running anything: its words, quotes, comments, variables and
assignments, arithmetic, pipes, lists and redirections, here-documents (:func:`shell_commands`). Every reader of a
launch script reads it here (:func:`launch_commands`): the framework modules that take their settings from its
command line (``swift sft``, verl's and EasyR1's overrides, VLM-R1's and LLaVA's flags) and ``vlmcheck lint``.
"""

from __future__ import annotations

import ast
import bisect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck.errors import UsageError

# -- launch scripts -----------------------------------------------------------------------------------------------
# The most characters a shell variable or one expanded word may hold while a script is read: a script that doubles
# a variable line after line (A=$A$A) is refused past it instead of filling memory.
SHELL_EXPANSION_LIMIT = 1 << 20
# Linux's MAX_ARG_STRLEN (32 pages, include/uapi/linux/binfmts.h): the longest argument or environment string
# execve takes, its NUL included; bash cannot start a command with a longer one ("Argument list too long").
MAX_ARG_STRLEN = 131072

_BLANKS = re.compile(r"[ \t]+")
_PLAIN = re.compile(r"[^ \t\n|&;()<>'\"\\$`]+")  # the characters of a word that mean nothing to the shell
_ARG_PLAIN = re.compile(r"[^'\"\\$`]+")  # the same in the word of ${NAME:-word}, where blanks do not end it
_QUOTED_PLAIN = re.compile(r"[^\"\\$`]+")  # the same between double quotes
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\+?)=")
_REDIRECTION = re.compile(r"<<<|<<-|<<|<>|<&|>>|>&|>\||&>>|&>|<|>")
_OPERATOR = re.compile(r";;&|;;|;&|&&|\|\||\|&|[|&;()]")
_HEREDOC = re.compile(r"<<(-?)[ \t]*[\"']?([^\s\"'();&|<>]+)[\"']?")  # a here-document inside $(...)
# inside ${...}: the length form, the parameter and the operator of the forms bash documents
_PARAMETER = re.compile(r"(#?)([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*#?$!-])(:?[-=+?])?")
_ANSI_C = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|[0-7]{1,3}|c.|.)", re.S)
_ANSI_C_LETTERS = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                   "v": "\v"}
_DECLARATIONS = ("export", "readonly", "declare", "typeset", "local")

# A word is a list of pieces: ("text", text, quoted), ("home",) for a leading ~, ("at",) for $@ (no positional
# arguments: it expands to no word, even quoted), ("param", name, operator, word of the operator or None, quoted,
# length form), ("arith", expression, quoted, source) for $((...)), and ("opaque", source, quoted) for what is kept
# as written: command substitutions (not run), $?, $$, $0 and the ${...} forms not expanded here (${NAME%/}).
_Piece = tuple[Any, ...]


class ShellError(ValueError):
    """A launch script vlmcheck does not read past, at ``line``."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class ShellSyntaxError(ShellError):
    """Text bash cannot parse (a quote never closed): bash runs the commands before it, then stops."""


class ShellStop(ShellError):
    """A ``${NAME:?}`` of a variable that is not set: bash stops the script there."""


class ShellTooLarge(ShellError):
    """A variable or word expanding past ``SHELL_EXPANSION_LIMIT`` characters."""


@dataclass(frozen=True)
class ShellCommand:
    """One simple command of a launch script as bash runs it (see :func:`shell_commands`)."""

    line: int  # where it starts, from 1
    words: tuple[str, ...]  # expanded, split into fields, quotes removed; without its redirections
    assignments: tuple[tuple[str, str], ...]  # its ``NAME=value`` prefixes: its own environment
    variables: Mapping[str, str]  # the script's variables when it runs (set earlier, exported or not)
    # (the index in words of the word after it, the variables it named) of each word that expanded to no word
    # (``--max_length $UNSET``: bash drops the empty word)
    vanished: tuple[tuple[int, tuple[str, ...]], ...] = ()
    unset: Mapping[int, tuple[str, ...]] = field(default_factory=dict)  # word index -> its empty or unset variables
    # word index -> what in it is kept as written, not run or not expanded ($(cat f), `date`, ${NAME%/})
    unexpanded: Mapping[int, tuple[str, ...]] = field(default_factory=dict)


def too_large(what: str) -> str:
    return (f"{what} expands past {SHELL_EXPANSION_LIMIT:,} characters (a variable doubled line after line, as "
            "A=$A$A does?): vlmcheck does not read such a script")


def _ansi_c(body: str) -> str:
    """The text of ``$'...'`` (ANSI-C quoting)."""
    def sub(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            return chr(min(int(code[1:], 16), 0x10FFFF))
        if code[0] in "01234567":
            return chr(int(code, 8) & 0xFF)
        if code[0] == "c" and len(code) == 2:
            return chr(ord(code[1].upper()) ^ 0x40)
        return _ANSI_C_LETTERS.get(code, code if code in "\\'\"?" else "\\" + code)

    return _ANSI_C.sub(sub, body)


def _arithmetic(expression: str, lookup: Callable[[str], str | None]) -> str | None:
    """The value of ``$((expression))`` as bash computes it (64-bit, division toward zero) when it is whole numbers,
    variables holding them, ``+ - * / %`` and parentheses; None for anything else."""
    def value(match: re.Match[str]) -> str:
        found = lookup(match.group(1) or match.group(2)) or "0"
        return found.strip() if re.fullmatch(r"\s*-?[1-9][0-9]*\s*|\s*0\s*", found) else "?"

    text = re.sub(r"\$?\{?([A-Za-z_][A-Za-z0-9_]*)\}?|\$([1-9])", value, expression)
    if not re.fullmatch(r"[0-9+\-*/%() \t\n]*", text) or re.search(r"\b0[0-9]|\*\*", text):
        return None  # octal, powers, names of expressions: not followed
    try:
        tree = ast.parse(text.strip() or "0", mode="eval").body
    except SyntaxError:
        return None

    def wrap(n: int) -> int:
        return (n + 2**63) % 2**64 - 2**63

    def run(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return wrap(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return wrap(-run(node.operand) if isinstance(node.op, ast.USub) else run(node.operand))
        if isinstance(node, ast.BinOp):
            a, b = run(node.left), run(node.right)
            if isinstance(node.op, ast.Add):
                return wrap(a + b)
            if isinstance(node.op, ast.Sub):
                return wrap(a - b)
            if isinstance(node.op, ast.Mult):
                return wrap(a * b)
            if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b:
                quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
                return wrap(a - b * quotient if isinstance(node.op, ast.Mod) else quotient)
        raise ValueError

    try:
        return str(run(tree))
    except (ValueError, RecursionError):
        return None


class _Lexer:
    """Bash's tokens: words as pieces (quotes honoured), operators, and redirections and here-documents left out.
    Linear in the length of the text."""

    def __init__(self, text: str, *, first_line: int = 1) -> None:
        self.text = text
        self.pos = 0
        self.first_line = first_line
        self.newlines = [m.start() for m in re.finditer("\n", text)]

    def line(self, pos: int) -> int:
        return self.first_line + bisect.bisect_left(self.newlines, pos)

    def fail(self, what: str, pos: int) -> ShellSyntaxError:
        return ShellSyntaxError(what, self.line(pos))

    def tokens(self) -> Iterator[tuple[str, Any, int]]:
        """("word", pieces, pos) and ("op", operator, pos), newlines being operators."""
        text, n = self.text, len(self.text)
        heredocs: list[tuple[str, bool]] = []
        while self.pos < n:
            pos = self.pos
            c = text[pos]
            if c in " \t":
                self.pos = _BLANKS.match(text, pos).end()  # type: ignore[union-attr]
            elif c == "\\" and text.startswith("\n", pos + 1):
                self.pos += 2
            elif c == "\n":
                self.pos += 1
                yield "op", "\n", pos
                for delimiter, tabs in heredocs:
                    self._skip_heredoc(delimiter, tabs)
                heredocs.clear()
            elif c == "#":  # a comment: only where a word would start
                end = text.find("\n", pos)
                self.pos = n if end < 0 else end
            elif match := _REDIRECTION.match(text, pos):
                self._redirection(match.group(), heredocs)
            elif match := _OPERATOR.match(text, pos):
                self.pos = match.end()
                yield "op", match.group(), pos
            else:
                pieces = self.word(pos, top=True)
                if self.pos < n and text[self.pos] in "<>" and text[pos:self.pos].isdecimal():
                    continue  # the file descriptor of the redirection that follows (2>&1)
                yield "word", pieces, pos

    def _redirection(self, operator: str, heredocs: list[tuple[str, bool]]) -> None:
        """Past a redirection and its target word; a here-document's delimiter is noted (its lines follow the
        end of the line)."""
        text = self.text
        self.pos += len(operator)
        while True:
            if (blanks := _BLANKS.match(text, self.pos)) is not None:
                self.pos = blanks.end()
            elif text.startswith("\\\n", self.pos):
                self.pos += 2
            else:
                break
        start = self.pos
        if start >= len(text) or text[start] in "\n|&;()<>":
            return  # bash: a syntax error; the target is missing
        self.word(start, top=True)
        if operator in ("<<", "<<-"):
            heredocs.append((re.sub(r"[\"'\\]", "", text[start:self.pos]), operator == "<<-"))

    def _skip_heredoc(self, delimiter: str, tabs: bool) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            end = text.find("\n", self.pos)
            line = text[self.pos:n if end < 0 else end]
            self.pos = n if end < 0 else end + 1
            if (line.lstrip("\t") if tabs else line) == delimiter:
                return

    def word(self, start: int, *, top: bool) -> list[_Piece]:
        """The word at ``start``: up to a blank or an operator (``top``), else the whole text (the word of
        ``${NAME:-word}``, where blanks are text to split)."""
        text, n = self.text, len(self.text)
        pieces: list[_Piece] = []
        pos = start
        while pos < n:
            c = text[pos]
            if top and c in " \t\n|&;()<>":
                break
            if c == "'":
                end = text.find("'", pos + 1)
                if end < 0:
                    raise self.fail("a ' is never closed", pos)
                pieces.append(("text", text[pos + 1:end], True))
                pos = end + 1
            elif c == '"':
                pos = self.quoted(pos + 1, pieces, closing=True)
            elif c == "\\":
                if text.startswith("\n", pos + 1):
                    pos += 2
                else:
                    pieces.append(("text", text[pos + 1:pos + 2] or "\\", True))
                    pos += 2
            elif c == "$":
                pos = self.dollar(pos, pieces, quoted=False)
            elif c == "`":
                end = self._backquote_end(pos)
                pieces.append(("opaque", text[pos:end], False))
                pos = end
            else:
                match = (_PLAIN if top else _ARG_PLAIN).match(text, pos)
                assert match is not None
                pieces.append(("text", match.group(), False))
                pos = match.end()
        self.pos = pos
        if pieces and pieces[0][:1] == ("text",) and not pieces[0][2]:  # tilde expansion
            first = pieces[0][1]
            if first == "~" and len(pieces) == 1:
                pieces[0] = ("home",)
            elif first.startswith("~/"):
                pieces[0:1] = [("home",), ("text", first[1:], False)]
        return pieces

    def quoted(self, pos: int, pieces: list[_Piece], *, closing: bool) -> int:
        """The text between double quotes from ``pos``, to the closing quote (``closing``) or, for the word of
        ``"${NAME:-word}"``, to the end; the position after it."""
        text, n = self.text, len(self.text)
        start = pos
        mark = len(pieces)
        pieces.append(("text", "", True))  # "" is a word
        while pos < n:
            c = text[pos]
            if c == '"':
                if closing:
                    break
                pos += 1
            elif c == "\\":
                following = text[pos + 1:pos + 2]
                if following == "\n":
                    pos += 2
                elif following and following in '$`"\\':
                    pieces.append(("text", following, True))
                    pos += 2
                else:
                    pieces.append(("text", "\\", True))
                    pos += 1
            elif c == "$":
                pos = self.dollar(pos, pieces, quoted=True)
            elif c == "`":
                end = self._backquote_end(pos)
                pieces.append(("opaque", text[pos:end], True))
                pos = end
            else:
                match = _QUOTED_PLAIN.match(text, pos)
                assert match is not None
                pieces.append(("text", match.group(), True))
                pos = match.end()
        else:
            if closing:
                raise self.fail('a " is never closed', start - 1)
        if all(p == ("at",) for p in pieces[mark + 1:]) and len(pieces) > mark + 1:
            del pieces[mark]  # "$@" with no arguments is no word
        return pos + 1 if closing else pos

    def dollar(self, pos: int, pieces: list[_Piece], *, quoted: bool) -> int:
        """The expansion at ``pos`` (a ``$``); the position after it."""
        text = self.text
        following = text[pos + 1:pos + 2]
        if following == "(":
            end = self._balanced(pos + 1, heredocs=not text.startswith("((", pos + 1))
            if text.startswith("((", pos + 1) and text.startswith("))", end - 2):
                pieces.append(("arith", text[pos + 3:end - 2], quoted, text[pos:end]))
            else:
                pieces.append(("opaque", text[pos:end], quoted))  # a command substitution: not run
            return end
        if following == "{":
            end = self._brace_end(pos + 2, quoted=quoted)
            pieces.append(self._parameter(text[pos + 2:end], text[pos:end + 1], quoted, pos))
            return end + 1
        if following == "'" and not quoted:
            end = pos + 2
            while end < len(text) and text[end] != "'":
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                raise self.fail("a $' is never closed", pos)
            pieces.append(("text", _ansi_c(text[pos + 2:end]), True))
            return end + 1
        if following == '"' and not quoted:
            return self.quoted(pos + 2, pieces, closing=True)
        if (match := _NAME.match(text, pos + 1)) is not None:
            pieces.append(("param", match.group(), "", None, quoted, False))
            return match.end()
        if following and following in "123456789":
            pieces.append(("param", following, "", None, quoted, False))
            return pos + 2
        if following in ("@", "*"):
            pieces.append(("at",) if following == "@" else ("text", "", quoted))
            return pos + 2
        if following == "#":
            pieces.append(("text", "0", quoted))
            return pos + 2
        if following and following in "0?$!-":
            pieces.append(("opaque", text[pos:pos + 2], quoted))
            return pos + 2
        pieces.append(("text", "$", quoted))  # a lone $
        return pos + 1

    def _parameter(self, inner: str, source: str, quoted: bool, pos: int) -> _Piece:
        match = _PARAMETER.match(inner)
        if match is None or match.group(2) in ("?", "$", "!", "-", "0"):
            return ("opaque", source, quoted)  # a form not expanded here (${NAME%/}, ${NAME/a/b})
        length, name, operator = match.group(1) == "#", match.group(2), match.group(3) or ""
        rest = inner[match.end():]
        if (length and (operator or rest)) or (not operator and rest):
            return ("opaque", source, quoted)
        if name in ("@", "*") and not operator:
            return ("at",) if name == "@" else ("text", "", quoted)
        if not operator:
            return ("param", name, "", None, quoted, length)
        sub = _Lexer(rest, first_line=self.line(pos))
        word: list[_Piece] = []
        if quoted:
            sub.quoted(0, word, closing=False)
        else:
            word = sub.word(0, top=False)
        return ("param", name, operator, word, quoted, False)

    def _backquote_end(self, pos: int) -> int:
        end = pos + 1
        while end < len(self.text) and self.text[end] != "`":
            end += 2 if self.text[end] == "\\" else 1
        if end >= len(self.text):
            raise self.fail("a ` is never closed", pos)
        return end + 1

    def _skip_quotes(self, pos: int) -> int:
        """Past the quoted text at ``pos`` (inside ``$(...)`` and ``${...}``)."""
        text = self.text
        if text[pos] == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                raise self.fail("a ' is never closed", pos)
            return end + 1
        end = pos + 1
        while end < len(text) and text[end] != '"':
            end += 2 if text[end] == "\\" else 1
        if end >= len(text):
            raise self.fail('a " is never closed', pos)
        return end + 1

    def _balanced(self, pos: int, *, heredocs: bool = True) -> int:
        """Past the parenthesis at ``pos`` and the one that closes it (the text of a command substitution: its
        quotes, comments and, unless arithmetic, here-documents skipped, ``$(cat <<'EOF' ... EOF\n)``)."""
        text, depth, end = self.text, 0, pos
        pending: list[tuple[str, bool]] = []
        while end < len(text):
            c = text[end]
            if c == "\\":
                end += 2
                continue
            if c in "'\"":
                end = self._skip_quotes(end)
                continue
            if text.startswith("<<<", end):  # a here-string
                end += 3
                continue
            if c == "#" and text[end - 1] in " \t\n;(":
                end = len(text) if (stop := text.find("\n", end)) < 0 else stop
                continue
            if heredocs and (heredoc := _HEREDOC.match(text, end)) is not None:
                pending.append((heredoc.group(2), heredoc.group(1) == "-"))
                end = heredoc.end()
                continue
            if c == "\n" and pending:
                self.pos = end + 1
                for delimiter, tabs in pending:
                    self._skip_heredoc(delimiter, tabs)
                pending.clear()
                end = self.pos
                continue
            depth += {"(": 1, ")": -1}.get(c, 0)
            end += 1
            if depth == 0:
                return end
        raise self.fail("a $( is never closed", pos)

    def _brace_end(self, pos: int, *, quoted: bool) -> int:
        """The index of the ``}`` that closes the ``${`` before ``pos``."""
        text, end = self.text, pos
        while end < len(text):
            c = text[end]
            if c == "\\":
                end += 2
            elif c == '"' or (c == "'" and not quoted):
                end = self._skip_quotes(end)
            elif text.startswith("${", end):
                end = self._brace_end(end + 2, quoted=quoted) + 1
            elif text.startswith("$(", end):
                end = self._balanced(end + 1)
            elif c == "}":
                return end
            else:
                end += 1
        raise self.fail("a ${ is never closed", pos - 2)


class _Expander:
    """Expands words as bash does (parameters, ``~``, field splitting on blanks, quote removal) with the script's
    variables over the environment's."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.variables: dict[str, str | None] = {}  # None: unset by the script
        self.line = 1
        self.opaque: list[str] = []
        self.tainted: dict[str, tuple[str, ...]] = {}  # variables whose values hold what was kept as written

    def lookup(self, name: str) -> str | None:
        if name in self.variables:
            return self.variables[name]
        if name.isdecimal() or name in ("@", "*"):
            return None  # the script runs without arguments
        if name == "#":
            return "0"
        return self.env.get(name)

    def assign(self, name: str, value: str, opaque: Sequence[str] = ()) -> None:
        if len(value) > SHELL_EXPANSION_LIMIT:
            raise ShellTooLarge(too_large(f"${name}"), self.line)
        self.variables[name] = value
        if opaque:
            self.tainted[name] = tuple(opaque)
        else:
            self.tainted.pop(name, None)

    def set(self, name: str, appends: bool, word: Sequence[_Piece]) -> str:
        """Assigns ``NAME=word`` (``NAME+=word``): expanded, not split; the value."""
        self.opaque = []
        pieces: list[tuple[str, bool, bool]] = []
        self.pieces(word, pieces, [])
        if sum(len(text) for text, _, _ in pieces) > SHELL_EXPANSION_LIMIT:
            raise ShellTooLarge(too_large("a variable"), self.line)
        value = "".join(text for text, _, _ in pieces)
        opaque = list(self.opaque)
        if appends:
            value = (self.lookup(name) or "") + value
            opaque = [*self.tainted.get(name, ()), *opaque]
        self.assign(name, value, opaque)
        return value

    def pieces(self, word: Sequence[_Piece], out: list[tuple[str, bool, bool]], unset: list[str], *,
               split_text: bool = False) -> None:
        """(text, split on blanks, makes a word) for each piece; what is kept as written is noted in
        ``self.opaque``."""
        for piece in word:
            kind = piece[0]
            if kind == "text":
                out.append((piece[1], split_text and not piece[2], piece[2] or piece[1] != ""))
            elif kind == "home":
                home = self.lookup("HOME")
                out.append(("~" if home is None else home, False, True))
            elif kind == "param":
                self.parameter(piece, out, unset)
            elif kind == "arith" and (number := _arithmetic(piece[1], self.lookup)) is not None:
                out.append((number, False, True))
            elif kind in ("arith", "opaque"):
                source = piece[-1] if kind == "arith" else piece[1]
                self.opaque.append(source)
                out.append((source, False, True))

    def parameter(self, piece: _Piece, out: list[tuple[str, bool, bool]], unset: list[str]) -> None:
        _, name, operator, word, quoted, length = piece
        value = self.lookup(name)
        if length:
            out.append((str(len(value or "")), False, True))
            return
        missing = value is None or (operator.startswith(":") and value == "")
        if operator in (":-", "-", ":=", "=") and missing:
            mark = len(self.opaque)
            sub: list[tuple[str, bool, bool]] = []
            self.pieces(word, sub, unset, split_text=not quoted)
            if operator in (":-", "-"):
                out.extend(sub)
                return
            value = "".join(text for text, _, _ in sub)
            self.assign(name, value, self.opaque[mark:])
        elif operator in (":+", "+"):
            if not missing:
                self.pieces(word, out, unset, split_text=not quoted)
            elif quoted:
                out.append(("", False, True))
            return
        elif operator in (":?", "?") and missing:
            raise ShellStop(f"${{{name}}} is not set, and ${{{name}{operator}...}} makes bash stop the script there",
                            self.line)
        else:
            self.opaque.extend(self.tainted.get(name, ()))
        if not value:
            unset.append(name)
        out.append((value or "", not quoted, quoted))

    def fields(self, word: Sequence[_Piece]) -> tuple[list[str], list[str], list[str]]:
        """The words ``word`` expands to (none, one or more), the variables in it that are empty or unset, and
        what in it is kept as written."""
        pieces: list[tuple[str, bool, bool]] = []
        unset: list[str] = []
        self.opaque = []
        self.pieces(word, pieces, unset)
        if any(p[0] != "text" for p in word) and sum(len(text) for text, _, _ in pieces) > SHELL_EXPANSION_LIMIT:
            raise ShellTooLarge(too_large("a word"), self.line)
        fields: list[str] = []
        current: list[str] = []
        started = False
        for text, split, makes in pieces:
            if not split:
                current.append(text)
                started = started or makes
                continue
            if not text:
                continue
            if text[0] in " \t\n" and started:
                fields.append("".join(current))
                current, started = [], False
            for k, part in enumerate(p for p in re.split(r"[ \t\n]+", text) if p):
                if k:
                    fields.append("".join(current))
                    current = []
                current.append(part)
                started = True
            if text[-1] in " \t\n" and started:
                fields.append("".join(current))
                current, started = [], False
        if started:
            fields.append("".join(current))
        return fields, unset, self.opaque


def _assignment(word: Sequence[_Piece]) -> tuple[str, bool, list[_Piece]] | None:
    """(name, appends, value) of a ``NAME=value`` word."""
    if not word or word[0][:1] != ("text",) or word[0][2]:
        return None
    match = _ASSIGNMENT.match(word[0][1])
    if match is None:
        return None
    rest = word[0][1][match.end():]
    value: list[_Piece] = ([("text", rest, False)] if rest else []) + list(word[1:])
    if rest == "~" and len(word) == 1:
        value = [("home",)]
    elif rest.startswith("~/"):
        value = [("home",), ("text", rest[1:], False), *word[1:]]
    return match.group(1), match.group(2) == "+", value


def shell_commands(text: str, *, env: Mapping[str, str]) -> Iterator[ShellCommand]:
    """The simple commands of a launch script in the order bash runs them, each with its words as bash passes
    them to the program: quotes honoured (``#`` starts a comment only where a word would start), ``$NAME``,
    ``${NAME}``, ``${NAME:-word}`` and the other default forms expanded from the script's earlier assignments
    (``NAME=value``, ``export``, ``unset``) over ``env``, unquoted expansions split on blanks and dropped when
    empty, ``~`` as ``$HOME``; pipes, ``;``, ``&&``, ``||`` and ``&`` end a command; redirections (``> log``,
    ``2>&1``) and here-documents are left out. A script run without arguments: ``$1`` and ``$@`` are empty.

    ``$((...))`` is evaluated when it is plain whole-number arithmetic. Not run: command substitutions
    (``$(...)``, backquotes), ``$?``, ``$$`` and the ``${...}`` forms that cut or replace text: kept as written
    and named in ``unexpanded``; conditions and loops (every branch's assignments count), functions, ``source``;
    no pathname or brace expansion. CRLF line ends are read as LF.

    Raises ShellSyntaxError where bash cannot parse the text (the commands before it are yielded first),
    ShellStop at a ``${NAME:?}`` of an unset variable, ShellTooLarge where a word or variable grows past
    ``SHELL_EXPANSION_LIMIT`` characters (all of them ShellError, with the line).

    >>> [c.words for c in shell_commands("A='x y'\\necho $A \\"$A\\" 2>&1 | tee log\\n", env={})]
    [('echo', 'x', 'y', 'x y'), ('tee', 'log')]
    """
    lexer = _Lexer(text.replace("\r\n", "\n"))
    expander = _Expander(env)
    command: list[list[_Piece]] = []
    line = 1
    for kind, value, pos in lexer.tokens():
        if kind == "word":
            if not command:
                line = lexer.line(pos)
            command.append(value)
            continue
        if command:
            expander.line = line
            yield from _command(command, line, expander)
        command = []
    if command:
        expander.line = line
        yield from _command(command, line, expander)


def _command(raw: list[list[_Piece]], line: int, expander: _Expander) -> Iterator[ShellCommand]:
    at = 0
    while at < len(raw) and _assignment(raw[at]) is not None:
        at += 1
    if at == len(raw):  # assignments alone: the script's variables
        for word in raw:
            expander.set(*_assignment(word))  # type: ignore[misc]
        return
    words: list[str] = []
    vanished: list[tuple[int, tuple[str, ...]]] = []
    unset: dict[int, tuple[str, ...]] = {}
    unexpanded: dict[int, tuple[str, ...]] = {}
    for word in raw[at:]:  # the command's words are expanded before its prefixes are assigned
        fields, empty, opaque = expander.fields(word)
        if not fields and empty:
            vanished.append((len(words), tuple(empty)))
        for f in fields:
            if empty:
                unset[len(words)] = tuple(empty)
            if opaque:
                unexpanded[len(words)] = tuple(opaque)
            words.append(f)
    variables = {k: v for k, v in expander.variables.items() if v is not None}
    saved, tainted = dict(expander.variables), dict(expander.tainted)
    assignments = []
    for word in raw[:at]:  # each prefix sees the ones before it
        name, appends, value = _assignment(word)  # type: ignore[misc]
        assignments.append((name, expander.set(name, appends, value)))
    expander.variables, expander.tainted = saved, tainted
    if words and words[0] in _DECLARATIONS:
        for word in raw[at + 1:]:
            if (declared := _assignment(word)) is not None:
                expander.set(*declared)
    elif words and words[0] == "unset":
        for name in words[1:]:
            if _NAME.fullmatch(name):
                expander.variables[name] = None
                expander.tainted.pop(name, None)
    yield ShellCommand(line=line, words=tuple(words), assignments=tuple(assignments), variables=variables,
                       vanished=tuple(vanished), unset=unset, unexpanded=unexpanded)


def launch_commands(text: str, *, env: Mapping[str, str], path: Path | str | None,
                    program: str) -> Iterator[ShellCommand]:
    """:func:`shell_commands` of a launch script that should run ``program`` (a regular expression naming it, as
    ``swift sft`` or ``grpo_jsonl[.]py``), for a reader that takes the first command running it. Where bash stops before such a
    command (a syntax error, a ``${NAME:?}`` of an unset variable) or vlmcheck does not read on (a value past the
    expansion limit), and ``program`` is written after that line, the run never starts: a UsageError naming the
    line. A script that does not mention ``program`` at all is not lexed."""
    mention = re.compile(program)
    if not mention.search(text):
        return
    try:
        yield from shell_commands(text, env=env)
    except ShellError as e:
        if not mention.search("\n".join(text.replace("\r\n", "\n").split("\n")[e.line - 1:])):
            return
        where = f"{path}: line {e.line}" if path is not None else f"line {e.line}"
        if isinstance(e, ShellSyntaxError):
            raise UsageError(f"{where}: {e}: bash stops there with a syntax error, and does not run the training "
                             "command after it") from None
        raise UsageError(f"{where}: {e}") from None


def startable(command: ShellCommand, first: int, *, path: Path | str | None, program: str) -> None:
    """Refuse a command bash cannot start: an argument (from word ``first`` on) of ``MAX_ARG_STRLEN`` bytes or
    more ('Argument list too long')."""
    for word in command.words[first:]:
        size = len(word.encode("utf-8", "surrogateescape"))
        if size >= MAX_ARG_STRLEN:
            where = f"{path}: line {command.line}" if path is not None else f"line {command.line}"
            raise UsageError(f"{where}: an argument of `{program}` ({word[:40]!r}...) is {size:,} bytes long: Linux "
                             f"takes at most {MAX_ARG_STRLEN - 1:,} (MAX_ARG_STRLEN), so bash cannot start it "
                             "('Argument list too long')")
