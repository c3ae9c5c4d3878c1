"""Reading a training script or notebook without running it: the calls it makes and the literal values they get.

Users of Python-first frameworks (Unsloth) launch a script or a notebook, not a YAML. vlmcheck never executes user
code: it parses the source with :mod:`ast` and follows the statements in order, keeping each name assigned a
literal (``max_seq_length = 2048``, ``instruction = "..."``) so that a call's keyword arguments are resolved against
the values the names hold at that point. What cannot be resolved statically (a function call, an attribute, a name
assigned under a condition) is kept as an :class:`Unresolved` that says why, never a guess.

>>> script = read_source("max_len = 1024\\nf(max_length = max_len)\\n", path=Path("train.py"))
>>> script.calls_to("f")[0].kwargs
{'max_length': 1024}
"""

from __future__ import annotations

import ast
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmcheck.data.nesting import parse
from vlmcheck.errors import UsageError


@dataclass(frozen=True)
class Unresolved:
    """A value vlmcheck cannot know without running the script."""

    why: str

    def __repr__(self) -> str:
        return f"<unresolved: {self.why}>"


@dataclass(frozen=True)
class Column:
    """``sample["name"]`` inside a row-mapping function: the row's column ``name``."""

    name: str


@dataclass
class Call:
    """One call the script makes, its arguments evaluated against the names' values at that line."""

    name: str  # the called name as written: ``FastVisionModel.from_pretrained``, ``SFTConfig``
    args: list[Any]
    kwargs: dict[str, Any]
    line: int
    node: ast.Call
    env: dict[str, Any]  # the module-level names' values where the call is made
    target: str | None = None  # the name the call's result is assigned to (``dataset = load_dataset(...)``)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """A parameter given by keyword or by position (``index``)."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[index] if index < len(self.args) else default


@dataclass
class Script:
    """A script's calls, in the order they run, and its module-level functions."""

    path: Path
    calls: list[Call] = field(default_factory=list)
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    imports: set[str] = field(default_factory=set)  # top-level packages imported
    assigned: dict[str, list[ast.expr]] = field(default_factory=dict)  # name -> the values assigned to it

    def calls_to(self, *names: str) -> list[Call]:
        """The calls to any of ``names``, as written or as the last part of a dotted name (``from_pretrained``
        matches ``FastVisionModel.from_pretrained``)."""
        return [c for c in self.calls if any(c.name == n or c.name.endswith("." + n) for n in names)]


def notebook_code(text: str, *, path: Path) -> str:
    """The code cells of a Jupyter notebook, joined; IPython's shell and magic lines (``!pip``, ``%%capture``)
    are dropped, and a cell run by another interpreter (``%%bash``, ``%%writefile``) is dropped whole."""
    try:
        notebook = parse(json.loads, text, where=str(path))
        cells = notebook["cells"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path}: not a Jupyter notebook (no cells)") from None
    # nbformat's schema: cells is a list, a cell's source a string or a list of strings; Jupyter refuses to open
    # a notebook that breaks it
    if not isinstance(cells, list):
        raise UsageError(f"{path}: not a Jupyter notebook (its cells are {type(cells).__name__}, not a list)")
    out: list[str] = []
    for number, cell in enumerate(cells, 1):
        if not isinstance(cell, Mapping) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(line, str) for line in source):
            source = "".join(source)
        elif not isinstance(source, str):
            raise UsageError(f"{path}: cell {number}'s source is not text (a string or a list of strings), so "
                             "Jupyter cannot open this notebook")
        lines = source.splitlines()
        head = lines[0].strip() if lines else ""
        if head.startswith("%%") and not head.startswith(("%%capture", "%%time")):
            continue
        # a shell or magic line becomes `pass` at its indentation, so the block around it stays valid Python
        out.append("\n".join(line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("!", "%"))
                             else line for line in lines))
    return "\n\n".join(out) + "\n"


def read_source(text: str, *, path: Path, every_function: bool = False) -> Script:
    """A script's (or a notebook's, given as JSON text when ``path`` ends in .ipynb) calls, statically.

    A module-level function's body is followed where the script calls it (``main()``); with ``every_function``
    the bodies of functions never called that way are read too, after the module, their names unresolved (a lint
    of settings wants every literal a script passes, wherever it passes it)."""
    if path.suffix == ".ipynb":
        text = notebook_code(text, path=path)
    else:  # a UTF-8 byte order mark (Windows editors write one): Python reads past it
        text = text.removeprefix("\ufeff")
    deep = UsageError(f"{path} is nested deeper than vlmcheck reads (an expression or block too deep to follow "
                      "without running it)")
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise UsageError(f"{path}: not valid Python ({e.msg}, line {e.lineno}); vlmcheck reads the script without "
                         "running it") from None
    except (RecursionError, MemoryError):  # the parser's own limits on nesting (`x = ------...1`)
        raise deep from None
    script = Script(path=path)
    walker = _Walker(script)
    try:
        walker.block(tree.body, {})
        if every_function:
            for name, function in list(script.functions.items()):
                if name not in walker.entered:
                    walker.entered.add(name)
                    walker.block(function.body, {}, conditional=True)
    except RecursionError:
        raise deep from None
    return script


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mod: operator.mod,
}


