#!/usr/bin/env python3
"""Checks that no crate of the workspace has a circle in its module import graph.

An edge A -> B means that module A names an item of module B (in a `use`, or as a
path such as `super::x::f()` or `crate::x::Y`), B being neither A nor a module inside
A. A parent that declares a child (`mod x;`) does not depend on it by that alone; it
does when it uses the child's items. Test-only modules (`#[cfg(test)] mod x;` and
inline `mod tests { ... }` blocks) are left out: they may see everything.

Rust's own checks cannot see such circles (a crate compiles as one unit), but they
make layers meaningless: the rule is that a lower module never reaches up.

usage: check-module-cycles.py [CRATE_SRC_DIR ...]   (default: every src/ of the
workspace). Exits 1 and prints each circle found; prints a summary line otherwise.
"""

import os
import re
import sys

CFG_TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")
MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
INLINE_TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{")
PATH = re.compile(r"\b(crate|super|self)((?:::\w+)+|::\{)")


def strip_comments_and_strings(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def strip_inline_tests(text):
    m = INLINE_TESTS.search(text)
    while m:
        depth, i = 0, m.end() - 1
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        text = text[: m.start()] + text[i + 1 :]
        m = INLINE_TESTS.search(text)
    return text


def modules_of(src):
    """Maps module path tuples to their files, skipping test-only modules."""
    roots = [f for f in ("lib.rs", "main.rs") if os.path.exists(os.path.join(src, f))][:1]
    mods = {}

    def visit(path, file, dirpath):
        mods[path] = file
        text = strip_comments_and_strings(open(file, encoding="utf-8").read())
        test_only = set(CFG_TEST_MOD.findall(text))
        for name in MOD_DECL.findall(text):
            if name in test_only:
                continue
            for cand in (os.path.join(dirpath, name + ".rs"),
                         os.path.join(dirpath, name, "mod.rs")):
                if os.path.exists(cand):
                    sub = os.path.join(dirpath, name)
                    visit(path + (name,), cand, sub)
                    break

    for r in roots:
        visit((), os.path.join(src, r), src)
    return mods


def targets(path, text, mods):
    """Module paths that module `path` names."""
    out = set()
    children = {m[-1] for m in mods if len(m) == len(path) + 1 and m[: len(path)] == path}
    for m in PATH.finditer(text):
        head, rest = m.group(1), m.group(2)
        base = () if head == "crate" else (path[:-1] if head == "super" else path)
        if rest == "::{":
            # use super::{a, b::c, D}: each top-level item of the group.
            depth, i, start = 1, m.end(), m.end()
            items = []
            while i < len(text) and depth:
                c = text[i]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        items.append(text[start:i])
                elif c == "," and depth == 1:
                    items.append(text[start:i])
                    start = i + 1
                i += 1
            segs_list = [[s for s in re.split(r"::", it.strip()) if re.match(r"^\w+$", s)]
                         for it in items]
        else:
            segs_list = [rest.strip(":").split("::")]
        for segs in segs_list:
            if segs:
                resolve(base, segs, mods, out)
    # Paths through a child module without `self::` (e.g. `pod::run(...)`).
    for name in children:
        if re.search(r"(?<![\w:])" + name + r"::\w", text):
            out.add(path + (name,))
    return out


def resolve(base, segs, mods, out):
    cur = base
    for s in segs:
        if cur + (s,) in mods:
            cur = cur + (s,)
        else:
            break
    out.add(cur)


def cycles(graph):
    found, color, stack = [], {}, []

    def dfs(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if color.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif not color.get(v):
                dfs(v)
        stack.pop()
        color[u] = 2

    for u in sorted(graph):
        if not color.get(u):
            dfs(u)
    return found


def check(src):
    mods = modules_of(src)
    graph = {}
    for path, file in mods.items():
        text = strip_inline_tests(strip_comments_and_strings(open(file, encoding="utf-8").read()))
        deps = set()
        for t in targets(path, text, mods):
            inside = t[: len(path)] == path  # itself or one of its own modules
            if not inside:
                deps.add(t)
            elif t != path and len(t) > len(path):
                deps.add(t)
        graph[path] = deps
    return mods, cycles(graph)


def main(args):
    if not args:
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        args = []
        for dirpath, dirnames, _ in os.walk(top):
            dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "node_modules")]
            if os.path.basename(dirpath) == "src" and os.path.exists(
                    os.path.join(os.path.dirname(dirpath), "Cargo.toml")):
                args.append(dirpath)
    bad = 0
    total = 0
    for src in sorted(args):
        mods, found = check(src)
        total += len(mods)
        for c in found:
            bad += 1
            names = ["::".join(p) or "crate" for p in c]
            print(f"{os.path.relpath(src)}: module circle: {' -> '.join(names)}")
    if bad:
        print(f"module graph: {bad} circle(s) in {len(args)} crates", file=sys.stderr)
        return 1
    print(f"module graph: no circles in {total} modules of {len(args)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
