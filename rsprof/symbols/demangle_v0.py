"""Demangler for the Rust v0 symbol mangling scheme (RFC 2603).

The output follows the "alternate" form of `rustc-demangle`: crate disambiguator
hashes are omitted (`std::rt::lang_start`), integer constants carry no type suffix.
"""

from __future__ import annotations

import re

_BASIC_TYPES: dict[str, str] = {
    "a": "i8",
    "b": "bool",
    "c": "char",
    "d": "f64",
    "e": "str",
    "f": "f32",
    "h": "u8",
    "i": "isize",
    "j": "usize",
    "l": "i32",
    "m": "u32",
    "n": "i128",
    "o": "u128",
    "s": "i16",
    "t": "u16",
    "u": "()",
    "v": "...",
    "x": "i64",
    "y": "u64",
    "z": "!",
    "p": "_",
}

_SIGNED_INT_CONSTS = frozenset("aslxni")
_UNSIGNED_INT_CONSTS = frozenset("htmyoj")

_B62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B62_VALUE = {c: i for i, c in enumerate(_B62)}

_MAX_DEPTH = 200
_MAX_BACKREFS = 4096  # bounds the work (and output) of backref-heavy symbols

_B62_RE = re.compile(r"([0-9a-zA-Z]*)_")
_BODY_RE = re.compile(r"[0-9A-Za-z_]*")
_IDENT_RE = re.compile(r"(u?)(0|[1-9][0-9]*)_?")


class V0Error(Exception):
    """The symbol is not valid (or not supported) v0."""


class _Ident:
    __slots__ = ("ascii", "punycode")

    def __init__(self, ascii_part: str, punycode: str) -> None:
        self.ascii = ascii_part
        self.punycode = punycode

    def render(self) -> str:
        if not self.punycode:
            return self.ascii
        return _decode_punycode(self.ascii, self.punycode)


def _decode_punycode(basic: str, encoded: str) -> str:
    """RFC 3492 decoding; v0 uses `_` instead of `-` as the basic/encoded delimiter."""
    base, tmin, tmax, skew, damp = 36, 1, 26, 38, 700
    out = list(basic)
    n, bias, i = 128, 72, 0
    pos = 0

    def digit(ch: str) -> int:
        if "a" <= ch <= "z":
            return ord(ch) - ord("a")
        if "0" <= ch <= "9":
            return ord(ch) - ord("0") + 26
        raise V0Error("bad punycode digit")

    while pos < len(encoded):
        old_i, w, k = i, 1, base
        while True:
            if pos >= len(encoded):
                raise V0Error("truncated punycode")
            d = digit(encoded[pos])
            pos += 1
            i += d * w
            t = tmin if k <= bias else tmax if k >= bias + tmax else k - bias
            if d < t:
                break
            w *= base - t
            k += base
        length = len(out) + 1
        delta = (i - old_i) // (damp if old_i == 0 else 2)
        delta += delta // length
        k = 0
        while delta > ((base - tmin) * tmax) // 2:
            delta //= base - tmin
            k += base
        bias = k + ((base - tmin + 1) * delta) // (delta + skew)
        n += i // length
        i %= length
        if n > 0x10FFFF:
            raise V0Error("bad punycode code point")
        out.insert(i, chr(n))
        i += 1
    return "".join(out)


