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


def read_cla(path: str | os.PathLike) -> Cla:
    """Reads a `.cla` file.

    Args:
      path: the file.

    Returns:
      The parsed classes, in file order.

    Raises:
      ClaError: unreadable file, bad header, a count that does not match its ids, duplicate
        ids or classes; the message names `path:line`.
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

    classes: list[ClaClass] = []
    seen_ids: dict[str, str] = {}
    i = 2
    while i < len(lines):
        lineno, header = lines[i]
        parts = header.split()
        if len(parts) != 3:
            raise ClaError(
                f"{path}:{lineno}", f"expected '<class> <parent> <count>', got {header!r}"
            )
        name, parent, count_tok = parts
        count = _int(count_tok, path, lineno, f"count of class {name!r}")
        ids = lines[i + 1 : i + 1 + count]
        # A count larger than the ids that follow runs into the next class header.
        bad = [(n, t) for n, t in ids if len(t.split()) != 1]
        if len(ids) < count or bad:
            found = len(ids) if not bad else ids.index(bad[0])
            raise ClaError(
                f"{path}:{lineno}",
                f"class {name!r} declares {count} ids but {found} follow",
            )
        if any(c.name == name for c in classes):
            raise ClaError(f"{path}:{lineno}", f"class {name!r} appears twice")
        for n, item in ids:
            if item in seen_ids:
                raise ClaError(
                    f"{path}:{n}", f"id {item!r} already listed in class {seen_ids[item]!r}"
                )
            seen_ids[item] = name
        classes.append(ClaClass(name, parent, tuple(t for _, t in ids)))
        i += 1 + count
        # Ids beyond the count: the next line is a single token, not a class header.
        if i < len(lines) and len(lines[i][1].split()) == 1:
            raise ClaError(
                f"{path}:{lineno}",
                f"class {name!r} declares {count} ids but more follow (line {lines[i][0]})",
            )
    if len(classes) != num_classes:
        raise ClaError(
            f"{path}:{n_line}", f"header declares {num_classes} classes, file has {len(classes)}"
        )
    total = sum(len(c.ids) for c in classes)
    if total != num_items:
        raise ClaError(f"{path}:{n_line}", f"header declares {num_items} items, file has {total}")
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
