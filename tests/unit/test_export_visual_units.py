"""The SVG flame graph and speedscope exporters on small StackSets built by hand."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from rsprof.export.flamegraph import write_flamegraph
from rsprof.export.speedscope import write_speedscope
from rsprof.export.stacks import (
    CPU,
    CPU_VALUES,
    HEAP,
    HEAP_VALUES,
    FrameInfo,
    Location,
    StackSet,
    WeightedStack,
)
from rsprof.report.profile_summary import ProfileSummary
from rsprof.report.selection import Selection

SVG = "{http://www.w3.org/2000/svg}"
HOVER = re.compile(r"^(?P<name>.*) \((?P<value>[^()]*), (?P<percent>[0-9.]+)%\)$", re.S)
SPAN = 1180  # the width frames are laid out in (1200 px less two 10 px margins)

# A frame is a name, or (function, file, line); a stack lists frames root first.
Spec = str | tuple[str, str | None, int | None]


def _summary() -> ProfileSummary:
    return ProfileSummary(pid=42, process_name="app", cmdline="app --x", start_time=0.0,
                          end_time=3.0, duration_s=3.0, cpu_freq=100, cpu_source="perf",
                          end_reason="exited", counters={})


def make_set(kind: str, stacks: list[tuple[list[Spec], list[int], str]]) -> StackSet:
    """A StackSet of one Location per frame (the same frame: the same Location)."""
    values = CPU_VALUES if kind == CPU else HEAP_VALUES
    locations: dict[int, Location] = {}
    ids: dict[tuple[str, str | None, int | None], int] = {}
    out: list[WeightedStack] = []
    for frames, vals, thread in stacks:
        loc_ids = []
        for spec in frames:
            key = (spec, None, None) if isinstance(spec, str) else spec
            if key not in ids:
                ids[key] = len(ids) + 1
                info = FrameInfo(key[0], key[1], key[2], "/bin/app")
                locations[ids[key]] = Location(ids[key], 0x1000 + ids[key], 0x1000 + ids[key],
                                               "/bin/app", "", (info,))
            loc_ids.append(ids[key])
        out.append(WeightedStack(tuple(reversed(loc_ids)), list(vals), thread))
    totals = [sum(ws.values[i] for ws in out) for i in range(len(values))]
    return StackSet(kind, values, out, locations, _summary(), Selection(), 10_000_000, totals)


def cpu(stacks: list[tuple[list[Spec], int]], thread: str = "main") -> StackSet:
    return make_set(CPU, [(f, [n, n * 10_000_000], thread) for f, n in stacks])


def svg(sset: StackSet, value_index: int = 0, title: str = "test") -> tuple[str, ET.Element]:
    buf = io.StringIO()
    write_flamegraph(sset, buf, value_index, title)
    text = buf.getvalue()
    return text, ET.fromstring(text)


def frames(root: ET.Element) -> dict[tuple[str, int], dict[str, Any]]:
    """(function, depth) -> the frame's layout and hover fields."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") != "f":
            continue
        title = g.find(f"{SVG}title")
        box = g.find(f"{SVG}svg")
        assert title is not None and title.text is not None and box is not None
        label = box.find(f"{SVG}text")
        rect = box.find(f"{SVG}rect")
        assert label is not None and rect is not None
        match = HOVER.match(title.text)
        assert match, title.text
        key = (match["name"], int(g.get("data-d", "")))
        assert key not in out
        out[key] = {"start": int(g.get("data-s", "")), "value": int(g.get("data-v", "")),
                    "x": float(box.get("x", "")), "width": float(box.get("width", "")),
                    "y": float(box.get("y", "")), "label": label.text or "",
                    "fill": rect.get("fill"), "hover": match["value"],
                    "percent": match["percent"]}
    return out


def speedscope(sset: StackSet, value_index: int = 0, name: str = "test") -> dict[str, Any]:
    buf = io.StringIO()
    write_speedscope(sset, buf, value_index, name)
    doc: dict[str, Any] = json.loads(buf.getvalue())
    return doc


