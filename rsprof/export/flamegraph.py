"""A self-contained interactive SVG flame graph of a `StackSet`.

Stacks are merged root first into a tree of logical frames (function names,
inlined frames expanded); a node's width is its inclusive value. The root
("all") sits at the bottom and fills the width. Every node is one `<g>` with a
`<title>` (function, value, percent of the total: the hover text) and a nested
`<svg>` viewport holding its `<rect>` and `<text>`, so the label is clipped to
the box. Nodes narrower than 0.1 % of the total are left out.

The inline script adds: a status line naming the frame under the pointer,
click to zoom into a frame (its subtree fills the width, its callers are
drawn faded across it) with a "Reset zoom" control, and a search (click
"Search", or Ctrl-F) that highlights the frames matching a regular
expression and shows the share of the total they cover. Escape resets both.

Each frame's `data-s` (its start, in value units from the left edge of the
root), `data-v` (its value) and `data-d` (its depth, the root is 0) carry the
exact layout, for the script and for tools reading the file.

All text is escaped for XML and written as ASCII (other characters as
character references), so the file is valid whatever encoding `out` has.
"""

from __future__ import annotations

import colorsys
import hashlib
import re
from dataclasses import dataclass, field
from typing import TextIO

from rsprof.export.stacks import HEAP, StackSet

WIDTH = 1200            # of the image, in px
PAD_X = 10              # left and right margins
FRAME_H = 16            # one level of the graph
BOX_H = 15              # a frame's box (1 px gap above)
HEAD_H = 58             # title, subtitle and controls above the graph
FOOT_H = 26             # status line below it
FONT_PX = 11
CHAR_PX = 6.7           # estimated width of a character of the frame labels
MIN_SHARE = 0.001       # nodes narrower than this share of the total are left out
NO_STACK = "[no stack]"

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(slots=True)
class _Node:
    name: str
    value: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Placed:
    node: _Node
    start: int  # in value units from the root's left edge
    depth: int


def _xml(text: str, attribute: bool = False) -> str:
    """`text` as XML character data (or an attribute value), ASCII only."""
    text = _XML_INVALID.sub("\ufffd", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        text = text.replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")
    return text.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _tree(sset: StackSet, value_index: int) -> _Node:
    root = _Node("all")
    for ws in sset.stacks:
        value = ws.values[value_index]
        if value <= 0:
            continue
        names = [f.function for f in sset.frames_root_first(ws)] or [NO_STACK]
        root.value += value
        node = root
        for name in names:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node(name)
            child.value += value
            node = child
    return root


def _place(root: _Node) -> list[_Placed]:
    """The nodes wide enough to draw, parents before children, siblings by name."""
    out: list[_Placed] = []
    todo = [_Placed(root, 0, 0)]
    while todo:
        placed = todo.pop()
        out.append(placed)
        start = placed.start
        kids: list[_Placed] = []
        for name in sorted(placed.node.children):
            child = placed.node.children[name]
            if child.value >= root.value * MIN_SHARE:
                kids.append(_Placed(child, start, placed.depth + 1))
            start += child.value
        todo.extend(reversed(kids))
    return out


def _value_text(value: int, vtype: str, unit: str) -> str:
    """A value with its unit, e.g. `498 samples`, `409,600 bytes, 400.0 KiB`.
    Never contains " (" (the script finds the function name before the last one)."""
    if unit == "bytes":
        text = f"{value:,} bytes"
        if value >= 1024:
            size, suffix = value / 1024, "KiB"
            for bigger in ("MiB", "GiB", "TiB"):
                if size < 1024:
                    break
                size, suffix = size / 1024, bigger
            text += f", {size:.1f} {suffix}"
        return text
    if unit == "nanoseconds":
        text = f"{value:,} ns"
        if value >= 1_000_000_000:
            text += f", {value / 1e9:.3f} s"
        elif value >= 1_000:
            text += f", {value / 1e6:.3f} ms"
        return text
    noun = {"samples": "samples", "alloc_objects": "allocations",
            "inuse_objects": "live objects"}.get(vtype, "count" if unit == "count" else unit)
    if value == 1 and noun.endswith("s"):
        noun = noun[:-1]
    return f"{value:,} {noun}"


def _percent(value: int, total: int) -> str:
    return f"{100.0 * value / total:.2f}%"


def _colour(name: str, heap: bool) -> str:
    """A colour from a hash of the function name: warm for CPU, green to blue for heap."""
    if name == "all":
        return "rgb(200,200,200)"
    h = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=6).digest()
    a, b, c = h[0] / 255, h[1] / 255, h[2] / 255
    if heap:
        hue, light, sat = (95 + 115 * a) / 360, 0.55 + 0.15 * b, 0.45 + 0.3 * c
    else:
        hue, light, sat = (2 + 50 * a) / 360, 0.52 + 0.14 * b, 0.75 + 0.2 * c
    r, g, bl = colorsys.hls_to_rgb(hue, light, sat)
    return f"rgb({round(r * 255)},{round(g * 255)},{round(bl * 255)})"