def evaluate(node: ast.AST, env: Mapping[str, Any], *, param: str | None = None) -> Any:
    """A literal expression's value: constants, containers, names holding literals, arithmetic on numbers and
    strings; ``param["key"]`` is :class:`Column` when ``param`` names a row-mapping function's argument. Anything
    else is :class:`Unresolved`."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [evaluate(e, env, param=param) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                return Unresolved("a dict built with ** unpacking")
            key = evaluate(k, env, param=param)
            if isinstance(key, (Unresolved, Column)) or not isinstance(key, (str, int, float, bool, type(None))):
                return Unresolved("a dict key that is not a literal")
            out[key] = evaluate(v, env, param=param)
        return out
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        return Unresolved(f"the name {node.id!r} holds no literal value vlmcheck can read")
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == param:
        key = evaluate(node.slice, env)
        if isinstance(key, str):
            return Column(key)
        return Unresolved(f"{param}[...] with a key that is not a string")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
        value = evaluate(node.operand, env, param=param)
        if isinstance(value, (int, float, bool)) and not isinstance(value, Unresolved):
            return -value if isinstance(node.op, ast.USub) else (not value if isinstance(node.op, ast.Not) else value)
        return Unresolved("an operation on a value that is not a literal")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = evaluate(node.left, env, param=param), evaluate(node.right, env, param=param)
        if all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in (left, right)):
            try:
                return _BINARY[type(node.op)](left, right)
            except (TypeError, ZeroDivisionError, OverflowError):
                pass
        return Unresolved("arithmetic on a value that is not a literal")
    return Unresolved(f"{ast.unparse(node)[:60]!r} is computed when the script runs")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return f"{owner}.{node.attr}" if owner else node.attr
    if isinstance(node, ast.Call):  # trainer.train().x: keep the attribute
        return None
    return None


def _constant_test(node: ast.AST) -> bool | None:
    """A condition known without running (``if False:``, ``if 0:``, ``if True:``; ``if __name__ == "__main__":``
    is true for a script that is launched)."""
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "__name__"
            and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)
            and isinstance(node.comparators[0], ast.Constant) and node.comparators[0].value == "__main__"):
        return True
    return None


class _Walker:
    """Follows the statements in order, keeping module-level names' literal values."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.entered: set[str] = set()

    def block(self, body: list[ast.stmt], env: dict[str, Any], *, conditional: bool = False) -> None:
        for stmt in body:
            self.stmt(stmt, env, conditional=conditional)

    def stmt(self, stmt: ast.stmt, env: dict[str, Any], *, conditional: bool) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module or ""]
            self.script.imports.update(n.split(".")[0] for n in names if n)
            for alias in stmt.names:
                env.pop((alias.asname or alias.name).split(".")[0], None)
            return
        if isinstance(stmt, ast.FunctionDef):
            self.script.functions[stmt.name] = stmt
            env.pop(stmt.name, None)
            return
        if isinstance(stmt, (ast.AsyncFunctionDef, ast.ClassDef)):
            return
        if isinstance(stmt, ast.If):
            known = _constant_test(stmt.test)
            self.calls(stmt.test, env, target=None)
            if known is True:
                self.block(stmt.body, env, conditional=conditional)
            elif known is False:
                self.block(stmt.orelse, env, conditional=conditional)
            else:
                self.block(stmt.body, env, conditional=True)
                self.block(stmt.orelse, env, conditional=True)
            return
        if isinstance(stmt, (ast.For, ast.While, ast.With, ast.Try)):
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self.calls(child, env, target=None)
            bodies = [stmt.body, getattr(stmt, "orelse", [])] + [getattr(stmt, "finalbody", [])] + [
                h.body for h in getattr(stmt, "handlers", [])]
            loop = isinstance(stmt, (ast.For, ast.While, ast.Try))
            for body in bodies:
                self.block(body, env, conditional=conditional or loop)
            return
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            value = stmt.value
            if value is None:
                return
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            name = targets[0].id if len(targets) == 1 and isinstance(targets[0], ast.Name) else None
            self.calls(value, env, target=name)
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        self.script.assigned.setdefault(node.id, []).append(value)
                        if isinstance(stmt, ast.AugAssign):
                            env[node.id] = Unresolved(f"{node.id!r} is changed in place (+=)")
                        elif node is targets[0] and name is not None:
                            result = evaluate(value, env)
                            env[node.id] = Unresolved(f"{node.id!r} is assigned under a condition or in a loop") \
                                if conditional else result
                        else:
                            env[node.id] = Unresolved(f"{node.id!r} is unpacked from a value computed at run time")
            return
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.expr):
                self.calls(child, env, target=None)
        # `main()`: a script's own function called without arguments runs its body here, once, its locals on top
        # of the module's names
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.args and not call.keywords
                and call.func.id in self.script.functions and call.func.id not in self.entered):
            self.entered.add(call.func.id)
            self.block(self.script.functions[call.func.id].body, dict(env), conditional=conditional)

    def calls(self, node: ast.AST, env: dict[str, Any], *, target: str | None) -> None:
        """Every call in ``node`` (not inside a lambda or a comprehension's own function body), innermost last."""
        found: list[ast.Call] = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
        for call in found:
            name = _dotted(call.func)
            if name is None:
                continue
            args = [Unresolved("a * argument") if isinstance(a, ast.Starred) else evaluate(a, env) for a in call.args]
            kwargs = {kw.arg: evaluate(kw.value, env) for kw in call.keywords if kw.arg is not None}
            self.script.calls.append(Call(name=name, args=args, kwargs=kwargs, line=call.lineno, node=call,
                                          env=dict(env), target=target if call is node else None))