LAYOUT = [
    (["main", "a"], 60_000),
    (["main", "b"], 21_000),
    (["main", "b", "c"], 9_000),
    (["main", "edge"], 100),      # 0.1 % of the total: drawn
    (["main", "tiny"], 50),       # 0.05 %: left out
    (["main"], 9_850),
]


# --- SVG flame graph ------------------------------------------------------------------


def test_names_are_escaped_for_xml() -> None:
    names = ["<alloc::vec::Vec<T> as core::ops::Drop>::drop", "R&D \"quoted\" 'single'",
             "]]> not cdata <!-- -->", "naïve::λ", "bad\x01control", "&amp;"]
    sset = cpu([(["main", n], 10) for n in names])
    text, root = svg(sset, 0, "title <&> \"x\"")
    assert text.isascii()
    drawn = frames(root)
    for n in names:
        expected = n.replace("\x01", "\ufffd")
        assert (expected, 2) in drawn, expected
        assert expected.startswith(drawn[expected, 2]["label"].rstrip("."))
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == "title <&> \"x\""
    assert "<alloc" not in text and "R&D" not in text  # only as &lt; / &amp;


def test_layout_widths_and_starts() -> None:
    sset = cpu(LAYOUT)
    _, root = svg(sset)
    drawn = frames(root)
    total = 100_000
    assert drawn["all", 0]["value"] == total and drawn["all", 0]["percent"] == "100.00"
    assert drawn["all", 0]["x"] == 10 and drawn["all", 0]["width"] == SPAN
    assert drawn["main", 1]["value"] == total
    # Siblings by name, each at the end of the one before it.
    assert [(drawn[n, 2]["start"], drawn[n, 2]["value"]) for n in ("a", "b", "edge")] == [
        (0, 60_000), (60_000, 30_000), (90_000, 100)]
    assert drawn["c", 3]["start"] == 60_000 and drawn["c", 3]["value"] == 9_000
    assert ("tiny", 2) not in drawn
    assert drawn["a", 2]["width"] == pytest.approx(SPAN * 0.6, abs=0.01)
    assert drawn["b", 2]["x"] == pytest.approx(10 + SPAN * 0.6, abs=0.01)
    assert drawn["b", 2]["percent"] == "30.00" and drawn["b", 2]["hover"] == "30,000 samples"
    assert drawn["edge", 2]["percent"] == "0.10"
    # Root at the bottom, callees above their callers.
    assert drawn["all", 0]["y"] > drawn["main", 1]["y"] > drawn["b", 2]["y"] > drawn["c", 3]["y"]


def test_long_names_are_cut_to_their_box() -> None:
    long = "very::long::module::path::" * 10 + "function"
    sset = cpu([(["main", long], 100), (["main", "big"], 900)])
    _, root = svg(sset)
    box = frames(root)[long, 2]
    assert box["label"].endswith("..") and long.startswith(box["label"][:-2])
    assert len(box["label"]) * 6.7 <= box["width"]
    assert frames(root)["big", 2]["label"] == "big"


def test_units_in_the_hover_text() -> None:
    heap = make_set(HEAP, [(["main", "leak"], [3, 3 * 4096, 2, 8192], ""),
                           (["main", "small"], [1, 100, 1, 100], "")])
    _, root = svg(heap, heap.value_index("inuse_space"))
    drawn = frames(root)
    assert drawn["all", 0]["hover"] == "8,292 bytes, 8.1 KiB"
    assert drawn["small", 2]["hover"] == "100 bytes"
    _, root = svg(heap, heap.value_index("inuse_objects"))
    assert frames(root)["all", 0]["hover"] == "3 live objects"
    _, root = svg(heap, heap.value_index("alloc_objects"))
    assert frames(root)["small", 2]["hover"] == "1 allocation"
    sset = cpu(LAYOUT)
    _, root = svg(sset, sset.value_index("cpu"))
    assert frames(root)["all", 0]["hover"] == "1,000,000,000,000 ns, 1000.000 s"


