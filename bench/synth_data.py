#!/usr/bin/env python3
"""Deterministic synthetic NLU data with a large feature vocabulary.

Reads JSONL training examples (`bench_train jsonl` writes them from financial-demo) and writes
`--copies` copies of every example, each with `--insert` made-up words inserted at word
boundaries outside the entity mentions (entity offsets are shifted to match). The made-up words
come from a fixed pool of `--pool` random lowercase letter strings (length 5-10), so they add one
word feature plus several new character 3- and 4-grams each: a pool of 1,600 words grows
financial-demo's ~3.2k features to about 6x. Labels (intent, entity types) are unchanged, so the
model keeps the same heads and only the embedding grows.

Standard library only; the same arguments always give the same file.

  python3 bench/synth_data.py --in fd.jsonl --out synth.jsonl [--seed 7 --copies 3 --insert 2 --pool 1600]
"""
import argparse
import json
import random
import string


def made_up_words(rng, n):
    words, seen = [], set()
    while len(words) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 10)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def boundaries(text, entities):
    """Character positions where a word may be inserted: the start, the end, and every space,
    none inside an entity mention."""
    cand = [0, len(text)] + [i for i, c in enumerate(text) if c == " "]
    ok = [p for p in cand if not any(e["start"] < p < e["end"] for e in entities)]
    return sorted(set(ok))


def insert_word(example, pos, word):
    text = example["text"]
    if pos == 0:
        piece, new_text = word + " ", word + " " + text
    else:
        piece = " " + word
        new_text = text[:pos] + piece + text[pos:]
    ents = []
    for e in example.get("entities") or []:
        e = dict(e)
        if e["start"] >= pos:  # pos is never strictly inside a mention
            e["start"] += len(piece)
            e["end"] += len(piece)
        ents.append(e)
    return {**example, "text": new_text, "entities": ents}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--insert", type=int, default=2)
    ap.add_argument("--pool", type=int, default=1600)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    pool = made_up_words(rng, args.pool)
    with open(args.inp, encoding="utf-8") as f:
        base = [json.loads(line) for line in f if line.strip()]
    out = []
    for copy in range(args.copies):
        for ex in base:
            ex = {"text": ex["text"], "intent": ex["intent"], "entities": ex.get("entities") or []}
            for _ in range(args.insert):
                ex = insert_word(ex, rng.choice(boundaries(ex["text"], ex["entities"])), rng.choice(pool))
            out.append(ex)
    with open(args.out, "w", encoding="utf-8") as f:
        for ex in out:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
