#!/usr/bin/env python3
"""Fails when files of one crate import each other in a circle.

For each crate under crates/, every `.rs` file under src/ is a module (`lib.rs` and
`main.rs` are the crate root, `foo/mod.rs` is `foo`). A module depends on another when
it names it through `crate::a::b`, `super::b` or a `use` of either (the longest module
path that exists). Test modules (`tests.rs`, `*_tests.rs`, `tests/`, and everything after a
`#[cfg(test)]` line) are left out: tests may reach anywhere. Dependencies on the crate root
are left out too, since the root declares every module. Prints each cycle, exits 1 if any.

    scripts/module_cycles.py [crates/...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super)::\{([^;]*)\};", re.S)


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def is_test(mod: tuple[str, ...]) -> bool:
    return any(p == "tests" or p.endswith("_tests") for p in mod)


def code_of(file: Path) -> str:
    text = file.read_text()
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    return re.sub(r"//[^\n]*", "", text)


def resolve(mods: set[tuple[str, ...]], base: tuple[str, ...], names: list[str]) -> tuple[str, ...] | None:
    """The longest existing module named by `base` + a prefix of `names`."""
    best = None
    for i in range(len(names) + 1):
        cand = base + tuple(names[:i])
        if cand in mods:
            best = cand
    return best


def edges(src: Path) -> dict[tuple[str, ...], set[tuple[str, ...]]]:
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    mods = set(files)
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for mod, file in files.items():
        if is_test(mod):
            continue
        code = code_of(file)
        parent = mod[:-1] if file.name != "mod.rs" else mod[:-1]
        refs: list[tuple[str, list[str]]] = []
        for m in PATH.finditer(code):
            refs.append((m.group(1), m.group(2).strip(":").split("::")))
        for m in USE_GROUP.finditer(code):
            for item in re.split(r",", m.group(2)):
                item = item.strip().split(" as ")[0].strip()
                if re.fullmatch(r"[a-z_][a-z0-9_]*(::[a-z_][a-z0-9_]*)*(::\{.*)?", item.split("::{")[0] or "x"):
                    refs.append((m.group(1), item.split("::{")[0].split("::")))
        deps = set()
        for kind, names in refs:
            base = () if kind == "crate" else parent
            target = resolve(mods, base, names)
            if target and target != mod and target != () and not is_test(target):
                deps.add(target)
        graph[mod] = deps
    return graph


def cycles(graph: dict) -> list[list]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    roots = [Path(a) for a in sys.argv[1:]] or sorted(Path("crates").glob("*"))
    found = 0
    for crate in roots:
        src = crate / "src"
        if not src.is_dir():
            continue
        for comp in cycles(edges(src)):
            found += 1
            names = ", ".join("::".join(m) for m in comp)
            print(f"{crate.name}: modules import each other in a circle: {names}")
    if found:
        print(f"{found} cycle(s); give the shared items a module of their own lower down")
        return 1
    print("no import cycles between modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