def test_colours_hash_the_function_name() -> None:
    sset = cpu([(["main", "x"], 5), (["other", "main", "x"], 5)])
    _, root = svg(sset)
    drawn = frames(root)
    assert drawn["x", 2]["fill"] == drawn["x", 3]["fill"]
    assert drawn["main", 1]["fill"] == drawn["main", 2]["fill"]
    assert drawn["main", 1]["fill"] != drawn["x", 2]["fill"]
    heap = make_set(HEAP, [(["main", "x"], [1, 1, 1, 1], "")])
    _, hroot = svg(heap, 1)
    assert frames(hroot)["x", 2]["fill"] != drawn["x", 2]["fill"]


def test_zero_values_and_missing_stacks() -> None:
    sset = cpu([(["main", "a"], 0), ([], 4), (["main"], 4)])
    _, root = svg(sset)
    drawn = frames(root)
    assert ("a", 2) not in drawn
    assert drawn["[no stack]", 1]["value"] == 4 and drawn["all", 0]["value"] == 8


@pytest.mark.parametrize("stacks", [[], [(["main"], 0)]])
def test_empty_profile_says_no_samples(stacks: list[tuple[list[Spec], int]]) -> None:
    _, root = svg(cpu(stacks))
    assert root.tag == f"{SVG}svg"
    assert "no samples" in "".join(root.itertext())
    assert not frames(root)


def test_flamegraph_is_deterministic() -> None:
    assert svg(cpu(LAYOUT))[0] == svg(cpu(list(reversed(LAYOUT))))[0]


# The script driven in node against a minimal DOM built from the SVG: enough of
# Element, classList, events and window.prompt for what the script uses.
DOM_HARNESS = r"""
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
class ClassList {
  constructor(el) { this.el = el; }
  get names() { return (this.el.attrs["class"] || "").split(/\s+/).filter(Boolean); }
  add(...ns) { const s = new Set(this.names); ns.forEach(n => s.add(n));
               this.el.attrs["class"] = [...s].join(" "); }
  remove(...ns) { this.el.attrs["class"] = this.names.filter(n => !ns.includes(n)).join(" "); }
  contains(n) { return this.names.includes(n); }
}
const byId = {};
class El {
  constructor(node, parent) {
    this.tag = node.tag; this.attrs = node.attrs; this.text = node.text;
    this.parentNode = parent; this.listeners = {}; this.classList = new ClassList(this);
    this.children = node.children.map(c => new El(c, this));
    if (this.attrs.id) { byId[this.attrs.id] = this; }
  }
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getElementsByTagName(tag) {
    const out = [];
    const walk = e => e.children.forEach(c => { if (c.tag === tag) out.push(c); walk(c); });
    walk(this); return out;
  }
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
  fire(type, event) {
    for (let e = this; e; e = e.parentNode) {
      (e.listeners[type] || []).forEach(fn => fn(Object.assign({ target: this,
        preventDefault() {} }, event)));
    }
    (docListeners[type] || []).forEach(fn => fn(Object.assign({ target: this,
      preventDefault() {} }, event)));
  }
  get textContent() { return this.text + this.children.map(c => c.textContent).join(""); }
  set textContent(v) { this.text = v; this.children = []; }
}
const docListeners = {};
const root = new El(input.svg, null);
let answer = "";
const document = {
  documentElement: root, getElementById: id => byId[id] || null,
  addEventListener: (type, fn) => (docListeners[type] = docListeners[type] || []).push(fn),
};
const window = { prompt: () => answer };
new Function("document", "window", input.script)(document, window);

const frameGroups = byId.frames.getElementsByTagName("g");
function find(name, depth) {
  return frameGroups.find(g => g.attrs["data-d"] === String(depth) &&
    g.getElementsByTagName("title")[0].textContent.startsWith(name + " ("));
}
function snapshot() {
  const out = { frames: {}, status: byId.status.textContent, matched: byId.matched.textContent,
                reset: !byId["reset-zoom"].classList.contains("hidden"),
                search: byId.search.textContent };
  frameGroups.forEach(g => {
    const t = g.getElementsByTagName("title")[0].textContent;
    const box = g.getElementsByTagName("svg")[0];
    out.frames[t.slice(0, t.lastIndexOf(" (")) + "@" + g.attrs["data-d"]] = {
      x: Number(box.attrs.x), width: Number(box.attrs.width),
      label: g.getElementsByTagName("text")[0].textContent,
      classes: g.classList.names.filter(n => n !== "f").sort() };
  });
  return out;
}
const results = [];
for (const [action, ...args] of input.actions) {
  const rect = args.length === 2 ? find(args[0], args[1]).getElementsByTagName("rect")[0] : null;
  if (action === "hover") { rect.fire("mouseover", {}); }
  if (action === "click") { rect.fire("click", {}); }
  if (action === "reset") { byId["reset-zoom"].fire("click", {}); }
  if (action === "search") { answer = args[0]; byId.search.fire("click", {}); }
  if (action === "ctrl-f") { answer = args[0]; root.fire("keydown", { key: "f", ctrlKey: true }); }
  if (action === "escape") { root.fire("keydown", { key: "Escape" }); }
  results.push(snapshot());
}
process.stdout.write(JSON.stringify(results));
"""


