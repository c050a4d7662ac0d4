"""The ``select`` expression: a boolean expression over pool and stage columns, not a query.

A recipe's ``select`` is parsed here before anything evaluates it, and only this grammar is
accepted (keywords and function names in any case):

    expr      := disjunct (OR disjunct)*          disjunct := negation (AND negation)*
    negation  := NOT negation | predicate
    predicate := sum [cmp sum | IS [NOT] NULL | [NOT] IN (sum, ...) | [NOT] BETWEEN sum AND sum
                      | [NOT] LIKE 'pattern']
    sum       := term (('+' | '-') term)*         term := unary (('*' | '/' | '%') unary)*
    unary     := '-' unary | atom
    atom      := number | 'string' | TRUE | FALSE | NULL | column | function(sum, ...) | (expr)

with cmp one of = == != <> < <= > >=, a column a plain name ([A-Za-z_][A-Za-z0-9_]*) and the
functions lower, upper, length, abs, coalesce, round. Anything else (a subquery, a table
function such as read_csv, a quoted identifier) is a RecipeError that quotes only the
expression, so a recipe from someone else cannot read files on this machine.

The engines evaluate the canonical text of the parsed tree (``Select.sql``): polars SQL locally,
Spark SQL on Spark; both implement this subset the same way. While it is evaluated a NaN in a
float column reads as NULL (curate.steps.subset), and a NULL result is not selected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from curate.errors import RecipeError

FUNCTIONS = ("lower", "upper", "length", "abs", "coalesce", "round")
KEYWORDS = {"and", "or", "not", "is", "null", "in", "between", "like", "true", "false"}
COMPARISONS = ("=", "==", "!=", "<>", "<", "<=", ">", ">=")
TOKEN = re.compile(r"""\s*(?:
    (?P<number>\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)
  | (?P<string>'(?:[^']|'')*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|==|[=<>+\-*/%(),])
  )""", re.X)

Node = tuple


@dataclass(frozen=True)
class Select:
    text: str      # as the user wrote it
    tree: Node

    @property
    def sql(self) -> str:
        return to_sql(self.tree)

    def columns(self) -> list[str]:
        return sorted(_columns(self.tree))

    def conjuncts(self) -> list[str]:
        """The top-level AND terms as SQL, in order (a funnel follows them one by one)."""
        parts = self.tree[1] if self.tree[0] == "and" else [self.tree]
        return [to_sql(part) for part in parts]


def evaluate(frame: Any, sql: str) -> Any:
    """The boolean value of ``sql`` per row of a polars DataFrame: NaN in a float column reads as
    NULL while it is evaluated, and a NULL result is False (the subset step's semantics)."""
    import polars as pl
    import polars.selectors as cs

    nulled = frame.with_columns(cs.float().fill_nan(None))
    return nulled.with_columns(pl.sql_expr(sql).fill_null(False).alias("__curate_mask"))["__curate_mask"]


def parse_select(text: str) -> Select:
    if not isinstance(text, str) or not text.strip():
        raise RecipeError("select must be a non-empty boolean expression, e.g. \"basic_keep AND score_keep\"")
    parser = _Parser(text)
    tree = parser.expression()
    if parser.peek() is not None:
        parser.fail(f"unexpected {parser.peek()[1]!r}")
    return Select(text, tree)


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, self.at = text, _tokens(text), 0

    def fail(self, why: str):
        raise RecipeError(f"select {self.text!r} is not an allowed expression: {why} (see curate.selection: "
                          f"columns, literals, comparisons, AND/OR/NOT, IS NULL, IN, BETWEEN, LIKE, "
                          f"arithmetic and {', '.join(FUNCTIONS)})")

    def peek(self, offset: int = 0) -> tuple[str, Any] | None:
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def word(self, *words: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token is not None and token[0] == "name" and token[1].lower() in words

    def symbol(self, *symbols: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "op" and token[1] in symbols

    def take(self) -> tuple[str, Any]:
        token = self.peek()
        if token is None:
            self.fail("it ends too early")
        self.at += 1
        return token

    def expect(self, symbol: str) -> None:
        if not self.symbol(symbol):
            self.fail(f"expected {symbol!r}" + (f", got {self.peek()[1]!r}" if self.peek() else " at the end"))
        self.at += 1

    def expression(self) -> Node:
        terms = [self.conjunction()]
        while self.word("or"):
            self.at += 1
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def conjunction(self) -> Node:
        terms = [self.negation()]
        while self.word("and"):
            self.at += 1
            terms.append(self.negation())
        return terms[0] if len(terms) == 1 else ("and", terms)

    def negation(self) -> Node:
        if self.word("not"):
            self.at += 1
            return ("not", self.negation())
        return self.predicate()

    def predicate(self) -> Node:
        left = self.sum()
        if self.symbol(*COMPARISONS):
            op = self.take()[1]
            return ("cmp", "=" if op == "==" else "!=" if op == "<>" else op, left, self.sum())
        if self.word("is"):
            self.at += 1
            negated = self.word("not")
            self.at += negated
            if not self.word("null"):
                self.fail("IS must be followed by [NOT] NULL")
            self.at += 1
            return ("isnull", left, negated)
        negated = self.word("not") and self.word("in", "between", "like", offset=1)
        self.at += negated
        if self.word("in"):
            self.at += 1
            return ("in", left, self.arguments(), negated)
        if self.word("between"):
            self.at += 1
            low = self.sum()
            if not self.word("and"):
                self.fail("BETWEEN needs AND")
            self.at += 1
            return ("between", left, low, self.sum(), negated)
        if self.word("like"):
            self.at += 1
            pattern = self.take()
            if pattern[0] != "string":
                self.fail("LIKE needs a quoted pattern")
            return ("like", left, ("lit", pattern[1]), negated)
        if negated:
            self.fail("NOT here must be followed by IN, BETWEEN or LIKE")
        return left

    def sum(self) -> Node:
        node = self.term()
        while self.symbol("+", "-"):
            node = ("arith", self.take()[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.symbol("*", "/", "%"):
            node = ("arith", self.take()[1], node, self.unary())
        return node

    def unary(self) -> Node:
        if self.symbol("-"):
            self.at += 1
            return ("neg", self.unary())
        return self.atom()

    def arguments(self) -> list[Node]:
        self.expect("(")
        values = [self.sum()]
        while self.symbol(","):
            self.at += 1
            values.append(self.sum())
        self.expect(")")
        return values

    def atom(self) -> Node:
        kind, value = self.take()
        if kind in ("number", "string"):
            return ("lit", value)
        if kind == "op" and value == "(":
            node = self.expression()
            self.expect(")")
            return node
        if kind != "name":
            self.fail(f"unexpected {value!r}")
        lowered = value.lower()
        if lowered in ("true", "false", "null"):
            return ("lit", {"true": True, "false": False, "null": None}[lowered])
        if self.symbol("("):
            if lowered not in FUNCTIONS:
                self.fail(f"{value}() is not an allowed function")
            return ("func", lowered, self.arguments())
        if lowered in KEYWORDS or lowered == "select":
            self.fail(f"{value!r} cannot stand here")
        return ("col", value)


def _tokens(text: str) -> list[tuple[str, Any]]:
    tokens, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = TOKEN.match(text, at)
        if match is None or match.end() == at:
            raise RecipeError(f"select {text!r} is not an allowed expression: cannot read {text[at:].strip()[:20]!r} "
                              f"(plain column names, numbers, 'strings' and operators only)")
        kind = match.lastgroup
        raw = match.group(kind)
        if kind == "number":
            value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "string":
            value = raw[1:-1].replace("''", "'")
        else:
            value = raw
        tokens.append((kind, value))
        at = match.end()
    return tokens


def to_sql(node: Node) -> str:
    kind = node[0]
    if kind in ("or", "and"):
        return "(" + f" {kind.upper()} ".join(to_sql(part) for part in node[1]) + ")"
    if kind == "not":
        return f"(NOT {to_sql(node[1])})"
    if kind == "cmp":
        return f"({to_sql(node[2])} {node[1]} {to_sql(node[3])})"
    if kind == "isnull":
        return f"({to_sql(node[1])} IS {'NOT ' if node[2] else ''}NULL)"
    if kind == "in":
        return f"({to_sql(node[1])} {'NOT ' if node[3] else ''}IN ({', '.join(to_sql(v) for v in node[2])}))"
    if kind == "between":
        return f"({to_sql(node[1])} {'NOT ' if node[4] else ''}BETWEEN {to_sql(node[2])} AND {to_sql(node[3])})"
    if kind == "like":
        return f"({to_sql(node[1])} {'NOT ' if node[3] else ''}LIKE {to_sql(node[2])})"
    if kind == "arith":
        return f"({to_sql(node[2])} {node[1]} {to_sql(node[3])})"
    if kind == "neg":
        return f"(-{to_sql(node[1])})"
    if kind == "func":
        return f"{node[1].upper()}({', '.join(to_sql(v) for v in node[2])})"
    if kind == "col":
        return node[1]
    return _literal(node[1])


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _columns(node: Node) -> set[str]:
    if node[0] == "col":
        return {node[1]}
    if node[0] == "lit":
        return set()
    found: set[str] = set()
    for part in node[1:]:
        for child in part if isinstance(part, list) else [part]:
            if isinstance(child, tuple):
                found |= _columns(child)
    return found