class _Printer:
    """Recursive-descent parser that prints while it parses."""

    def __init__(self, sym: str) -> None:
        self.sym = sym
        self.pos = 0
        self.out: list[str] = []
        self.depth = 0
        self.bound_lifetime_depth = 0
        self.backrefs_followed = 0

    # -- low level -------------------------------------------------------

    def emit(self, s: str) -> None:
        self.out.append(s)

    def peek(self) -> str:
        return self.sym[self.pos] if self.pos < len(self.sym) else ""

    def next(self) -> str:
        if self.pos >= len(self.sym):
            raise V0Error("unexpected end")
        c = self.sym[self.pos]
        self.pos += 1
        return c

    def eat(self, c: str) -> bool:
        if self.pos < len(self.sym) and self.sym[self.pos] == c:
            self.pos += 1
            return True
        return False

    def enter(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise V0Error("recursion too deep")

    def leave(self) -> None:
        self.depth -= 1

    def base62(self) -> int:
        """`{<0-9a-zA-Z>} "_"`: `_` is 0, otherwise the number plus one."""
        m = _B62_RE.match(self.sym, self.pos)
        if m is None:
            raise V0Error("bad base-62 number")
        self.pos = m.end()
        digits = m.group(1)
        if not digits:
            return 0
        x = 0
        for c in digits:
            x = x * 62 + _B62_VALUE[c]
        return x + 1

    def opt_base62(self, tag: str) -> int:
        """`[tag <base-62-number>]`: 0 when absent, value + 1 when present."""
        if not self.eat(tag):
            return 0
        return self.base62() + 1

    def disambiguator(self) -> int:
        if self.pos < len(self.sym) and self.sym[self.pos] == "s":
            self.pos += 1
            return self.base62() + 1
        return 0

    def ident(self) -> _Ident:
        m = _IDENT_RE.match(self.sym, self.pos)
        if m is None:
            raise V0Error("bad identifier")
        start = m.end()
        end = start + int(m.group(2))
        if end > len(self.sym):
            raise V0Error("identifier past the end")
        raw = self.sym[start:end]
        self.pos = end
        if not m.group(1):
            return _Ident(raw, "")
        sep = raw.rfind("_")
        if sep < 0:
            return _Ident("", raw)
        return _Ident(raw[:sep], raw[sep + 1 :])

    def backref_target(self) -> int:
        start = self.pos - 1  # position of the "B"
        target = self.base62()
        if target >= start:
            raise V0Error("backref does not point backwards")
        self.backrefs_followed += 1
        if self.backrefs_followed > _MAX_BACKREFS:
            raise V0Error("too many backreferences (exponential output)")
        return target

    def sep_list(self, item: str, sep: str) -> int:
        count = 0
        while not self.eat("E"):
            if count:
                self.emit(sep)
            if item == "type":
                self.print_type()
            elif item == "generic_arg":
                self.print_generic_arg()
            elif item == "const":
                self.print_const(True)
            elif item == "dyn_trait":
                self.print_dyn_trait()
            else:  # pragma: no cover - programming error
                raise V0Error(item)
            count += 1
        return count

    def print_lifetime(self, lt: int) -> None:
        self.emit("'")
        if lt == 0:
            self.emit("_")
            return
        depth = self.bound_lifetime_depth - lt
        if depth < 0:
            raise V0Error("lifetime index out of range")
        if depth < 26:
            self.emit(chr(ord("a") + depth))
        else:
            self.emit(f"_{depth}")

    def in_binder_begin(self) -> int:
        bound = self.opt_base62("G")
        if bound:
            self.emit("for<")
            for i in range(bound):
                if i:
                    self.emit(", ")
                self.bound_lifetime_depth += 1
                self.print_lifetime(1)
            self.emit("> ")
        return bound

    # -- grammar ---------------------------------------------------------

    def print_path(self, in_value: bool) -> None:
        self.enter()
        tag = self.next()
        if tag == "C":
            self.disambiguator()
            self.emit(self.ident().render())
        elif tag == "N":
            ns = self.next()
            if not ns.isalpha() or not ns.isascii():
                raise V0Error("bad namespace")
            self.print_path(in_value)
            dis = self.disambiguator()
            name = self.ident().render()
            if ns.isupper():
                kind = {"C": "closure", "S": "shim"}.get(ns, ns)
                self.emit("::{" + kind)
                if name:
                    self.emit(":" + name)
                self.emit(f"#{dis}}}")
            elif name:
                self.emit("::" + name)
        elif tag in "MXY":
            if tag != "Y":
                self.disambiguator()
                mark = len(self.out)
                self.print_path(False)  # the impl path is parsed, not printed
                del self.out[mark:]
            self.emit("<")
            self.print_type()
            if tag != "M":
                self.emit(" as ")
                self.print_path(False)
            self.emit(">")
        elif tag == "I":
            self.print_path(in_value)
            if in_value:
                self.emit("::")
            self.emit("<")
            self.sep_list("generic_arg", ", ")
            self.emit(">")
        elif tag == "B":
            target = self.backref_target()
            saved = self.pos
            self.pos = target
            self.print_path(in_value)
            self.pos = saved
        else:
            raise V0Error(f"bad path tag {tag!r}")
        self.leave()

    def print_generic_arg(self) -> None:
        if self.eat("L"):
            self.print_lifetime(self.base62())
        elif self.eat("K"):
            self.print_const(False)
        else:
            self.print_type()

    def print_type(self) -> None:
        self.enter()
        tag = self.next()
        basic = _BASIC_TYPES.get(tag)
        if basic is not None:
            self.emit(basic)
        elif tag in "RQ":
            self.emit("&")
            if self.eat("L"):
                lt = self.base62()
                if lt:
                    self.print_lifetime(lt)
                    self.emit(" ")
            if tag == "Q":
                self.emit("mut ")
            self.print_type()
        elif tag in "PO":
            self.emit("*const " if tag == "P" else "*mut ")
            self.print_type()
        elif tag in "AS":
            self.emit("[")
            self.print_type()
            if tag == "A":
                self.emit("; ")
                self.print_const(True)
            self.emit("]")
        elif tag == "T":
            self.emit("(")
            if self.sep_list("type", ", ") == 1:
                self.emit(",")
            self.emit(")")
        elif tag == "F":
            self.print_fn_sig()
        elif tag == "D":
            self.emit("dyn ")
            bound = self.in_binder_begin()
            self.sep_list("dyn_trait", " + ")
            self.bound_lifetime_depth -= bound
            if not self.eat("L"):
                raise V0Error("dyn without lifetime")
            lt = self.base62()
            if lt:
                self.emit(" + ")
                self.print_lifetime(lt)
        elif tag == "B":
            target = self.backref_target()
            saved = self.pos
            self.pos = target
            self.print_type()
            self.pos = saved
        else:
            self.pos -= 1
            self.print_path(False)
        self.leave()

    def print_fn_sig(self) -> None:
        bound = self.in_binder_begin()
        is_unsafe = self.eat("U")
        abi: str | None = None
        if self.eat("K"):
            if self.eat("C"):
                abi = "C"
            else:
                ident = self.ident()
                if ident.punycode:
                    raise V0Error("punycode ABI")
                abi = ident.ascii.replace("_", "-")
        if is_unsafe:
            self.emit("unsafe ")
        if abi is not None:
            self.emit(f'extern "{abi}" ')
        self.emit("fn(")
        self.sep_list("type", ", ")
        self.emit(")")
        if not self.eat("u"):
            self.emit(" -> ")
            self.print_type()
        self.bound_lifetime_depth -= bound

    def print_path_maybe_open_generics(self) -> bool:
        if self.eat("B"):
            target = self.backref_target()
            saved = self.pos
            self.pos = target
            opened = self.print_path_maybe_open_generics()
            self.pos = saved
            return opened
        if self.eat("I"):
            self.print_path(False)
            self.emit("<")
            self.sep_list("generic_arg", ", ")
            return True
        self.print_path(False)
        return False

    def print_dyn_trait(self) -> None:
        opened = self.print_path_maybe_open_generics()
        while self.eat("p"):
            self.emit(", " if opened else "<")
            opened = True
            self.emit(self.ident().render())
            self.emit(" = ")
            self.print_type()
        if opened:
            self.emit(">")

    def hex_nibbles(self) -> str:
        start = self.pos
        while True:
            c = self.next()
            if c == "_":
                return self.sym[start : self.pos - 1]
            if c not in "0123456789abcdef":
                raise V0Error("bad hex digit")

    def print_const(self, in_value: bool) -> None:
        self.enter()
        tag = self.next()
        if tag == "B":
            target = self.backref_target()
            saved = self.pos
            self.pos = target
            self.print_const(in_value)
            self.pos = saved
            self.leave()
            return
        if tag == "p":
            self.emit("_")
        elif tag in _UNSIGNED_INT_CONSTS or tag in _SIGNED_INT_CONSTS:
            negative = tag in _SIGNED_INT_CONSTS and self.eat("n")
            self.emit(("-" if negative else "") + self.int_text(self.hex_nibbles()))
        elif tag == "b":
            h = self.hex_nibbles()
            if h not in ("0", "1"):
                raise V0Error("bad bool const")
            self.emit("true" if h == "1" else "false")
        elif tag == "c":
            self.emit(_char_literal(self.hex_to_int(self.hex_nibbles())))
        elif tag == "e":
            text = "*" + _str_literal(self.hex_nibbles())
            self.emit(text if in_value else "{" + text + "}")
        elif tag in "RQATV":
            is_str_ref = tag == "R" and self.peek() == "e"
            opened = not in_value and not is_str_ref
            if opened:
                self.emit("{")
            if tag == "R" and self.eat("e"):
                self.emit(_str_literal(self.hex_nibbles()))
            elif tag in "RQ":
                self.emit("&" if tag == "R" else "&mut ")
                self.print_const(True)
            elif tag == "A":
                self.emit("[")
                self.sep_list("const", ", ")
                self.emit("]")
            elif tag == "T":
                self.emit("(")
                if self.sep_list("const", ", ") == 1:
                    self.emit(",")
                self.emit(")")
            else:
                self.print_path(True)
                kind = self.next()
                if kind == "T":
                    self.emit("(")
                    self.sep_list("const", ", ")
                    self.emit(")")
                elif kind == "S":
                    self.emit(" { ")
                    count = 0
                    while not self.eat("E"):
                        if count:
                            self.emit(", ")
                        self.disambiguator()
                        self.emit(self.ident().render() + ": ")
                        self.print_const(True)
                        count += 1
                    self.emit(" }")
                elif kind != "U":
                    raise V0Error("bad const variant")
            if opened:
                self.emit("}")
        else:
            raise V0Error(f"bad const tag {tag!r}")
        self.leave()

    @staticmethod
    def hex_to_int(h: str) -> int:
        return int(h, 16) if h else 0

    def int_text(self, h: str) -> str:
        h = h.lstrip("0")
        if len(h) > 16:
            return "0x" + h
        return str(int(h, 16)) if h else "0"


def _char_literal(cp: int) -> str:
    if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        raise V0Error("bad char const")
    ch = chr(cp)
    escapes = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", "'": "\\'", "\0": "\\0"}
    if ch in escapes:
        return f"'{escapes[ch]}'"
    if not ch.isprintable():
        return f"'\\u{{{cp:x}}}'"
    return f"'{ch}'"


def _str_literal(h: str) -> str:
    if len(h) % 2:
        raise V0Error("odd hex string")
    try:
        s = bytes.fromhex(h).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as e:
        raise V0Error("bad str const") from e
    parts = []
    for ch in s:
        if ch == '"':
            parts.append('\\"')
        elif ch == "\\":
            parts.append("\\\\")
        elif ch == "\n":
            parts.append("\\n")
        elif ch == "\t":
            parts.append("\\t")
        elif ch == "\r":
            parts.append("\\r")
        elif not ch.isprintable():
            parts.append(f"\\u{{{ord(ch):x}}}")
        else:
            parts.append(ch)
    return '"' + "".join(parts) + '"'


def demangle_v0(symbol: str) -> str:
    """Demangle a v0 symbol (`_R...`, also `R...` and `__R...`).

    Raises `V0Error` when the symbol is not valid v0.
    """
    if symbol.startswith("_R"):
        inner = symbol[2:]
    elif symbol.startswith("__R"):
        inner = symbol[3:]
    elif symbol.startswith("R"):
        inner = symbol[1:]
    else:
        raise V0Error("not a v0 symbol")
    if not inner or not inner[0].isupper():
        # An encoding version number (digits) is not supported; anything else is invalid.
        raise V0Error("unsupported v0 encoding")

    # Split off a vendor-specific suffix (".llvm.1234", ".cold", "$...").
    body_end = _BODY_RE.match(inner).end()  # type: ignore[union-attr]  # always matches
    suffix = inner[body_end:]
    inner = inner[:body_end]
    if suffix and suffix[0] not in ".$":
        raise V0Error("invalid character")
    if suffix.startswith(".llvm."):
        rest = suffix[6:]
        if rest and all(ch in "0123456789ABCDEFabcdef@" for ch in rest):
            suffix = ""

    p = _Printer(inner)
    p.print_path(True)
    if p.pos < len(inner):
        # The optional instantiating crate is parsed but not printed.
        mark = len(p.out)
        p.print_path(False)
        del p.out[mark:]
    if p.pos != len(inner):
        raise V0Error("trailing data")
    return "".join(p.out) + suffix