def _as_json(el: ET.Element) -> dict[str, Any]:
    return {"tag": el.tag.removeprefix(SVG), "attrs": dict(el.attrib), "text": el.text or "",
            "children": [_as_json(c) for c in el]}


def run_script(sset: StackSet, actions: list[list[Any]]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (drives the flame graph's script)")
    _, root = svg(sset)
    script = root.find(f"{SVG}script")
    assert script is not None and script.text
    result = subprocess.run([node, "-e", DOM_HARNESS], input=json.dumps(
        {"svg": _as_json(root), "script": script.text, "actions": actions}),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out: list[dict[str, Any]] = json.loads(result.stdout)
    return out


def test_script_hover_zoom_and_reset() -> None:
    hover, zoomed, deeper, reset = run_script(cpu(LAYOUT), [
        ["hover", "b", 2], ["click", "b", 2], ["click", "c", 3], ["reset"]])
    assert hover["status"] == "b (30,000 samples, 30.00%)"
    f = zoomed["frames"]
    assert zoomed["reset"]
    assert f["b@2"]["x"] == 10 and f["b@2"]["width"] == SPAN and f["b@2"]["classes"] == []
    assert f["c@3"]["x"] == 10 and f["c@3"]["width"] == pytest.approx(SPAN * 0.3, abs=0.01)
    assert f["c@3"]["label"] == "c"
    for caller in ("all@0", "main@1"):  # callers span the width, faded
        assert f[caller]["width"] == SPAN and f[caller]["classes"] == ["anc"]
    for other in ("a@2", "edge@2"):
        assert f[other]["classes"] == ["hidden"]
    assert deeper["frames"]["c@3"]["width"] == SPAN
    assert deeper["frames"]["b@2"]["classes"] == ["anc"]
    assert not reset["reset"]
    assert reset["frames"]["a@2"] == {"x": 10, "width": pytest.approx(SPAN * 0.6, abs=0.01),
                                      "label": "a", "classes": []}
    assert all(v["classes"] == [] for v in reset["frames"].values())


def test_script_search_highlights_and_counts_each_sample_once() -> None:
    found, cleared, escaped, typed = run_script(cpu(LAYOUT), [
        ["search", "^(a|c)$"], ["search", "b|c"], ["escape"], ["ctrl-f", "edge"]])
    assert found["matched"] == 'Matched "^(a|c)$": 69.00% (2 frames)'
    assert found["search"] == "Reset search"
    hits = {k for k, v in found["frames"].items() if "hit" in v["classes"]}
    assert hits == {"a@2", "c@3"}
    # Clicking "Reset search" clears; the second search then runs from ctrl-F below.
    assert cleared["matched"] == "" and cleared["search"] == "Search"
    assert escaped["matched"] == ""
    assert typed["matched"] == 'Matched "edge": 0.10% (1 frame)'
    (b_and_c,) = run_script(cpu(LAYOUT), [["ctrl-f", "b|c"]])
    assert b_and_c["matched"] == 'Matched "b|c": 30.00% (2 frames)'  # c lies within b
    (bad_regex,) = run_script(cpu([(["main", "f(x"], 1), (["main"], 3)]), [["ctrl-f", "f(x"]])
    assert bad_regex["matched"] == 'Matched "f(x": 25.00% (1 frame)'


# --- speedscope -----------------------------------------------------------------------


def test_speedscope_frames_are_deduplicated_by_function_file_line() -> None:
    main = ("main", "src/main.rs", 3)
    sset = make_set(CPU, [
        ([main, ("work", "src/lib.rs", 10)], [5, 50], "t1"),
        ([main, ("work", "src/lib.rs", 11)], [2, 20], "t1"),
        ([main, ("work", "src/lib.rs", 10)], [1, 10], "t2"),
        ([main, ("work", None, None)], [1, 10], "t2"),
    ])
    doc = speedscope(sset)
    names = [(f["name"], f.get("file"), f.get("line")) for f in doc["shared"]["frames"]]
    assert sorted(names, key=str) == sorted([
        ("main", "src/main.rs", 3), ("work", "src/lib.rs", 10), ("work", "src/lib.rs", 11),
        ("work", None, None)], key=str)
    assert {"name": "work"} in doc["shared"]["frames"]  # no file or line: left out


def test_speedscope_cpu_profiles_per_thread() -> None:
    sset = make_set(CPU, [
        (["main", "a"], [5, 50], "worker"),
        (["main", "a"], [3, 30], "worker"),   # the same stack again (another recording)
        (["main", "b"], [1, 10], "worker"),
        (["main"], [2, 20], "1234"),
        (["main", "z"], [0, 0], "idle"),      # nothing: no profile
    ])
    doc = speedscope(sset, 0, "name <&>")
    assert doc["name"] == "name <&>"
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert [p["name"] for p in doc["profiles"]] == ["1234", "worker"]
    assert doc["activeProfileIndex"] == 1
    frames = [f["name"] for f in doc["shared"]["frames"]]
    worker = doc["profiles"][1]
    assert worker["unit"] == "none" and worker["type"] == "sampled"
    stacks = {tuple(frames[i] for i in s): w
              for s, w in zip(worker["samples"], worker["weights"], strict=True)}
    assert stacks == {("main", "a"): 8, ("main", "b"): 1}
    assert worker["startValue"] == 0 and worker["endValue"] == 9
    ns = speedscope(sset, sset.value_index("cpu"))
    assert {p["unit"] for p in ns["profiles"]} == {"nanoseconds"}
    assert sum(sum(p["weights"]) for p in ns["profiles"]) == 110


def test_speedscope_heap_units_and_missing_stacks() -> None:
    heap = make_set(HEAP, [(["main", "leak"], [3, 300, 2, 200], ""), ([], [1, 8, 1, 8], "")])
    live = speedscope(heap, heap.value_index("inuse_space"))
    assert len(live["profiles"]) == 1 and live["profiles"][0]["unit"] == "bytes"
    assert live["profiles"][0]["name"] == "inuse_space"
    frames = [f["name"] for f in live["shared"]["frames"]]
    got = {tuple(frames[i] for i in s): w for s, w in zip(
        live["profiles"][0]["samples"], live["profiles"][0]["weights"], strict=True)}
    assert got == {("main", "leak"): 200, ("[no stack]",): 8}
    objects = speedscope(heap, heap.value_index("alloc_objects"))
    assert objects["profiles"][0]["unit"] == "none"
    assert sum(objects["profiles"][0]["weights"]) == 4


def test_speedscope_empty_and_special_names() -> None:
    empty = speedscope(cpu([]))
    assert empty["shared"]["frames"] == []
    assert len(empty["profiles"]) == 1 and empty["profiles"][0]["samples"] == []
    assert empty["activeProfileIndex"] == 0
    odd = "<Vec<T> as Drop>::drop \"q\" \\ naïve\n"
    doc = speedscope(cpu([(["main", odd], 1)]))
    assert odd in [f["name"] for f in doc["shared"]["frames"]]
