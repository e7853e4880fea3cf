"""Reader and writer for `.cla` class files (Princeton Shape Benchmark / SHREC format).

Format::

    PSB 1
    <num classes> <num items>

    <class name> <parent class> <count>
    <id>
    ...

Every inconsistency raises `ClaError` naming `path:line`, so a user can fix the file by hand.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from sb3dr_jax.data.errors import ClaError


@dataclasses.dataclass(frozen=True)
class ClaClass:
    """One class of a `.cla` file."""

    name: str
    parent: str
    ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Cla:
    """A parsed `.cla` file: classes in file order."""

    classes: tuple[ClaClass, ...]

    def class_names(self) -> list[str]:
        """Returns the class names in file order."""
        return [c.name for c in self.classes]

    def id_to_class(self) -> dict[str, str]:
        """Returns a map from item id to class name."""
        return {i: c.name for c in self.classes for i in c.ids}

    def num_items(self) -> int:
        """Returns the total number of item ids."""
        return sum(len(c.ids) for c in self.classes)


def _int(token: str, path: str, lineno: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise ClaError(f"{path}:{lineno}", f"{what} must be an integer, got {token!r}") from None
    if value < 0:
        raise ClaError(f"{path}:{lineno}", f"{what} must be non-negative, got {value}")
    return value


def read_cla(path: str | os.PathLike, *, problems: list[tuple[str, str]] | None = None) -> Cla:
    """Reads a `.cla` file.

    The ids of a class are the one-token lines after its `<class> <parent> <count>` header, so
    a wrong count never shifts the rest of the file. Strict by default; with `problems` given,
    every recoverable inconsistency is recorded there and reading goes on: a count that
    disagrees with the ids that follow (they are kept), a class listed twice (its ids are
    merged into the first listing), an id listed twice (the first listing is kept), a header
    line that is not a class header (skipped with its ids), wrong totals in line 2.

    Args:
      path: the file.
      problems: when given, collects `(path:line, reason)` for each recoverable problem
        instead of raising.

    Returns:
      The parsed classes, in file order.

    Raises:
      ClaError: unreadable file or missing header lines; without `problems`, also any
        inconsistency (a count that does not match its ids, duplicate ids or classes, wrong
        totals). The message names `path:line`.
    """
    path = os.fspath(path)
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise ClaError(path, f"cannot read: {e}") from None
    # Keep original line numbers: (lineno, stripped text) of non-blank lines.
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines or lines[0][1].split()[:1] != ["PSB"]:
        where = f"{path}:{lines[0][0]}" if lines else path
        raise ClaError(where, "missing 'PSB 1' header")
    if len(lines) < 2:
        raise ClaError(path, "missing '<num classes> <num items>' line")
    n_line, counts = lines[1]
    parts = counts.split()
    if len(parts) != 2:
        raise ClaError(f"{path}:{n_line}", f"expected '<num classes> <num items>', got {counts!r}")
    num_classes = _int(parts[0], path, n_line, "number of classes")
    num_items = _int(parts[1], path, n_line, "number of items")

    def problem(lineno: int, reason: str, recovery: str = "") -> None:
        if problems is None:
            raise ClaError(f"{path}:{lineno}", reason)
        problems.append((f"{path}:{lineno}", f"{reason}; {recovery}" if recovery else reason))

    ids_of: dict[str, list[str]] = {}  # class -> ids, in first-listing order
    parent_of: dict[str, str] = {}
    header_line: dict[str, int] = {}
    seen_ids: dict[str, str] = {}
    i = 2
    while i < len(lines):
        lineno, header = lines[i]
        j = i + 1
        while j < len(lines) and len(lines[j][1].split()) == 1:
            j += 1
        ids = lines[i + 1 : j]  # the one-token lines that follow
        i = j
        parts = header.split()
        if len(parts) != 3:
            problem(lineno, f"expected '<class> <parent> <count>', got {header!r}", "skipped")
            continue
        name, parent, count_tok = parts
        try:
            count = _int(count_tok, path, lineno, f"count of class {name!r}")
        except ClaError as e:
            if problems is None:
                raise
            problems.append((e.path, f"{e.reason}; its {len(ids)} ids kept"))
            count = len(ids)
        if len(ids) != count:
            found = (
                f"more follow (line {ids[count][0]})" if len(ids) > count else f"{len(ids)} follow"
            )
            problem(
                lineno,
                f"class {name!r} declares {count} ids but {found}",
                f"the {len(ids)} that follow kept",
            )
        if name in ids_of:
            problem(
                lineno,
                f"class {name!r} appears twice (first at line {header_line[name]})",
                "its ids merged into the first listing",
            )
        else:
            ids_of[name], parent_of[name], header_line[name] = [], parent, lineno
        for n, item in ids:
            if item in seen_ids:
                problem(n, f"id {item!r} already listed in class {seen_ids[item]!r}", "skipped")
                continue
            seen_ids[item] = name
            ids_of[name].append(item)
    classes = [ClaClass(c, parent_of[c], tuple(ids)) for c, ids in ids_of.items()]
    if len(classes) != num_classes:
        problem(n_line, f"header declares {num_classes} classes, file has {len(classes)}")
    total = sum(len(c.ids) for c in classes)
    if total != num_items:
        problem(n_line, f"header declares {num_items} items, file has {total}")
    return Cla(tuple(classes))


def write_cla(path: str | os.PathLike, cla: Cla) -> None:
    """Writes a `.cla` file that `read_cla` reads back unchanged.

    Args:
      path: the destination file (parent folders are created).
      cla: the classes to write.
    """
    out = [f"PSB 1\n{len(cla.classes)} {cla.num_items()}\n"]
    for c in cla.classes:
        out.append(f"\n{c.name} {c.parent} {len(c.ids)}\n")
        out.extend(f"{i}\n" for i in c.ids)
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(out), encoding="utf-8")
