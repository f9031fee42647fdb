#!/usr/bin/env bash
# No import cycles between the modules of a crate (issue #13): for each crate's src/ tree, builds
# the module graph (a file is a module, a directory's mod.rs is that directory's module; inline
# `mod x { }` blocks belong to their file) from its `use crate::…`, `use super::…`, `use self::…`,
# `use <submodule>::…` statements and `crate::…`/`super::…` paths in code, and fails on a cycle.
# Edges into the crate root (lib.rs/main.rs: `mod` declarations and re-exports) are not followed.
#
#   scripts/module-cycles.sh [ROOT]     # ROOT defaults to the workspace; prints each crate's cycles
set -euo pipefail
ROOT=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
CRATES=(planner azure controller bench tests)
# Reported, not (yet) enforced: the simulator's server/state modules still form one cycle.
REPORT_ONLY=(simulator)

python3 - "$ROOT" "${REPORT_ONLY[*]}" "${CRATES[@]}" "${REPORT_ONLY[@]}" <<'PY'
import os, re, sys

root, report_only, crates = sys.argv[1], set(sys.argv[2].split()), sys.argv[3:]

def strip_code(text):
    """Drops comments, string and char literals (keeps line structure)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i): depth, i = depth + 1, i + 2
                elif text.startswith("*/", i): depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n": out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or c == "'" and re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:i + 12]):
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)

def expand(tree):
    """'a::{b, c::{d, e}}' -> ['a::b', 'a::c::d', 'a::c::e']"""
    tree = re.sub(r"\s+", "", tree)
    def parse(s, i):
        # returns (list of paths, index)
        prefix = ""
        while i < len(s) and s[i] not in "{},":
            prefix += s[i]; i += 1
        if i < len(s) and s[i] == "{":
            i += 1
            items = []
            while True:
                sub, i = parse(s, i)
                items += [prefix + x for x in sub]
                if i < len(s) and s[i] == ",":
                    i += 1
                    if i < len(s) and s[i] == "}": i += 1; break
                    continue
                i += 1  # '}'
                break
            return items or [prefix], i
        return [prefix], i
    paths, _ = parse(tree, 0)
    return [re.sub(r"\bas\w+$", "", p) for p in paths if p]

def crate_graph(src):
    mods = {}  # module path tuple -> file
    for d, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"): continue
            rel = os.path.relpath(os.path.join(d, f), src)[:-3].split(os.sep)
            if rel in (["lib"], ["main"]): key = ()
            elif rel[-1] == "mod": key = tuple(rel[:-1])
            else: key = tuple(rel)
            if len(rel) == 1 and rel[0] == "main" and os.path.exists(os.path.join(src, "lib.rs")):
                continue  # a bin target beside the lib: a separate crate that uses the lib by name
            if rel[0] == "bin": continue
            mods.setdefault(key, os.path.join(d, f))
    edges = {m: set() for m in mods}

    def resolve(base, segs):
        """The longest known module named by base + segs (None: the root or unknown)."""
        cur, best = list(base), None
        for s in segs:
            if s == "super":
                cur = cur[:-1]; continue
            if s == "self": continue
            cur.append(s)
            if tuple(cur) in mods: best = tuple(cur)
            else: break
        return best

    for mod, path in mods.items():
        text = strip_code(open(path, encoding="utf-8").read())
        # Inline `mod x { ... }` blocks: `super::` inside one names the file's module.
        inline = []  # (start, end) offsets of inline module bodies
        for m in re.finditer(r"\bmod\s+\w+\s*\{", text):
            depth, j = 1, m.end()
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0); j += 1
            inline.append((m.end(), j))
        def base_at(pos):
            depth = sum(1 for a, b in inline if a <= pos < b)
            return list(mod) + ["<inline>"] * depth
        found = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            for p in expand(m.group(1)):
                segs = [s for s in p.split("::") if s]
                if not segs: continue
                base = base_at(m.start())
                if segs[0] == "crate": found.append(([], segs[1:]))
                elif segs[0] in ("super", "self"): found.append((base, segs))
                elif tuple(mod) + (segs[0],) in mods: found.append((list(mod), segs))
        for m in re.finditer(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", text):
            segs = m.group(1).split("::")
            base = base_at(m.start())
            if segs[0] == "crate": found.append(([], segs[1:]))
            else: found.append((base, segs))
        for base, segs in found:
            base = [b for b in base]
            # resolve `super` through inline levels
            while segs and segs[0] == "super" and base and base[-1] == "<inline>":
                base, segs = base[:-1], segs[1:]
            base = [b for b in base if b != "<inline>"]
            t = resolve(base, segs)
            if t is not None and t != () and t != mod:
                edges[mod].add(t)
    return mods, edges

def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def strong(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in sorted(edges[v]):
            if w not in index: strong(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index: strong(v)
    return out

def name(m): return "::".join(m) or "crate"

total = 0
for c in crates:
    src = os.path.join(root, c, "src")
    if not os.path.isdir(src): continue
    mods, edges = crate_graph(src)
    found = cycles(edges)
    n_edges = sum(len(e) for e in edges.values())
    note = " (reported only, not enforced)" if c in report_only and found else ""
    print("%-11s %3d modules, %3d edges, %d cycle(s)%s" % (c, len(mods), n_edges, len(found), note))
    for comp in found:
        total += c not in report_only
        members = set(comp)
        print("  cycle: " + " <-> ".join(name(m) for m in comp))
        for m in comp:
            for t in sorted(edges[m] & members):
                print("    %s -> %s" % (name(m), name(t)))
if total:
    print("%d module cycle(s): move the shared items to a lower module" % total)
    sys.exit(1)
print("no module cycles")
PY
