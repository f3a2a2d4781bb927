#!/usr/bin/env python3
"""Writes qwen2.json: texts with the pre-tokens and ids that transformers'
Qwen2Tokenizer (the slow one, which ZImagePipeline's references used) gives,
and id lists with the text its decode gives, so that the Go port is checked
against Python's own machinery: unicodedata NFC, the `regex` module running
PRETOKENIZE_REGEX itself, and bytes.decode("utf-8", "replace").

transformers is not installed here; what Qwen2Tokenizer and its base class
do is restated below from transformers 4.52 (tokenization_qwen2.py,
tokenization_utils.py), and checked first against the ids of the tiny
Z-Image-Turbo model's refs.safetensors. Needs python3-regex and the
reference models. Run from this folder: python3 gen_qwen2.py [tokenizer dir]"""

import json
import os
import random
import struct
import sys
import unicodedata

import regex

PAT = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "..", "..", "..", "shared", "testmodels", "tiny-z-image-turbo")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Qwen2:
    def __init__(self, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.vocab_size = len(self.encoder)
        merges = []
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            for i, line in enumerate(f):
                line = line.strip()
                if (i == 0 and line.startswith("#version:")) or not line:
                    continue
                merges.append(tuple(line.split()))
        self.ranks = dict(zip(merges, range(len(merges))))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        self.added = {v["content"]: int(k) for k, v in cfg["added_tokens_decoder"].items()}
        special = {cfg["eos_token"], cfg["pad_token"]} | set(cfg["additional_special_tokens"])
        # _decode: these are written as they are; the rest go through the bytes.
        self.legacy = {t for t in self.added if t not in special} | {
            t for t in cfg["additional_special_tokens"] if self.added[t] >= self.vocab_size}
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.decoder.update({v: k for k, v in self.added.items()})
        # The trie finds, at the first position where a token starts, the
        # longest one; an alternation sorted longest first does the same.
        alts = sorted(self.added, key=lambda t: (-len(t), t))
        self.split_re = regex.compile("|".join(regex.escape(t) for t in alts))

    def bpe(self, token):
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            out, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    out.extend(word[i:])
                    break
                out.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        return word

    def pieces(self, text):
        """Added tokens and the text between them, after NFC."""
        text = unicodedata.normalize("NFC", text)
        out, pos = [], 0
        for m in self.split_re.finditer(text):
            if m.start() > pos:
                out.append((False, text[pos:m.start()]))
            out.append((True, m.group()))
            pos = m.end()
        if pos < len(text):
            out.append((False, text[pos:]))
        return out

    def pretokens(self, text):
        return [p for added, piece in self.pieces(text) for p in ([piece] if added else PAT.findall(piece))]

    def encode(self, text):
        ids = []
        for added, piece in self.pieces(text):
            if added:
                ids.append(self.added[piece])
                continue
            for tok in PAT.findall(piece):
                mapped = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
                ids.extend(self.encoder[s] for s in self.bpe(mapped))
        return ids

    def decode(self, ids):
        subs, cur = [], []
        for i in ids:
            tok = self.decoder[i]
            if tok in self.legacy:
                if cur:
                    subs.append(self.to_string(cur))
                    cur = []
                subs.append(tok)
            else:
                cur.append(tok)
        if cur:
            subs.append(self.to_string(cur))
        return "".join(subs)

    def to_string(self, toks):
        return bytearray(self.byte_decoder[c] for c in "".join(toks)).decode("utf-8", errors="replace")


def chat(prompt):
    return "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n"


def check_refs(tok):
    """The restatement must give the pipeline's ids for every refs prompt."""
    with open(os.path.join(MODEL, "refs.json"), encoding="utf-8") as f:
        refs = json.load(f)
    with open(os.path.join(MODEL, "refs.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    for p in refs["tokenizer"]["prompts"]:
        e = header[p["name"] + ".input_ids"]
        a, b = e["data_offsets"]
        want = struct.unpack("<%dq" % ((b - a) // 8), data[a:b])
        got = tok.encode(chat(p["prompt"]))
        assert len(got) == p["n_tokens_untruncated"], (p["name"], len(got))
        got = got[:512] + [tok.added["<|endoftext|>"]] * (512 - len(got))
        assert tuple(got) == want, p["name"]
    print("refs:", len(refs["tokenizer"]["prompts"]), "prompts match")


FIXED = [
    "", " ", "   ", "a", "a photo of an astronaut", "Hello world", " Hello world",
    # contractions, any case; "ſ" folds to s; near misses
    "I'M HERE, YOU'RE, WE'VE, THEY'LL, HE'D, IT'S, DON'T", "'Re 'rE 'LL 'lL 'VE 'vE 'D 'M 'T 'S",
    "'ſ 'ſt x'ſ", "''s '' ' x' 'x 'sa 'lx 'rx 'v", "rock'n'roll o'clock", "'\u017f\u0301",
    # digits one by one
    "12345", "3.14", "1,000,000", "\u0663\u0664\u0665 \u00bd \u216b x\u00b2", "4K 8k 2024\u5e74", "v1.2.3-rc4",
    # runs of spaces, tabs, odd whitespace
    "a  b", "a   b", "a    b", "   leading", "trailing   ", "trailing ", "\t\tx", "x \t y", "x\t\ty",
    "a\u3000b", "\u00a0x", "\u2003\u2003x", "x\u00a0\u00a0", "\x0b\x0cx", "a \x1c b", "\x1c\x1dx",
    # line breaks
    "a\nb", "a\r\nb", "a\n\nb", "a \n b", "a\n \nb", "a \n\n  b", "x!!\n\ny", "x!!\r\n", "\n", "\r\n\r\n",
    "  \n  ", "end\n", "end \n", "end\n ", "\r", "a\rb", "a\u2028b", "a\u0085b", " \n", "\n\nx", "!\n", " !\n\n",
    # combining marks and NFC
    "e\u0301", "cafe\u0301", "a\u0308\u0301", "x\u0301y", "\u0301", "\u0301\u0301x", "\u212b \u2126 \u0958",
    "\u1100\u1161\u11a8 \u1100\u1161", "s\u0323\u0307 q\u0307\u0323", "\u0f73 \u0344 \uf900", "A\u030a\u0301",
    "n\u0303o", "\u00e9 vs e\u0301",
    # emoji
    "\U0001f431", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1fa\U0001f1f8",
    "a\U0001f680b", " \U0001f680 ", "\u2764\ufe0f love", "\U0001f431\U0001f431\U0001f431",
    # CJK and its punctuation
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01", "\u300c\u5f15\u7528\u300d", "\u300a\u4e66\u540d\u300b", "\u3002\u3002\u3002",
    "\u4e2d\u6587English\u6df7\u5408", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\uff21\uff22\uff23\uff11\uff12\uff13", "\u4e00\u53ea\u6a58\u8272\u7684\u732b" * 12,
    # added tokens inside the text
    "<|im_end|>", "x<|im_start|>y", "<think>reasoning</think>", "<|endoftext|><|endoftext|>", "<|im_end|",
    "<|IM_END|>", "<|im_end|>\u0338", "<\u0338|im_start|>", "<tool_call>{}</tool_call>", "a <|im_end|> b",
    "<|im_start|>user\n<|im_end|>", "<<|im_end|>>", "<think><think>", "<|fim_prefix|><|fim_middle|>",
    # symbols
    "!!!", "?!", "...", "--", "\u2014", "a\u2014b", "\"quoted\"", "(parens)", "#hashtag", "##", "# include", "@user",
    "$100", "a/b\\c", "<b>html</b>", "x = y + 1;", "~!@#$%^&*()_+", "!abc", "!!abc", " !abc", "  !", "\t!",
    # control and format characters
    "\x00", "a\x00b", "\x7f", "\u200b", "zero\u200bwidth", "\ufeffbom", "\u2060", "\x1b[31mred",
    # mixed scripts
    "\u0391\u0392\u0393 \u03b1\u03b2\u03b3 \u03a9\u03bc\u03ad\u03b3\u03b1", "\u0645\u0631\u062d\u0628\u0627 world",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!", "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "Poster with the text \"Z-IMAGE TURBO\" \u2014 caf\u00e9, na\u00efve fa\u00e7ade, 4K!!  tabs\tand\nnew line",
    # long words: the heap path
    "supercalifragilisticexpialidocious" * 4, "a" * 300, " " * 100 + "x", "!" * 80, "\U0001f431" * 40,
]

POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r  ",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "\u00e0\u00e1\u00e2\u00e3\u00e4\u00e5\u00e6\u00e7\u00e8\u00e9\u00f1\u00f6\u00f8\u00fc\u00df\u0133\u0149\u01c5\ufb01",
    "\u0300\u0301\u0302\u0303\u0308\u0327\u0328\u0345\u0323\u031b\u05b0\u0591\u0338",
    "\u0391\u0392\u0393\u03a3\u03a9\u03b1\u03b2\u03b3\u03c3\u03c2\u03c9\u03ac\u03ad",
    "\u0130\u0131\u015e\u015f\u011e\u011f\u017f\u212a\u212b\u2126",
    "\u4e00\u53ea\u6a58\u8272\u7684\u732b\u5750\u5728\u7a97\u53f0\u4e0a\u5348\u540e\u9633\u5149",
    "\uff0c\u3002\uff01\uff1f\uff1a\uff1b\uff08\uff09\uff21\uff22\uff43\uff10\uff11\u3000\uff76\uff9e\u300c\u300d",
    "\uac00\uac01\ud7a3\u1100\u1161\u11a8",
    "\U0001f431\U0001f680\U0001f3a8\u2728\U0001f44d\U0001f3fd\u200d\ufe0f",
    "\u201c\u201d\u2018\u2019\u02bc\u2014\u2013\u2026",
    "\x00\x07\x0b\x0c\x1b\x1c\x1f\x7f\x80\x85\x9f\u00a0\u200b\ufeff\u2028\u2029\u2003",
    "\u00bd\u00b2\u216b\u2166\u0663\u0669",
]
WORDS = ["'s", "'S", "'ll", "'RE", "'ve", "'d", "'M", "'t", "'\u017f", "<|im_end|>", "<|im_start|>", "<think>",
         "</think>", "<|endoftext|>", "\r\n", " \n", "!!", "##"]


def random_texts(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pools = rng.sample(POOLS, rng.randint(1, 4))
        parts = []
        for _ in range(rng.randint(1, 24)):
            if rng.random() < 0.1:
                parts.append(rng.choice(WORDS))
            else:
                parts.append(rng.choice(rng.choice(pools)))
        out.append("".join(parts))
    return out


def random_ids(tok, n, seed):
    """Id lists that cut UTF-8 sequences apart, mixed with whole tokens."""
    rng = random.Random(seed)
    total = tok.vocab_size + len(tok.added)
    byte_ids = [tok.encoder[tok.byte_encoder[b]] for b in range(256)]
    out = []
    for _ in range(n):
        ids = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.5:
                ids.append(rng.choice(byte_ids[0x80:]))
            elif r < 0.6:
                ids.append(rng.randrange(tok.vocab_size, total))
            else:
                ids.append(rng.randrange(total))
        out.append(ids)
    return out


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(MODEL, "tokenizer")
    tok = Qwen2(folder)
    check_refs(tok)
    texts = FIXED + random_texts(300, seed=11)
    cases = []
    for t in texts:
        ids = tok.encode(t)
        assert tok.decode(ids) == unicodedata.normalize("NFC", t), t
        cases.append({"text": t, "pretokens": tok.pretokens(t), "ids": ids})
    decodes = [{"ids": ids, "text": tok.decode(ids)} for ids in random_ids(tok, 200, seed=12)]
    with open(os.path.join(HERE, "qwen2.json"), "w", encoding="utf-8") as f:
        json.dump({"generated_by": "gen_qwen2.py", "unicodedata": unicodedata.unidata_version,
                   "regex": regex.__version__, "added": sorted(tok.added), "cases": cases, "decode": decodes}, f, ensure_ascii=True, indent=0)
    print(len(cases), "texts,", len(decodes), "decodes")


if __name__ == "__main__":
    main()