def _label(name: str, width: float) -> str:
    """As much of `name` as fits in a box `width` px wide (the script does the same)."""
    fits = int((width - 6) // CHAR_PX)
    if fits >= len(name):
        return name
    return name[:fits - 2] + ".." if fits >= 3 else ""


def _subtitle(sset: StackSet, value_index: int, total: int) -> str:
    vtype, unit = sset.value_types[value_index]
    in_all = f"{_value_text(total, vtype, unit)} in all"
    parts = [in_all if vtype == "samples" else f"{vtype}: {in_all}"]
    summary = sset.summary
    if summary.process_name:
        parts.append(f"{summary.process_name} (pid {summary.pid})")
    if summary.duration_s:
        parts.append(f"{summary.duration_s:.1f} s recorded")
    described = sset.selection.describe()
    if described:
        parts.append(described)
    return "; ".join(parts)


def _header(out: TextIO, height: int, title: str) -> None:
    out.write('<?xml version="1.0" standalone="no"?>\n')
    out.write(f'<svg version="1.1" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
              f'height="{height}" viewBox="0 0 {WIDTH} {height}">\n')
    out.write(f"<title>{_xml(title)}</title>\n")
    out.write(f"<style><![CDATA[{_STYLE}]]></style>\n")
    out.write(f'<rect class="bg" x="0" y="0" width="{WIDTH}" height="{height}"/>\n')
    out.write(f'<text id="title" x="{WIDTH / 2}" y="22" text-anchor="middle">'
              f"{_xml(title)}</text>\n")


def write_flamegraph(sset: StackSet, out: TextIO, value_index: int, title: str) -> None:
    """Write `sset` weighed by `sset.value_types[value_index]` as an interactive SVG."""
    vtype, unit = sset.value_types[value_index]
    root = _tree(sset, value_index)
    total = root.value
    if total <= 0:
        height = HEAD_H + 60
        _header(out, height, title)
        out.write(f'<text id="empty" x="{WIDTH / 2}" y="{HEAD_H + 20}" text-anchor="middle">'
                  f"no samples ({_xml(vtype)})</text>\n</svg>\n")
        return
    placed = _place(root)
    depth = max(p.depth for p in placed)
    graph_h = (depth + 1) * FRAME_H
    height = HEAD_H + graph_h + FOOT_H
    base = HEAD_H + graph_h  # the bottom of the root's level
    span = WIDTH - 2 * PAD_X
    _header(out, height, title)
    out.write(f'<text id="subtitle" x="{WIDTH / 2}" y="40" text-anchor="middle">'
              f"{_xml(_subtitle(sset, value_index, total))}</text>\n")
    out.write(f'<text id="reset-zoom" class="btn hidden" x="{PAD_X}" y="{HEAD_H - 8}">'
              "Reset zoom</text>\n")
    out.write(f'<text id="search" class="btn" x="{WIDTH - PAD_X}" y="{HEAD_H - 8}" '
              'text-anchor="end">Search</text>\n')
    out.write(f'<g id="frames" data-total="{total}" data-x0="{PAD_X}" data-w="{span}" '
              f'data-cw="{CHAR_PX}" data-unit="{_xml(unit, True)}">\n')
    heap = sset.kind == HEAP
    for p in placed:
        node = p.node
        x = PAD_X + span * p.start / total
        w = span * node.value / total
        y = base - (p.depth + 1) * FRAME_H + (FRAME_H - BOX_H)
        hover = f"{node.name} ({_value_text(node.value, vtype, unit)}, " \
                f"{_percent(node.value, total)})"
        out.write(f'<g class="f" data-s="{p.start}" data-v="{node.value}" data-d="{p.depth}">'
                  f"<title>{_xml(hover)}</title>"
                  f'<svg x="{x:.2f}" y="{y}" width="{w:.2f}" height="{BOX_H}">'
                  f'<rect width="100%" height="100%" rx="2" fill="{_colour(node.name, heap)}"/>'
                  f'<text x="3" y="{BOX_H - 4}">{_xml(_label(node.name, w))}</text>'
                  "</svg></g>\n")
    out.write("</g>\n")
    out.write(f'<text id="status" x="{PAD_X}" y="{height - 9}">'
              "Hover a frame for details; click to zoom</text>\n")
    out.write(f'<text id="matched" x="{WIDTH - PAD_X}" y="{height - 9}" '
              'text-anchor="end"></text>\n')
    out.write(f"<script type=\"text/ecmascript\"><![CDATA[{_SCRIPT}]]></script>\n</svg>\n")


_STYLE = """
text { font-family: Verdana, Arial, sans-serif; font-size: 12px; fill: #000; }
#title { font-size: 17px; }
#subtitle, #status, #matched { fill: #333; }
rect.bg { fill: #fafafa; }
g.f text { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 11px;
  pointer-events: none; }
g.f { cursor: pointer; }
g.f:hover rect { stroke: #000; stroke-width: 1px; }
g.f.anc { opacity: 0.55; }
g.f.hidden, .btn.hidden { display: none; }
g.f.hit rect { fill: rgb(224, 64, 251); }
.btn { cursor: pointer; fill: #1a4f9c; text-decoration: underline; }
"""

# Kept free of "]]>" (it sits in a CDATA section).
_SCRIPT = """
(function () {
  "use strict";
  var frames = document.getElementById("frames");
  var total = Number(frames.getAttribute("data-total"));
  var x0 = Number(frames.getAttribute("data-x0"));
  var span = Number(frames.getAttribute("data-w"));
  var charW = Number(frames.getAttribute("data-cw"));
  var status = document.getElementById("status");
  var idle = status.textContent;
  var resetBtn = document.getElementById("reset-zoom");
  var searchBtn = document.getElementById("search");
  var matched = document.getElementById("matched");
  var nodes = [];
  var root = null;
  var groups = frames.getElementsByTagName("g");
  for (var i = 0; i < groups.length; i++) {
    var g = groups[i];
    var hover = g.getElementsByTagName("title")[0].textContent;
    var node = {
      g: g, hover: hover, name: hover.slice(0, hover.lastIndexOf(" (")),
      box: g.getElementsByTagName("svg")[0], label: g.getElementsByTagName("text")[0],
      start: Number(g.getAttribute("data-s")), value: Number(g.getAttribute("data-v")),
      depth: Number(g.getAttribute("data-d"))
    };
    g.rsprofNode = node;
    nodes.push(node);
    if (node.depth === 0) { root = node; }
  }

  function nodeOf(target) {
    while (target && target !== frames) {
      if (target.rsprofNode) { return target.rsprofNode; }
      target = target.parentNode;
    }
    return null;
  }

  function fit(node, width) {
    var n = Math.floor((width - 6) / charW);
    var name = node.name;
    node.label.textContent = n >= name.length ? name : (n >= 3 ? name.slice(0, n - 2) + ".." : "");
  }

  function place(node, x, width, cls) {
    node.g.classList.remove("hidden", "anc");
    if (cls) { node.g.classList.add(cls); }
    node.box.setAttribute("x", x.toFixed(2));
    node.box.setAttribute("width", width.toFixed(2));
    fit(node, width);
  }

  function zoom(target) {
    var lo = target.start, hi = target.start + target.value, scale = span / target.value;
    nodes.forEach(function (n) {
      var end = n.start + n.value;
      if (n.depth >= target.depth && n.start >= lo && end <= hi) {
        var width = n.value * scale;
        if (width < 0.3) { n.g.classList.add("hidden"); } else {
          place(n, x0 + (n.start - lo) * scale, width, null);
        }
      } else if (n.depth < target.depth && n.start <= lo && end >= hi) {
        place(n, x0, span, "anc");
      } else {
        n.g.classList.add("hidden");
      }
    });
    if (target === root) { resetBtn.classList.add("hidden"); }
    else { resetBtn.classList.remove("hidden"); }
  }

  function share(value) { return (100 * value / total).toFixed(2) + "%"; }

  function search(term) {
    var re = null;
    try { re = new RegExp(term); } catch (e) { re = null; }
    var spans = [];
    nodes.forEach(function (n) {
      var hit = re ? re.test(n.name) : n.name.indexOf(term) >= 0;
      if (hit) { n.g.classList.add("hit"); spans.push([n.start, n.start + n.value]); }
      else { n.g.classList.remove("hit"); }
    });
    // A match inside another covers no more: add up the union of the spans.
    spans.sort(function (a, b) { return a[0] - b[0]; });
    var covered = 0, end = -1;
    spans.forEach(function (s) {
      if (s[0] >= end) { covered += s[1] - s[0]; end = s[1]; }
      else if (s[1] > end) { covered += s[1] - end; end = s[1]; }
    });
    matched.textContent = "Matched " + JSON.stringify(term) + ": " + share(covered) +
      " (" + spans.length + (spans.length === 1 ? " frame)" : " frames)");
    searchBtn.textContent = "Reset search";
  }

  function clearSearch() {
    nodes.forEach(function (n) { n.g.classList.remove("hit"); });
    matched.textContent = "";
    searchBtn.textContent = "Search";
  }

  function askSearch() {
    var term = window.prompt("Search for functions matching (regular expression):", "");
    if (term) { search(term); }
  }

  frames.addEventListener("mouseover", function (e) {
    var n = nodeOf(e.target);
    if (n) { status.textContent = n.hover; }
  });
  frames.addEventListener("mouseout", function () { status.textContent = idle; });
  frames.addEventListener("click", function (e) {
    var n = nodeOf(e.target);
    if (n) { zoom(n); }
  });
  resetBtn.addEventListener("click", function () { zoom(root); });
  searchBtn.addEventListener("click", function () {
    if (matched.textContent) { clearSearch(); } else { askSearch(); }
  });
  document.addEventListener("keydown", function (e) {
    if ((e.ctrlKey || e.metaKey) && (e.key === "f" || e.key === "F")) {
      e.preventDefault();
      askSearch();
    } else if (e.key === "Escape") {
      zoom(root);
      clearSearch();
    }
  });
})();
"""
