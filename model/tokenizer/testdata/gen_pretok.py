#!/usr/bin/env python3
"""Writes pretok.json: texts and the pre-tokens that transformers'
CLIPTokenizer (with ftfy) hands to BPE, computed with Python's own Unicode
machinery (unicodedata NFC, str.lower, re's \\s, the `regex` module's \\p{L},
\\p{N} and IGNORECASE) so that the Go port is checked against them.

ftfy itself is not installed here; fix_text's deterministic fixers are
restated below from ftfy 6 (chardata.py / fixes.py), mojibake repair
(fix_encoding) excluded, as in the Go code. Needs python3-regex.
Run from this folder: python3 gen_pretok.py"""

import html
import html.entities
import json
import random
import re
import unicodedata

import regex

CLIP_PAT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)

# --- ftfy 6 deterministic fixers -------------------------------------------
HTML_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")


def _entities():
    ents = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            ents["&" + name] = char
            if name == name.lower():
                up = "&" + name.upper()
                if html.unescape(up) == up:
                    ents[up] = char.upper()
    return ents


ENTITIES = _entities()


def unescape_html(text):
    def fix(m):
        e = m.group(0)
        if e in ENTITIES:
            return ENTITIES[e]
        if e.startswith("&#"):
            d = html.unescape(e)
            return e if ";" in d else d
        return e
    return HTML_ENTITY_RE.sub(fix, text)


def fix_c1(text):
    def fix(m):
        b = m.group(0).encode("latin-1")
        try:
            return b.decode("windows-1252")
        except UnicodeDecodeError:
            return m.group(0)  # sloppy codec: undefined bytes map to themselves
    return re.sub(r"[\x80-\x9f]", fix, text)


LIGATURES = {ord(k): v for k, v in {
    "Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž", "ǆ": "dž",
    "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl",
    "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"}.items()}
WIDTH = {0x3000: " "}
for _i in range(0xFF01, 0xFFF0):
    _a = unicodedata.normalize("NFKC", chr(_i))
    if _a != chr(_i):
        WIDTH[_i] = _a
CONTROL = {i: None for i in list(range(0x00, 0x09)) + [0x0B] + list(range(0x0E, 0x20)) + [0x7F]
           + list(range(0x206A, 0x2070)) + [0xFEFF] + list(range(0xFFF9, 0xFFFD))}
ANSI_RE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")


def fix_and_explain(text, unescape):
    while True:
        orig = text
        if unescape:
            text = unescape_html(text)
        text = fix_c1(text)
        text = text.translate(LIGATURES)
        text = text.translate(WIDTH)
        text = re.sub("[\u02bc\u2018-\u201b]", "'", re.sub("[\u201c-\u201f]", '"', text))
        text = (text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
                .replace("\u2029", "\n").replace("\u0085", "\n"))
        text = ANSI_RE.sub("", text)
        text = text.translate(CONTROL)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def fix_text(text):
    out, pos, unescape = [], 0, True
    while pos < len(text):
        brk = text.find("\n", pos) + 1 or len(text)
        seg = text[pos:brk]
        if "<" in seg:
            unescape = False
        out.append(fix_and_explain(seg, unescape))
        pos = brk
    return "".join(out)


def pretokens(text):
    text = re.sub(r"\s+", " ", fix_text(text)).strip().lower()
    return CLIP_PAT.findall(text)


# --- cases -----------------------------------------------------------------
FIXED = [
    "", "   ", "a photo of an astronaut", "A RED Fox, Jumping!? Over",
    "don't it's we're I've I'm we'll he'd", "''s 'S 'ſ x'ſt", "ΟΔΟΣ Σ ΣΑΣ. ΌΣΟΣ' ΑΣ'Α",
    "İSTANBUL İi", "cafe\u0301 e\u0301\u0327 a\u0328\u0301 \u1100\u1161\u11a8 \u1100\u1161",
    "ｶﾞ ｶﾟ Ｕﾀｰﾝ ＬＯＵＤ　ＮＯＩＳＥＳ ￣ ￠", "ﬁne ﬂuﬃeﬆ Ĳssel ǅemal",
    "“curly” ‘quotes’ ʼn", "a&amp;b &lt;x&gt; &amp;amp; &EACUTE; &ampx; &#65;&#x42; &#x80; &#0; &semi; &SZLIG;",
    "<b>&amp;</b>\n&amp;", "line1\r\nline2\rline3\u2028x\u2029y\x85z",
    "\x1b[31mred\x1b[0m plain \x1b[x", "tab\tvt\x0bff\x0cfs\x1c\x1dnul\x00bell\x07",
    "\u200b zero\u200bwidth \ufeffbom \u2060joiner \u206a", "\x80\x81\x8d\x9f price",
    "一只橘色的猫坐在窗台上，午后阳光", "🐱 a cat 🚀 🎨✨ 👍🏽 👨‍👩‍👧",
    "x<|startoftext|>y<|ENDOFTEXT|>..<|endoftext|>", "3.14 12345 ½ Ⅻ ٣ x²",
    "naïve façade Ångström São", "ΑΒΓ αβγ Ωμέγα", "Ǆ ǅ ǆ ẞ ß", "\u0345\u03a3", "A\u0301\u0301",
    "\u0f73 \u0344 \u0958 \u2126 \u212b \uf900", "\u00a0nbsp\u2003em\u3000ideo\u1680og",
]

POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r  ",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿÀÉÎÕÜßĳŉǅﬁ",
    "\u0300\u0301\u0302\u0303\u0308\u0327\u0328\u0345\u0323\u031b\u05b0\u0591",
    "ΑΒΓΣΩαβγσςωάέ",
    "İıŞşĞğ",
    "一只橘色的猫坐在窗台上午后阳光",
    "，。！？：；（）ＡＢＣａｂｃ０１２　ｶﾞﾟﾀｰﾝ￣￠",
    "가각힣\u1100\u1161\u11a8",
    "🐱🚀🎨✨👍🏽\u200d",
    "“”‘’ʼ",
    "\x00\x07\x0b\x0c\x1b\x1c\x7f\x80\x85\x9f\u200b\ufeff\u2028\u2029",
    "&amp;&lt;&#65;&EACUTE;&#x1F600;",
    "'s'ſ'll're",
    "<|endoftext|><|startoftext|>",
    "½²ⅫⅦ٣",
]


def random_cases(n, seed=7):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pools = rng.sample(POOLS, rng.randint(1, 4))
        parts = []
        for _ in range(rng.randint(1, 20)):
            pool = rng.choice(pools)
            if pool.startswith("&") or pool.startswith("<|") or pool.startswith("'s"):
                parts.append(rng.choice(re.findall(r"&[^;]*;|<\|[a-z]+\|>|'[a-zſ]+", pool)))
            else:
                parts.append(rng.choice(pool))
        out.append("".join(parts))
    return out


def main():
    cases = [{"text": t, "pretokens": pretokens(t)} for t in FIXED + random_cases(400)]
    with open("pretok.json", "w", encoding="utf-8") as f:
        json.dump({"generated_by": "gen_pretok.py", "unicodedata": unicodedata.unidata_version,
                   "cases": cases}, f, ensure_ascii=True, indent=0)
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
